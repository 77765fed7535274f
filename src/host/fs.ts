import { constants, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.ts';
import { randomHex } from './random-hex.ts';

/** True when `file` exists (any type, following symlinks). */
export async function pathExists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/** True when `file` is a regular file this process may execute. */
export async function isExecutableFile(file: string): Promise<boolean> {
  try {
    const stat = await fs.stat(file);
    if (!stat.isFile()) return false;
    await fs.access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Replaces `file` atomically (temporary sibling, then rename) with `data`, mode `mode`; its directory is created 0700. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${randomHex(4)}`;
  try {
    await fs.writeFile(tmp, data, { mode });
    await fs.rename(tmp, file);
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** True when `file` exists as anything, a dangling symlink included (lstat, not stat). */
export async function lexists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * Puts the complete directory `next` in the place of `live`: the old `live` is renamed to
 * `aside` first and removed only once `next` is in place (and put back if that rename fails),
 * so at every moment one complete tree can be found at `live` or at `aside`.
 */
export async function replaceDirectory(next: string, live: string, aside: string): Promise<void> {
  const hadLive = await lexists(live);
  if (hadLive) await fs.rename(live, aside);
  try {
    await fs.rename(next, live);
  } catch (err) {
    if (hadLive) await fs.rename(aside, live);
    throw err;
  }
  if (hadLive) await fs.rm(aside, { recursive: true, force: true });
}

/** lstat, or undefined when nothing is there (ENOENT, or ENOTDIR: a file where a directory was). */
export async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return undefined;
    throw err;
  }
}

/** Unlinks `file` (a link itself, never its target); nothing there is fine. */
export async function unlinkIfThere(file: string): Promise<void> {
  try {
    await fs.unlink(file);
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
}
