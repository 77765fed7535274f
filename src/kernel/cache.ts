import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import type { GuestArch } from '../host/arch.ts';
import { requireTrustedCachePath, requireTrustedEntry } from '../host/dir-trust.ts';
import { writeFileAtomic } from '../host/fs.ts';
import { type KernelProvenance, parseProvenance } from './provenance.ts';
import { sha256File } from './source.ts';

/** Bump when the build's recipe changes in a way its inputs do not show. */
export const BUILD_FORMAT = 1;

export type KernelTarget = 'qemu';

/**
 * Where built kernels live:
 *
 *   <cache>/kernels/<arch>-<target>/<key>/<image>        bzImage (x86_64) or Image (aarch64)
 *   <cache>/kernels/<arch>-<target>/<key>/kernel.config  the resolved .config
 *   <cache>/kernels/<arch>-<target>/<key>/provenance.json
 *   <cache>/kernels/<arch>-<target>/current              the key of the last build (what `auto` boots)
 *   <cache>/kernels/<arch>-<target>/last-failure.log     the log of the last failed build
 *   <cache>/kernels/source/<sha256>/                     the unpacked source, shared by builds
 *
 * A build runs in <key>.tmp-PID-RANDOM beside its final directory and is renamed into place
 * complete, so nothing ever boots a half-built kernel.
 */
export const KERNEL_FILES = {
  config: 'kernel.config',
  provenance: 'provenance.json',
  current: 'current',
  failureLog: 'last-failure.log',
} as const;

export function imageName(arch: GuestArch): string {
  return arch === 'x86_64' ? 'bzImage' : 'Image';
}

export function targetDir(env: HostEnvironment, arch: GuestArch, target: KernelTarget): string {
  return path.join(env.cacheDir, 'kernels', `${arch}-${target}`);
}

/** Every input that changes the built kernel's bytes. */
export interface KernelBuildInputs {
  readonly arch: GuestArch;
  readonly target: KernelTarget;
  readonly source: { readonly package: string; readonly version: string; readonly sha256: string };
  /** sha256 of the requested configuration (base recipe + fragments): requestSha256. */
  readonly configSha256: string;
  readonly toolchain: { readonly compiler: string; readonly make: string };
}

/** The cache key: (source version + config sha256 + toolchain version), arch, target, format. */
export function kernelBuildKey(inputs: KernelBuildInputs): string {
  const identity = {
    format: BUILD_FORMAT,
    arch: inputs.arch,
    target: inputs.target,
    source: [inputs.source.package, inputs.source.version, inputs.source.sha256],
    config: inputs.configSha256,
    toolchain: [inputs.toolchain.compiler, inputs.toolchain.make],
  };
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 24);
}

/** The base configuration and fragments as one hashable identity (what was asked, not what kconfig made of it). */
export function requestSha256(base: string, fragments: readonly { source: string; text: string }[]): string {
  return createHash('sha256')
    .update(JSON.stringify({ base, fragments: fragments.map((f) => [f.source, f.text]) }))
    .digest('hex');
}

export interface BuiltKernel {
  readonly dir: string;
  readonly key: string;
  readonly image: string;
  readonly config: string;
  readonly provenance: KernelProvenance;
}

/**
 * <cache>/kernels: everything below it is what `kernel build` runs (the unpacked source's
 * Makefile) and what `auto` boots, so each directory from here down, and each file used, must be
 * ours alone (src/host/dir-trust.ts); the libkrunfw builds below it are checked the same way.
 */
export function kernelCacheRoot(env: HostEnvironment): string {
  return path.join(env.cacheDir, 'kernels');
}

/** `path` (a directory, or `kind` 'file') below <cache>/kernels, checked as kernelCacheRoot says. */
export function requireTrustedKernelPath(
  env: HostEnvironment,
  target: string,
  kind: 'directory' | 'file' = 'directory',
): Promise<'trusted' | 'missing'> {
  return requireTrustedCachePath(kernelCacheRoot(env), target, kind);
}

/**
 * The build in `dir` (below <cache>/kernels), checked: every directory down to it and each of its
 * files ours alone (else a HostError naming the one that is not, and the fix), its provenance
 * parses and names the image's sha256, which the image still has. Undefined when it is absent; a
 * reason when it is damaged.
 */
export async function readBuild(
  env: HostEnvironment,
  dir: string,
  arch: GuestArch,
): Promise<{ build: BuiltKernel } | { problem: string } | undefined> {
  if ((await requireTrustedKernelPath(env, dir)) === 'missing') return undefined;
  const provenanceFile = path.join(dir, KERNEL_FILES.provenance);
  if ((await requireTrustedEntry(provenanceFile, 'file')) === 'missing') return undefined;
  const provenance = parseProvenance(await fs.readFile(provenanceFile, 'utf8'));
  if (typeof provenance === 'string') return { problem: `${provenanceFile}: ${provenance}` };
  const image = path.join(dir, imageName(arch));
  if ((await requireTrustedEntry(image, 'file')) === 'missing') return { problem: `${image} is missing` };
  const sha = await sha256File(image);
  if (sha !== provenance.artifact_sha256)
    return { problem: `${image} has sha256 ${sha}, its provenance.json says ${provenance.artifact_sha256}` };
  const config = path.join(dir, KERNEL_FILES.config);
  const configSha =
    (await requireTrustedEntry(config, 'file')) === 'missing' ? 'missing' : await sha256File(config);
  if (configSha !== provenance.kernel_config_sha256)
    return {
      problem: `${config} is ${configSha === 'missing' ? 'missing' : 'not the config it was built with'}`,
    };
  return {
    build: { dir, key: path.basename(dir), image, config, provenance },
  };
}

/**
 * The build `current` names for (arch, target), if any (a damaged one is reported, not used; one
 * in a directory another user could write, or not ours, is a HostError: see readBuild).
 */
export async function currentBuild(
  env: HostEnvironment,
  arch: GuestArch,
  target: KernelTarget,
): Promise<{ build: BuiltKernel } | { problem: string } | undefined> {
  const parent = targetDir(env, arch, target);
  if ((await requireTrustedKernelPath(env, parent)) === 'missing') return undefined;
  const currentFile = path.join(parent, KERNEL_FILES.current);
  if ((await requireTrustedEntry(currentFile, 'file')) === 'missing') return undefined;
  const key = (await fs.readFile(currentFile, 'utf8')).trim();
  if (!/^[0-9a-f]{24}$/.test(key)) return { problem: `${currentFile} names no build` };
  return (
    (await readBuild(env, path.join(parent, key), arch)) ?? { problem: `the current build ${key} is missing` }
  );
}

/** Makes `key` the build that `auto` boots (atomically). */
export async function setCurrentBuild(
  env: HostEnvironment,
  arch: GuestArch,
  target: KernelTarget,
  key: string,
): Promise<void> {
  await writeFileAtomic(path.join(targetDir(env, arch, target), KERNEL_FILES.current), `${key}\n`, 0o644);
}
