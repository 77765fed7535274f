import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';

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

/** The directory of the build `current` names, or undefined when there is none (or it is gone). */
export async function currentLibkrunfwDir(
  env: HostEnvironment,
  arch: GuestArch,
): Promise<string | undefined> {
  const parent = libkrunfwTargetDir(env, arch);
  let key: string;
  try {
    key = (await fs.readFile(path.join(parent, LIBKRUNFW_FILES.current), 'utf8')).trim();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  if (!/^[0-9a-f]{24}$/.test(key)) return undefined;
  const dir = path.join(parent, key);
  return (await fs.stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  ))
    ? dir
    : undefined;
}
