import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import { requireTrustedEntry, untrustedEntryIn, untrustedError } from '../host/dir-trust.ts';
import { requireTrustedKernelPath } from './cache.ts';

/**
 * Where `kernel build --target libkrunfw` keeps its builds (see src/kernel/libkrunfw-build.ts):
 * <cache>/kernels/<arch>-libkrunfw/<key>/ (a libkrunfw runtime directory) and `current`, the key
 * of the last build.
 */
export const LIBKRUNFW_FILES = {
  config: 'kernel.config',
  fragment: 'fragments.kconfig',
  provenance: 'provenance.json',
  manifest: 'manifest.json',
  current: 'current',
  failureLog: 'last-failure.log',
} as const;

export function libkrunfwTargetDir(env: HostEnvironment, arch: GuestArch): string {
  return path.join(env.cacheDir, 'kernels', `${arch}-libkrunfw`);
}

/**
 * The directory of the build `current` names, or undefined when there is none (or it is gone).
 * Its library is loaded into this process: every directory from <cache>/kernels down, `current`
 * and everything in the build must be this user's and not writable by others (else a HostError
 * naming the entry and the fix), so no other local user can plant a library there.
 */
export async function currentLibkrunfwDir(
  env: HostEnvironment,
  arch: GuestArch,
): Promise<string | undefined> {
  const parent = libkrunfwTargetDir(env, arch);
  if ((await requireTrustedKernelPath(env, parent)) === 'missing') return undefined;
  if ((await requireTrustedEntry(path.join(parent, LIBKRUNFW_FILES.current), 'file')) === 'missing')
    return undefined;
  let key: string;
  try {
    key = (await fs.readFile(path.join(parent, LIBKRUNFW_FILES.current), 'utf8')).trim();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  if (!/^[0-9a-f]{24}$/.test(key)) return undefined;
  const dir = path.join(parent, key);
  if ((await requireTrustedKernelPath(env, dir)) === 'missing') return undefined;
  const planted = await untrustedEntryIn(dir);
  if (planted) throw untrustedError(planted.path, planted.st, planted.reason);
  return dir;
}
