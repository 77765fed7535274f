import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno, UsageError } from '../errors.ts';
import { lstatOrUndefined } from '../host/fs.ts';
import type { BackendFeatures } from '../vmm/backend.ts';

/**
 * Where a root directory given with --rootfs may be. The guest's root owns what it sees of it
 * (in gateway mode read-write through virtiofsd, which runs as root): it can create setuid-root
 * files and device nodes there, and no capability stops a root-owned chmod 4755. That is harmless
 * only while no other local user can reach the directory, so it must sit below a chain of
 * directories that other users can neither change nor enter:
 *   - every ancestor belongs to us or root and is not writable by group or others; a sticky one
 *     (like /tmp) is accepted when the next directory down belongs to us or root, since others
 *     cannot rename or remove that entry;
 *   - at least one ancestor gives group and others no search permission (0700-style), as the
 *     instance directory does for the instance's own rootfs.
 */

/** The owner and mode of one directory on the way down to a root directory. */
export interface DirFacts {
  readonly path: string;
  readonly uid: number;
  /** st_mode's permission bits (with setuid/setgid/sticky). */
  readonly mode: number;
}

/** What is wrong with a chain: the directory, why, and the fix for the error's hint. */
export interface ChainProblem {
  readonly dir: DirFacts;
  readonly why: string;
  readonly fix: string;
}

const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;
const writers = (mode: number) =>
  (mode & 0o022) === 0o022 ? 'its group and others' : mode & 0o020 ? 'its group' : 'others';
const isTrustedOwner = (uid: number, me: number) => uid === me || uid === 0;

/**
 * Judges the ancestors of a root directory, from `/` down to its parent, each as lstat gives it
 * (`root`: the directory itself, when it exists). Undefined when no other local user can reach it.
 */
export function judgeRootChain(
  ancestors: readonly DirFacts[],
  root: DirFacts | undefined,
  me: number,
): ChainProblem | undefined {
  const parent = ancestors.at(-1);
  if (!parent) throw new Error('judgeRootChain: no ancestors');
  let closed = false;
  for (const [i, dir] of ancestors.entries()) {
    if (!isTrustedOwner(dir.uid, me)) {
      return {
        dir,
        why: `belongs to uid ${dir.uid} (neither us, uid ${me}, nor root), who can replace what is below it`,
        fix: "keep the rootfs below directories of yours: move it, or drop --rootfs to use the instance's own (openshell-vm prepare-rootfs --name NAME)",
      };
    }
    if (dir.mode & 0o022) {
      const next = ancestors[i + 1] ?? root;
      const sticky = (dir.mode & 0o1000) !== 0;
      if (!sticky || !next || !isTrustedOwner(next.uid, me)) {
        return {
          dir,
          why: `is writable by ${writers(dir.mode)}${sticky ? ' (sticky, but what is below it is not ours)' : ''}, who can replace what is below it`,
          fix: `chmod go-w ${dir.path}, or drop --rootfs to use the instance's own rootfs`,
        };
      }
    }
    if ((dir.mode & 0o011) === 0) closed = true;
  }
  if (closed) return undefined;
  return {
    dir: parent,
    why: 'and every directory above it can be entered by other users, who could then run what the guest leaves there (setuid-root files, device nodes)',
    fix: `chmod 700 ${parent.path} (or another directory above the rootfs), or drop --rootfs to use the instance's own rootfs`,
  };
}

const factsOf = (p: string, st: Stats): DirFacts => ({ path: p, uid: st.uid, mode: st.mode & 0o7777 });

function myUid(): number {
  return typeof process.getuid === 'function' ? process.getuid() : 0;
}

/** The real path of `dir` (its deepest existing ancestor resolved, the rest appended). */
async function realPathOf(dir: string): Promise<string> {
  try {
    return await fs.realpath(dir);
  } catch (err) {
    if (!isErrno(err, 'ENOENT') && !isErrno(err, 'ENOTDIR')) throw err;
    const up = path.dirname(dir);
    if (up === dir) throw err;
    return path.join(await realPathOf(up), path.basename(dir));
  }
}

/**
 * Checks that no other local user can reach `dir` (see the top of this file) and returns its real
 * path (symlinks resolved), which the caller boots from, so a link swapped later changes nothing.
 * A refusal is a HostError naming the offending directory, its owner and mode, and the fix.
 * A missing `dir` passes here (the rootfs checks that follow say how to build it).
 */
export async function ensureRootLocation(dir: string, option = '--rootfs'): Promise<string> {
  const real = await realPathOf(path.resolve(dir));
  const ancestors: DirFacts[] = [];
  for (let p = path.dirname(real); ; p = path.dirname(p)) {
    const st = await lstatOrUndefined(p);
    // Only the part of the path that exists is judged; a symlink here means it changed under us.
    if (st?.isSymbolicLink()) {
      throw new HostError(`refusing ${option} ${dir}: ${p} became a symlink while it was checked`, {
        hint: 'try again; if it persists, something is changing the path',
      });
    }
    if (st) ancestors.unshift(factsOf(p, st));
    if (path.dirname(p) === p) break;
  }
  const rootSt = await lstatOrUndefined(real);
  const problem = judgeRootChain(ancestors, rootSt && factsOf(real, rootSt), myUid());
  if (!problem) return real;
  const { dir: bad } = problem;
  throw new HostError(
    `refusing ${option} ${dir}: ${bad.path} (owner uid ${bad.uid}, mode ${octal(bad.mode)}) ${problem.why}; the guest's root creates files there as root`,
    { hint: problem.fix },
  );
}

/**
 * `run --rootfs DIR` on a backend whose overlay root is 'writable' (no read-only lower layer)
 * would let the command write into DIR itself, which a later gateway boot uses: refused, decided
 * from the backend's features.
 */
export function refuseWritableRunRoot(
  backend: { readonly name: string; readonly features: Pick<BackendFeatures, 'overlayRoot'> },
  rootfs: string | undefined,
): void {
  if (rootfs === undefined || backend.features.overlayRoot !== 'writable') return;
  throw new UsageError(
    `--rootfs ${rootfs}: the ${backend.name} backend has no read-only lower layer, so the command would write into the rootfs itself (and a later gateway boot would run what it left there)`,
    { hint: 'use --backend qemu (its overlay keeps the rootfs read-only), or drop --rootfs' },
  );
}
