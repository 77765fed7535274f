/**
 * Where the default rootfs's busybox comes from: the package's own copy (scripts/build.ts puts
 * Debian's static busybox of each guest architecture into dist/guest/busybox/ with busybox.json,
 * their sha256 recorded), else the one host provisioning fetched into the cache. So `run` on
 * libkrun (whose kernel is libkrunfw's) needs no Linux host package at all once installed from
 * npm: no kernel, no busybox download (macOS).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as v from 'valibot';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { DEB_ARCH, type GuestArch } from '../host/arch.ts';
import { provisionCommand } from '../host/provision.ts';

export interface BusyboxBinary {
  readonly arch: GuestArch;
  readonly path: string;
  readonly bytes: Buffer;
  readonly sha256: string;
  /** Where it came from, for progress output: the package's copy or the host cache's. */
  readonly origin: 'package' | 'host';
  /** Debian's package version it was taken from. */
  readonly version: string;
}

export const PACKAGED_BUSYBOX_DIR = fileURLToPath(new URL('./busybox/', import.meta.url));
export const PACKAGED_BUSYBOX_MANIFEST = 'busybox.json';
export const packagedBusyboxName = (arch: GuestArch) => `busybox-${arch}`;

const entry = (arch: GuestArch) =>
  v.strictObject({
    file: v.literal(packagedBusyboxName(arch)),
    sha256: v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/)),
    package: v.pipe(v.string(), v.maxLength(128)),
    version: v.pipe(v.string(), v.maxLength(128)),
  });
export const packagedBusyboxSchema = v.strictObject({
  format: v.literal(1),
  busybox: v.strictObject({ x86_64: entry('x86_64'), aarch64: entry('aarch64') }),
});
export type PackagedBusybox = v.InferOutput<typeof packagedBusyboxSchema>;

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/**
 * The busybox for `arch`: the package's (verified against its manifest: a damaged copy is an
 * error naming it, never a fallback), else the host cache's (provisioning's manifest), else a
 * HostError naming both places and the fix.
 */
export async function findBusybox(
  env: HostEnvironment,
  arch: GuestArch,
  options: { readonly packageDir?: string | undefined } = {},
): Promise<BusyboxBinary> {
  const dir = options.packageDir ?? PACKAGED_BUSYBOX_DIR;
  const manifestPath = path.join(dir, PACKAGED_BUSYBOX_MANIFEST);
  let manifestText: string | undefined;
  try {
    manifestText = await fs.readFile(manifestPath, 'utf8');
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  if (manifestText !== undefined) {
    let parsed: PackagedBusybox;
    try {
      parsed = v.parse(packagedBusyboxSchema, JSON.parse(manifestText));
    } catch (err) {
      throw new HostError(`${manifestPath} is not a valid busybox manifest`, {
        hint: 'the package is damaged: reinstall openshell-vm',
        cause: err,
      });
    }
    const e = parsed.busybox[arch];
    const file = path.join(dir, e.file);
    const bytes = await fs.readFile(file);
    const actual = sha256(bytes);
    if (actual !== e.sha256) {
      throw new HostError(
        `${file} has sha256 ${actual}, but ${PACKAGED_BUSYBOX_MANIFEST} records ${e.sha256}`,
        {
          hint: 'the package is damaged: reinstall openshell-vm',
        },
      );
    }
    return { arch, path: file, bytes, sha256: actual, origin: 'package', version: e.version };
  }
  return hostBusybox(env, arch);
}

/** The busybox host provisioning fetched (its manifest's busybox part only: no kernel needed). */
export async function hostBusybox(env: HostEnvironment, arch: GuestArch): Promise<BusyboxBinary> {
  const manifestPath = path.join(env.cacheDir, 'host', DEB_ARCH[arch], 'manifest.json');
  const hint = `install openshell-vm from its npm package (it carries busybox), or run ${provisionCommand(`--arch ${arch}`)}`;
  let record: { binary?: unknown; binarySha256?: unknown; version?: unknown } | undefined;
  try {
    record = (JSON.parse(await fs.readFile(manifestPath, 'utf8')) as { busybox?: typeof record }).busybox;
  } catch (err) {
    if (!isErrno(err, 'ENOENT') && !(err instanceof SyntaxError)) throw err;
  }
  if (!record || typeof record.binary !== 'string' || typeof record.binarySha256 !== 'string') {
    throw new HostError(`no busybox for ${arch} guests: not in this package and not in ${manifestPath}`, {
      hint,
    });
  }
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(record.binary);
  } catch (err) {
    throw new HostError(`the busybox ${record.binary} named by ${manifestPath} cannot be read`, {
      hint: `${hint} --refresh`,
      cause: err,
    });
  }
  const actual = sha256(bytes);
  if (actual !== record.binarySha256) {
    throw new HostError(
      `${record.binary} has sha256 ${actual}, but ${manifestPath} records ${record.binarySha256}`,
      {
        hint: `${hint} --refresh`,
      },
    );
  }
  return {
    arch,
    path: record.binary,
    bytes,
    sha256: actual,
    origin: 'host',
    version: typeof record.version === 'string' ? record.version : 'unknown',
  };
}
