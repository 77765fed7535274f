import { constants } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.ts';
import { lstatOrUndefined } from '../host/fs.ts';

/** Mode (setuid/setgid/sticky included), owner and mtime of one member, as its tar header says. */
export interface MemberMeta {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: Date | undefined;
}

/** Which inode a directory is: deferred metadata goes to this directory and nothing else. */
export interface DirIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
}

const { O_WRONLY, O_RDONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY } = constants;

/**
 * Creates `dest` as a new regular file with `data` and `meta`. The name must be free (the caller
 * removed what was there): O_EXCL|O_NOFOLLOW never opens an existing file or a symlink's target,
 * and owner, mode and times are set on the open descriptor, so no link is followed at any step.
 */
export async function writeNewFile(
  dest: string,
  data: AsyncIterable<Uint8Array>,
  meta: MemberMeta,
  options: { readonly owners: boolean; readonly signal?: AbortSignal | undefined },
): Promise<void> {
  const file = await fs.open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    await file.writeFile(data, options.signal ? { signal: options.signal } : {});
    await setMeta(file, meta, options.owners);
  } finally {
    await file.close();
  }
}

/** The identity of the real directory `dir` (lstat: a symlink is never taken for its target). */
export async function dirIdentity(dir: string): Promise<DirIdentity> {
  const st = await fs.lstat(dir, { bigint: true });
  return { dev: st.dev, ino: st.ino };
}

/**
 * Applies `meta` to the directory `dest` under `root` if it is still the directory `id` and is
 * reached from `root` through real directories only. A later member may have replaced it, or a
 * directory above it, with a symlink (to the host) or a file: then the metadata belongs to nothing
 * that still exists and is dropped (false). The change goes through a descriptor opened with
 * O_DIRECTORY|O_NOFOLLOW whose inode is checked against `id`.
 */
export async function applyDirMeta(
  root: string,
  dest: string,
  id: DirIdentity,
  meta: MemberMeta,
  owners: boolean,
): Promise<boolean> {
  const rel = path.relative(root, dest);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return false;
  let here = root;
  for (const part of rel.split(path.sep)) {
    here = path.join(here, part);
    const st = await lstatOrUndefined(here);
    if (!st?.isDirectory()) return false;
  }
  let dir: FileHandle;
  try {
    dir = await fs.open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR') || isErrno(err, 'ELOOP')) return false;
    throw err;
  }
  try {
    const st = await dir.stat({ bigint: true });
    if (st.dev !== id.dev || st.ino !== id.ino) return false;
    await setMeta(dir, meta, owners);
    return true;
  } finally {
    await dir.close();
  }
}

async function setMeta(handle: FileHandle, meta: MemberMeta, owners: boolean): Promise<void> {
  // chown before chmod: chown clears setuid/setgid bits.
  if (owners) await handle.chown(meta.uid, meta.gid);
  await handle.chmod(meta.mode);
  if (meta.mtime) await handle.utimes(meta.mtime, meta.mtime);
}
