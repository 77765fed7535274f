import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';

/** Symlinks followed while resolving one path, as Linux's MAXSYMLINKS. */
const MAX_LINKS = 40;

/**
 * An archive member name as path components: `./`, leading `/` and empty parts dropped. A `..`
 * component is refused: archives that climb out of their root are not extracted at all.
 */
export function splitArchivePath(name: string, label: string): string[] {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) {
    throw new HostError(`${label}: refusing the member '${name}': it climbs out of the root with '..'`, {
      hint: 'the archive is malicious or damaged; do not use it',
    });
  }
  return parts;
}

/** What resolving does with a directory that is missing (or is not a directory) on the way. */
type Absent = 'create' | 'throw' | 'undefined';

/**
 * The host path of the directory `parts` inside `root`, resolving symlinks met on the way as a
 * chroot would (absolute targets restart at `root`, `..` stops at `root`), so the result is always
 * inside `root`. With `create`, missing directories are made (mode 0755).
 */
export async function resolveInRoot(
  root: string,
  parts: readonly string[],
  options: { readonly create: boolean },
): Promise<string> {
  return (await walkInRoot(root, parts, options.create ? 'create' : 'throw')) as string;
}

/**
 * As resolveInRoot, without creating anything: undefined when a component is missing or is not a
 * directory (a whiteout or an opaque marker there has nothing to remove).
 */
export function findDirInRoot(root: string, parts: readonly string[]): Promise<string | undefined> {
  return walkInRoot(root, parts, 'undefined');
}

async function walkInRoot(
  root: string,
  parts: readonly string[],
  absent: Absent,
): Promise<string | undefined> {
  const pending = [...parts];
  const resolved: string[] = [];
  let links = 0;
  while (pending.length) {
    const part = pending.shift() as string;
    if (part === '.' || part === '') continue;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const here = path.join(root, ...resolved, part);
    let stat: Awaited<ReturnType<typeof fs.lstat>> | undefined;
    try {
      stat = await fs.lstat(here);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
    if (stat?.isSymbolicLink()) {
      if (++links > MAX_LINKS) {
        throw new HostError(`too many levels of symbolic links under ${root} at ${here}`, {
          hint: 'the archive contains a symlink loop',
        });
      }
      const target = await fs.readlink(here);
      if (target.startsWith('/')) resolved.length = 0;
      pending.unshift(...target.split('/'));
      continue;
    }
    if (!stat?.isDirectory()) {
      if (absent === 'undefined') return undefined;
      if (absent === 'throw') {
        throw new HostError(
          stat
            ? `${here} is not a directory`
            : `${path.join(...resolved, part)} does not exist under ${root}`,
        );
      }
      // A file where the archive needs a directory: the later entry wins, as in tar.
      if (stat) await fs.rm(here, { force: true });
      await fs.mkdir(here, { mode: 0o755 });
    }
    resolved.push(part);
  }
  return path.join(root, ...resolved);
}

/**
 * The host path for `rel` inside `root`, for writing: its directories resolved (and created) as
 * in a chroot, so a symlink in the root, absolute or not, cannot redirect a write outside it.
 * The last component is not followed.
 */
export async function inRoot(root: string, rel: string): Promise<string> {
  const parts = rel.split('/').filter((p) => p && p !== '.');
  const parent = await resolveInRoot(root, parts.slice(0, -1), { create: true });
  return path.join(parent, parts[parts.length - 1] ?? '');
}

/** The host path of directory `rel` inside `root`, created if missing (see inRoot). */
export function dirInRoot(root: string, rel: string): Promise<string> {
  return resolveInRoot(
    root,
    rel.split('/').filter((p) => p && p !== '.'),
    { create: true },
  );
}

/**
 * The host path for a new file `rel` inside `root` (see inRoot), with whatever an archive left at
 * that name removed first: a symlink is unlinked, never followed, so an exclusive create there
 * (`flag: 'wx'`, COPYFILE_EXCL) makes a new file inside the root. Sound for a tree nothing else
 * writes meanwhile (a rootfs being built from layers), not for one a running guest owns (GuestRoot).
 */
export async function freshPathInRoot(root: string, rel: string): Promise<string> {
  const dest = await inRoot(root, rel);
  await fs.rm(dest, { recursive: true, force: true });
  return dest;
}
