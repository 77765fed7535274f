import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';

/**
 * Directories and files that only we may write. What openshell-vm runs or boots from a cache (a
 * kernel source tree whose Makefile it runs, a built kernel it boots, a libkrunfw it loads) and
 * what it acts on in an instance directory is trusted only when it and every directory above it
 * (up to a root: the cache, an instance directory) belong to this user and are not writable by
 * group or others: another local user who could plant or swap one could otherwise make us run
 * their code, signal their choice of process or delete what they choose.
 */

export function myUid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : 0;
}

/** `st`'s permission bits the way chmod takes them: 0755. */
export function modeText(st: Stats): string {
  return `0${(st.mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** Why `st` (a directory or file we are about to trust) is not ours alone, or undefined when it is. */
export function distrust(st: Stats, kind: 'directory' | 'file'): string | undefined {
  if (st.isSymbolicLink()) return 'is a symlink';
  if (kind === 'directory' && !st.isDirectory()) return 'is not a directory';
  if (kind === 'file' && !st.isFile()) return st.isDirectory() ? 'is a directory' : 'is not a regular file';
  if (st.uid !== myUid()) return `belongs to uid ${st.uid}, not to us (uid ${myUid()})`;
  return writableBy(st);
}

/** 'is writable by ...' when group or others can write `st`. */
function writableBy(st: Stats): string | undefined {
  const who = ['its group', 'others'].filter((_, i) => st.mode & (i === 0 ? 0o020 : 0o002));
  return who.length ? `is writable by ${who.join(' and ')} (mode ${modeText(st)})` : undefined;
}

/** A file or directory that failed a trust check: what, why, and how to fix it. */
export interface Untrusted {
  readonly path: string;
  readonly reason: string;
}

/**
 * Checks each directory (lstat, no symlink followed; with `followFirst`, the first may be a symlink
 * to a directory of ours: a data dir the user placed elsewhere); the first that is not ours alone
 * is returned.
 */
export async function untrustedDir(
  dirs: readonly string[],
  options: { readonly followFirst?: boolean } = {},
): Promise<Untrusted | undefined> {
  for (const [i, dir] of dirs.entries()) {
    const st = i === 0 && options.followFirst ? await fs.stat(dir) : await fs.lstat(dir);
    const reason = distrust(st, 'directory');
    if (reason) return { path: dir, reason };
  }
  return undefined;
}

/** `root`, then every directory below it down to `target` (inclusive). `target` must be inside `root`. */
export function pathChain(root: string, target: string): string[] {
  const from = path.resolve(root);
  const rel = path.relative(from, path.resolve(target));
  if (rel.startsWith('..') || path.isAbsolute(rel))
    throw new Error(`internal: ${target} is not inside ${root}`);
  const chain = [from];
  for (const part of rel.split(path.sep).filter(Boolean))
    chain.push(path.join(chain[chain.length - 1] as string, part));
  return chain;
}

/** The HostError for an entry that failed its check: the path, what was found, and the fix. */
export function untrustedError(entry: string, st: Stats, reason: string): HostError {
  const ours = st.uid === myUid() && !st.isSymbolicLink() && (st.isDirectory() || st.isFile());
  const why = reason.replace(/ \(mode [0-7]+\)$/, '');
  return new HostError(
    `refusing to use ${entry}: it ${why} (owner uid ${st.uid}, mode ${modeText(st)}): another user could have put there what openshell-vm would run`,
    {
      hint: ours
        ? `chmod go-w ${entry} (and check that nothing in it is someone else's), or remove it (rm -rf ${entry}): openshell-vm makes it again`
        : `remove it (rm -rf ${entry}) and check how it got there: openshell-vm makes it again`,
    },
  );
}

/**
 * Checks `root` (it may be a symlink to a directory of ours: a cache the user placed elsewhere),
 * every directory below it down to `target`, and `target` itself: each must exist as a directory
 * (`target` as `kind`) that belongs to this user and that group and others cannot write, and none
 * below `root` may be a symlink. The first that fails is a HostError naming it, its owner and
 * mode, and the fix. 'missing' when a component does not exist (there is nothing to trust below
 * it). With every directory checked, nobody else can swap what is in `target` between this check
 * and its use.
 */
export async function requireTrustedCachePath(
  root: string,
  target: string,
  kind: 'directory' | 'file' = 'directory',
): Promise<'trusted' | 'missing'> {
  const chain = pathChain(root, target);
  for (const [i, entry] of chain.entries()) {
    let st: Stats;
    try {
      st = i === 0 ? await fs.stat(entry) : await fs.lstat(entry);
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return 'missing';
      throw err;
    }
    const reason = distrust(st, i === chain.length - 1 ? kind : 'directory');
    if (reason) throw untrustedError(entry, st, reason);
  }
  return 'trusted';
}

/**
 * One entry in a directory already checked with requireTrustedCachePath: `kind`, ours, not
 * writable by group or others, not a symlink; 'missing' when it does not exist.
 */
export async function requireTrustedEntry(
  entry: string,
  kind: 'directory' | 'file',
): Promise<'trusted' | 'missing'> {
  let st: Stats;
  try {
    st = await fs.lstat(entry);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return 'missing';
    throw err;
  }
  const reason = distrust(st, kind);
  if (reason) throw untrustedError(entry, st, reason);
  return 'trusted';
}

/**
 * `dir` and every directory from `root` down to it, created where missing as 0700 (chmod-ed, so no
 * umask interferes), each checked as requireTrustedCachePath does before anything is made in it.
 */
export async function ensureTrustedCacheDir(root: string, dir: string): Promise<void> {
  const chain = pathChain(root, dir);
  for (const [i, entry] of chain.entries()) {
    if (await makeDir(entry, i === 0)) await fs.chmod(entry, 0o700);
    const st = i === 0 ? await fs.stat(entry) : await fs.lstat(entry);
    const reason = distrust(st, 'directory');
    if (reason) throw untrustedError(entry, st, reason);
  }
}

/** Creates `dir` 0700 (with its parents, when `withParents`); false when it was there. */
async function makeDir(dir: string, withParents: boolean): Promise<boolean> {
  if (withParents) return (await fs.mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined;
  try {
    await fs.mkdir(dir, { mode: 0o700 });
    return true;
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return false;
    throw err;
  }
}

/**
 * The first entry below `dir` (a tree we unpacked) that is not ours, or that group or others can
 * write (a symlink's own mode means nothing and is not counted), or undefined when there is none.
 * Symlinks are not followed.
 */
export async function untrustedEntryIn(
  dir: string,
): Promise<{ path: string; reason: string; st: Stats } | undefined> {
  let pending = [dir];
  while (pending.length > 0) {
    const next: string[] = [];
    for (const parent of pending) {
      const names = await fs.readdir(parent);
      const found = await Promise.all(
        names.map(async (name) => {
          const entry = path.join(parent, name);
          const st = await fs.lstat(entry);
          if (st.isDirectory()) next.push(entry);
          if (st.uid !== myUid())
            return { path: entry, st, reason: `belongs to uid ${st.uid}, not to us (uid ${myUid()})` };
          const writable = st.isSymbolicLink() ? undefined : writableBy(st);
          return writable ? { path: entry, st, reason: writable } : undefined;
        }),
      );
      const bad = found.find((f) => f !== undefined);
      if (bad) return bad;
    }
    pending = next;
  }
  return undefined;
}
