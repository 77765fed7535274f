import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * A directory tree described as data: what openshell-vm writes (the default rootfs) and, because
 * the description is computed from the build's inputs and not read back from disk, what the tree
 * on disk must still be before a VM boots it. Paths are relative, '/'-separated; '.' is the root.
 */
export type TreeEntry =
  | { readonly type: 'dir'; readonly path: string; readonly mode: number }
  | { readonly type: 'file'; readonly path: string; readonly mode: number; readonly data: Uint8Array }
  | { readonly type: 'symlink'; readonly path: string; readonly target: string };

/** Writes `entries` (parents before children, '.' first) into `dir`, which must not exist. */
export async function writeTree(dir: string, entries: readonly TreeEntry[]): Promise<void> {
  for (const entry of entries) {
    const full = path.join(dir, entry.path);
    if (entry.type === 'dir') {
      await fs.mkdir(full, { mode: entry.mode });
      await fs.chmod(full, entry.mode); // the umask does not decide the modes
    } else if (entry.type === 'file') {
      await fs.writeFile(full, entry.data, { mode: entry.mode, flag: 'wx' });
      await fs.chmod(full, entry.mode);
    } else {
      await fs.symlink(entry.target, full);
    }
  }
}

/** At most this many differences are listed (the count says how many there were). */
const MAX_LISTED = 5;

/**
 * How the tree at `dir` differs from `entries`: changed, missing and extra entries, other modes
 * (a setuid bit, a world-writable directory), another owner than `uid`, a file with a second hard
 * link. Nothing is followed: symlinks are compared as links. Empty when the tree is exactly as
 * built (only times may differ).
 */
export async function treeDifferences(
  dir: string,
  entries: readonly TreeEntry[],
  uid: number,
): Promise<string[]> {
  const expected = new Map(entries.map((e) => [e.path, e]));
  const problems: string[] = [];
  const seen = new Set<string>();

  const check = async (rel: string): Promise<void> => {
    const full = rel === '.' ? dir : path.join(dir, rel);
    const want = expected.get(rel);
    let st: Awaited<ReturnType<typeof fs.lstat>>;
    try {
      st = await fs.lstat(full);
    } catch {
      return; // reported as missing below
    }
    seen.add(rel);
    const mode = st.mode & 0o7777;
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    if (!want) {
      problems.push(`unexpected ${kind} ${rel} (mode ${octal(mode)})`);
      return;
    }
    if (kind !== want.type) {
      problems.push(`${rel} is a ${kind}, expected a ${want.type}`);
      return;
    }
    if (st.uid !== uid) problems.push(`${rel} is owned by uid ${st.uid}, not ${uid}`);
    if (want.type !== 'symlink' && mode !== want.mode) {
      problems.push(`${rel} has mode ${octal(mode)}, expected ${octal(want.mode)}`);
    }
    if (want.type === 'symlink') {
      const target = await fs.readlink(full);
      if (target !== want.target) problems.push(`${rel} points at ${target}, expected ${want.target}`);
    } else if (want.type === 'file') {
      if (st.nlink !== 1) problems.push(`${rel} has ${st.nlink} hard links`);
      if (st.size !== want.data.byteLength || !(await sameContent(full, want.data))) {
        problems.push(`${rel} has other content`);
      }
    } else {
      const names = await fs.readdir(full);
      for (const name of names.sort()) await check(rel === '.' ? name : `${rel}/${name}`);
    }
  };

  await check('.');
  for (const entry of entries) if (!seen.has(entry.path)) problems.push(`${entry.path} is missing`);
  if (problems.length <= MAX_LISTED) return problems;
  return [...problems.slice(0, MAX_LISTED), `and ${problems.length - MAX_LISTED} more`];
}

async function sameContent(file: string, data: Uint8Array): Promise<boolean> {
  const handle = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    const actual = createHash('sha256');
    for await (const chunk of handle.createReadStream({ autoClose: false })) actual.update(chunk as Buffer);
    return actual.digest('hex') === createHash('sha256').update(data).digest('hex');
  } finally {
    await handle.close();
  }
}

function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}
