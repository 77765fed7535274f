import type { Stats } from 'node:fs';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { distrust, modeText as mode, myUid } from '../host/dir-trust.ts';

/**
 * Directories and records that only we may write. Everything openshell-vm acts on (a run record
 * that names processes to stop and paths to remove, a state file, a lock) is trusted only when the
 * file and every directory of ours above it belong to this user and are not writable by group or
 * others: another local user who could plant or change one could otherwise make us signal or
 * delete what they choose. The checks themselves are src/host/dir-trust.ts's (the caches use them
 * too); they are re-exported here for the instance modules.
 */
export { distrust, type Untrusted, untrustedDir } from '../host/dir-trust.ts';

/** Largest record file (state.json, owner.json, a pid file, the lock) we read. */
export const RECORD_MAX_BYTES = 256 * 1024;

export type RecordRead =
  | { readonly kind: 'missing' }
  | { readonly kind: 'untrusted'; readonly path: string; readonly reason: string }
  | { readonly kind: 'ok'; readonly text: string };

/**
 * Reads a record file we wrote: never through a symlink (O_NOFOLLOW), only a regular file of ours
 * that others cannot write, at most RECORD_MAX_BYTES.
 */
export async function readRecordFile(file: string): Promise<RecordRead> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { kind: 'missing' };
    if (isErrno(err, 'ELOOP')) return { kind: 'untrusted', path: file, reason: 'is a symlink' };
    if (isErrno(err, 'ENXIO')) return { kind: 'untrusted', path: file, reason: 'is a socket' };
    throw err;
  }
  try {
    const st = await handle.stat();
    const reason = distrust(st, 'file');
    if (reason) return { kind: 'untrusted', path: file, reason };
    if (st.size > RECORD_MAX_BYTES) {
      return { kind: 'untrusted', path: file, reason: `is ${st.size} bytes (at most ${RECORD_MAX_BYTES})` };
    }
    const buf = Buffer.alloc(RECORD_MAX_BYTES + 1);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    if (bytesRead > RECORD_MAX_BYTES) {
      return { kind: 'untrusted', path: file, reason: `is over ${RECORD_MAX_BYTES} bytes` };
    }
    return { kind: 'ok', text: buf.subarray(0, bytesRead).toString('utf8') };
  } finally {
    await handle.close();
  }
}

export interface DirRules {
  /**
   * tighten: ours but too open, set to 0700 with a warning (instance state we made 0755 before);
   * refuse: ours but too open is refused like one that is not ours (a socket directory: someone
   * may already be inside).
   */
  readonly policy: 'tighten' | 'refuse';
  /** Mode bits that make it too open: 0o077 (private) or 0o022 (writable by others). */
  readonly openBits: 0o077 | 0o022;
  readonly warn: (message: string) => void;
  /** The fix, for the error's hint. */
  readonly fix: string;
  /** Accept a symlink to a directory that passes (a data dir the user placed elsewhere). */
  readonly followSymlink?: boolean;
  /**
   * Entries (by name) whose own entries are checked too when a directory open to others' writes is
   * tightened (the instance's rootfs: another user may have put it there whole).
   */
  readonly checkInside?: readonly string[];
  /** The fix, for the hint, when another user's entry is found in a directory that was open. */
  readonly foreignFix?: (entry: string) => string;
}

/** The first entry of `dir` (and, for `inside` names, of that entry) that is not ours. */
async function foreignEntry(
  dir: string,
  inside: readonly string[],
): Promise<{ readonly path: string; readonly uid: number } | undefined> {
  for (const name of await fs.readdir(dir)) {
    const entry = path.join(dir, name);
    let st: Stats;
    try {
      st = await fs.lstat(entry);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) continue;
      throw err;
    }
    if (st.uid !== myUid()) return { path: entry, uid: st.uid };
    if (inside.includes(name) && st.isDirectory()) {
      const deeper = await foreignEntry(entry, []);
      if (deeper) return deeper;
    }
  }
  return undefined;
}

/**
 * A directory that was open to others' writes may hold what another user planted (a rootfs, a
 * record, a FIFO): any entry not ours is refused, naming it and the fix. Checked before the chmod
 * (the directory stays as it was, so the next start refuses too) and after it (nothing can be
 * added any more; an entry that came in between puts the old mode back and is refused).
 */
async function refuseForeignEntries(
  dir: string,
  st: Stats,
  rules: DirRules,
  when: 'before-chmod' | 'after-chmod',
): Promise<void> {
  const found = await foreignEntry(dir, rules.checkInside ?? []);
  if (!found) return;
  if (when === 'after-chmod') await fs.chmod(dir, st.mode & 0o7777);
  throw new HostError(
    `refusing to use ${dir}: it was open to other users (mode ${mode(st)}), and ${found.path} in it belongs to uid ${found.uid}, not to us (uid ${myUid()}): another user may have planted it`,
    {
      hint:
        rules.foreignFix?.(found.path) ??
        `remove it (rm -rf ${found.path}) and check what else is in ${dir}, or remove ${dir}`,
    },
  );
}

/**
 * Makes sure `dir` exists as a directory of ours that nobody else can write: created 0700 (and
 * chmod-ed, so no umask interferes), or, when it exists, checked without following a symlink. A
 * symlink, another user's directory or (policy 'refuse') a too open one is a HostError naming it,
 * its owner and mode, and the fix.
 */
export async function ensurePrivateDir(dir: string, rules: DirRules): Promise<void> {
  const created = await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) await fs.chmod(dir, 0o700);
  const st = rules.followSymlink ? await fs.stat(dir) : await fs.lstat(dir);
  const reason = distrust(st, 'directory');
  const tooOpen = !reason && (st.mode & rules.openBits) !== 0;
  if (!reason && !tooOpen) return;
  if ((tooOpen || reason?.startsWith('is writable')) && rules.policy === 'tighten') {
    const wasWritable = (st.mode & 0o022) !== 0;
    if (wasWritable) await refuseForeignEntries(dir, st, rules, 'before-chmod');
    await fs.chmod(dir, 0o700);
    if (wasWritable) await refuseForeignEntries(dir, st, rules, 'after-chmod');
    rules.warn(`${dir} was mode ${mode(st)}, open to other users: set it to 0700`);
    return;
  }
  throw new HostError(
    `refusing to use ${dir}: it ${reason ?? `is open to other users (mode ${mode(st)})`} (owner uid ${st.uid}, mode ${mode(st)})`,
    { hint: rules.fix },
  );
}

/** The default for warnings about a directory we fixed: a process warning (printed on stderr). */
export function warnOnStderr(message: string): void {
  process.emitWarning(message, { code: 'OVM_DIR_MODE' });
}
