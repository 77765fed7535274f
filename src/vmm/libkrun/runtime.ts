import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError, isErrno } from '../../errors.ts';
import { type GuestArch, hostArch } from '../../host/arch.ts';
import { isExecutableFile, pathExists } from '../../host/fs.ts';
import { currentLibkrunfwDir } from '../../kernel/libkrunfw-layout.ts';

/**
 * The libkrun runtime: libkrun (the VMM library), libkrunfw (the guest kernel as a library) and,
 * in a bundle, gvproxy. Found, in order, at OPENSHELL_VM_RUNTIME_DIR, in `openshell-vm.runtime/`
 * next to the installed package, then in the platform's usual library directories.
 */
export const RUNTIME_BUNDLE_DIR = 'openshell-vm.runtime';

/** What a bundle's provenance.json says (written by the custom libkrunfw build). */
export interface Provenance {
  readonly artifact?: string;
  readonly version?: string;
  readonly build_timestamp?: string;
  readonly libkrunfw_repo?: string;
  readonly libkrunfw_ref?: string;
  readonly libkrunfw_commit?: string;
  readonly kernel_version?: string;
  readonly kernel_config_fragment?: string;
  readonly artifact_sha256?: string;
  readonly host_os?: string;
  readonly host_arch?: string;
  readonly builder?: string;
  /** Written by `openshell-vm kernel build --target libkrunfw` (src/kernel/libkrunfw-build.ts). */
  readonly libkrunfw_source_sha256?: string;
  readonly kernel_source?: string;
  readonly kernel_source_sha256?: string;
  /** The sha256 of kernel.config beside the library: a kernel.config of another sha256 is refused. */
  readonly kernel_config_sha256?: string;
  readonly compiler?: string;
  readonly cache_key?: string;
}

/** The file beside a libkrunfw that holds its kernel's configuration (written by the custom build). */
export const KERNEL_CONFIG_FILE = 'kernel.config';

/**
 * What a runtime directory holds, before deciding whether it can boot VMs: libkrunfw (required:
 * it is what the directory is for), libkrun and gvproxy when present, provenance, manifest and
 * kernel.config. A libkrunfw-only directory (the output of `kernel build --target libkrunfw`, or
 * a distribution's libkrunfw without libkrun) reads fine; validateBundle requires the rest.
 */
export interface RuntimeDir {
  readonly dir: string;
  /** build: the last `kernel build --target libkrunfw` (a libkrunfw-only directory). */
  readonly source: 'env' | 'package' | 'system' | 'build';
  readonly libkrun: string | undefined;
  /** Every libkrunfw library, sorted; the first is the one whose checksum is reported. */
  readonly libkrunfw: readonly string[];
  readonly libkrunfwSha256: string;
  readonly gvproxy: string | undefined;
  readonly kind: 'custom' | 'stock';
  readonly provenance: Provenance | undefined;
  readonly manifest:
    | { readonly target?: string; readonly custom?: boolean; readonly files: readonly string[] }
    | undefined;
  /** kernel.config beside the library (checked against provenance's kernel_config_sha256). */
  readonly kernelConfig: string | undefined;
}

/** A runtime that can boot VMs: a RuntimeDir with libkrun (and, in a bundle, gvproxy). */
export interface RuntimeBundle extends RuntimeDir {
  readonly source: 'env' | 'package' | 'system';
  readonly libkrun: string;
  /** gvproxy shipped in the bundle (system locations have none: it is looked up elsewhere). */
  readonly gvproxy: string | undefined;
  /** custom: a provenance.json describes an OpenShell-built libkrunfw; stock otherwise. */
  readonly kind: 'custom' | 'stock';
}

export type Platform = 'darwin' | 'linux';

const LIBKRUN: Readonly<Record<Platform, readonly string[]>> = {
  darwin: ['libkrun.dylib', 'libkrun.1.dylib'],
  linux: ['libkrun.so', 'libkrun.so.1'],
};
const SYSTEM_DIRS: Readonly<Record<Platform, readonly string[]>> = {
  darwin: ['/opt/homebrew/lib', '/usr/local/lib'],
  linux: [
    '/usr/local/lib64',
    '/usr/local/lib',
    '/usr/lib64',
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/usr/lib',
  ],
};

const INSTALL_HINT: Readonly<Record<Platform, string>> = {
  darwin:
    'brew install libkrun (Homebrew core; it brings a stock libkrunfw, which runs commands; the gateway needs one from openshell-vm kernel build --target libkrunfw), or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle',
  linux:
    'install libkrun and libkrunfw (Fedora: dnf install libkrun; elsewhere build them), or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle',
};

export interface DiscoverOptions {
  readonly platform?: Platform;
  /** The installed package's root (where openshell-vm.runtime/ may sit). */
  readonly packageDir?: string;
  /** Replaces the platform's library directories (tests). */
  readonly systemDirs?: readonly string[];
}

/** Finds and validates the runtime; a missing or broken one is a HostError saying what and how to fix it. */
export async function discoverRuntime(
  env: HostEnvironment,
  options: DiscoverOptions = {},
): Promise<RuntimeBundle> {
  const platform = options.platform ?? (process.platform === 'darwin' ? 'darwin' : 'linux');
  if (env.runtimeBundleDir) return validateBundle(env.runtimeBundleDir, 'env', platform);
  const packageDir = options.packageDir ?? path.resolve(import.meta.dirname, '..', '..', '..');
  const besidePackage = path.join(packageDir, RUNTIME_BUNDLE_DIR);
  if (await isDir(besidePackage)) return validateBundle(besidePackage, 'package', platform);
  for (const dir of options.systemDirs ?? SYSTEM_DIRS[platform]) {
    if (await findFirst(dir, LIBKRUN[platform])) return validateBundle(dir, 'system', platform);
  }
  throw new HostError('no libkrun runtime found', {
    hint: `${INSTALL_HINT[platform]} (looked in OPENSHELL_VM_RUNTIME_DIR, ${besidePackage}, ${(options.systemDirs ?? SYSTEM_DIRS[platform]).join(', ')})`,
  });
}

/**
 * Validates a runtime directory: libkrun and at least one libkrunfw present; in a bundle (not a
 * system library directory) an executable gvproxy; manifest.json, when present, valid JSON whose
 * files all exist; provenance.json, when present, valid JSON whose artifact_sha256 (if given)
 * matches the libkrunfw it describes; kernel.config, when present, the one provenance names.
 */
export async function validateBundle(
  dir: string,
  source: RuntimeBundle['source'],
  platform: Platform,
): Promise<RuntimeBundle> {
  const fail = failFor(dir, platform);
  if (!(await isDir(dir))) throw fail('is not a directory');
  const libkrunName = await findFirst(dir, LIBKRUN[platform]);
  if (!libkrunName) throw fail(`no ${LIBKRUN[platform].join(' or ')}`);
  const read = await readRuntimeDir(dir, source, platform);
  if (source !== 'system' && !read.gvproxy)
    throw fail('no executable gvproxy in the bundle', 'add gvproxy to the bundle (chmod +x)');
  return { ...read, source, libkrun: path.join(dir, libkrunName) };
}

/**
 * Reads a runtime directory without requiring libkrun or gvproxy (see RuntimeDir); everything it
 * does hold is checked as validateBundle checks it.
 */
export async function readRuntimeDir(
  dir: string,
  source: RuntimeDir['source'],
  platform: Platform,
): Promise<RuntimeDir> {
  const fail = failFor(dir, platform);
  if (!(await isDir(dir))) throw fail('is not a directory');
  const libkrunName = await findFirst(dir, LIBKRUN[platform]);
  const entries = (await fs.readdir(dir)).sort();
  const isLib = (n: string) => (platform === 'darwin' ? n.endsWith('.dylib') : /\.so(\.|$)/.test(n));
  const libkrunfw = entries
    .filter((n) => n.startsWith('libkrunfw') && isLib(n))
    .map((n) => path.join(dir, n));
  if (!libkrunfw.length) throw fail('no libkrunfw library (the guest kernel)');

  let gvproxy: string | undefined;
  if (source !== 'system') {
    const candidate = path.join(dir, 'gvproxy');
    if (await isExecutableFile(candidate)) gvproxy = candidate;
  }

  const manifest = await readJson<{ target?: string; custom?: boolean; files?: unknown }>(
    path.join(dir, 'manifest.json'),
    fail,
  );
  if (manifest) {
    if (!Array.isArray(manifest.files) || manifest.files.some((f) => typeof f !== 'string')) {
      throw fail('manifest.json has no "files" list of names', 'rebuild the runtime bundle');
    }
    const missing: string[] = [];
    for (const f of manifest.files as string[]) if (!(await pathExists(path.join(dir, f)))) missing.push(f);
    if (missing.length)
      throw fail(
        `manifest.json lists files that are missing: ${missing.join(', ')}`,
        'rebuild the runtime bundle',
      );
  }

  const libkrunfwSha256 = await sha256File(libkrunfw[0] as string);
  const provenance = await readJson<Provenance>(path.join(dir, 'provenance.json'), fail);
  if (provenance?.artifact_sha256 && provenance.artifact_sha256 !== libkrunfwSha256) {
    throw fail(
      `provenance.json describes a libkrunfw with sha256 ${provenance.artifact_sha256}, but ${path.basename(libkrunfw[0] as string)} has ${libkrunfwSha256}`,
      'the library was replaced after the build: rebuild the runtime or remove provenance.json',
    );
  }
  const configFile = path.join(dir, KERNEL_CONFIG_FILE);
  const kernelConfig = (await pathExists(configFile)) ? configFile : undefined;
  if (kernelConfig && provenance?.kernel_config_sha256) {
    const sha = await sha256File(kernelConfig);
    if (sha !== provenance.kernel_config_sha256) {
      throw fail(
        `provenance.json describes a kernel.config with sha256 ${provenance.kernel_config_sha256}, but ${KERNEL_CONFIG_FILE} has ${sha}`,
        'kernel.config was changed after the build: rebuild the runtime (openshell-vm kernel build --target libkrunfw)',
      );
    }
  }
  return {
    dir,
    source,
    libkrun: libkrunName ? path.join(dir, libkrunName) : undefined,
    libkrunfw,
    libkrunfwSha256,
    gvproxy,
    kind: provenance ? 'custom' : 'stock',
    provenance,
    manifest: manifest ? { ...manifest, files: manifest.files as string[] } : undefined,
    kernelConfig,
  };
}

/**
 * The runtime directory `openshell-vm runtime` reports when no bootable runtime is found: the
 * one OPENSHELL_VM_RUNTIME_DIR names, else the last `kernel build --target libkrunfw` for this
 * host's architecture, else the first system library directory with a libkrunfw (a
 * distribution's libkrunfw without libkrun). Undefined when there is none.
 */
export async function findLibkrunfwDir(
  env: HostEnvironment,
  options: DiscoverOptions & { readonly arch?: GuestArch | undefined } = {},
): Promise<RuntimeDir | undefined> {
  const platform = options.platform ?? (process.platform === 'darwin' ? 'darwin' : 'linux');
  if (env.runtimeBundleDir) return readRuntimeDir(env.runtimeBundleDir, 'env', platform);
  const arch = options.arch ?? hostArch();
  const built = arch && (await currentLibkrunfwDir(env, arch));
  if (built) return readRuntimeDir(built, 'build', platform);
  for (const dir of options.systemDirs ?? SYSTEM_DIRS[platform]) {
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    if (names.some((n) => n.startsWith('libkrunfw'))) return readRuntimeDir(dir, 'system', platform);
  }
  return undefined;
}

function failFor(dir: string, platform: Platform) {
  return (message: string, hint?: string) =>
    new HostError(`runtime ${dir}: ${message}`, { hint: hint ?? INSTALL_HINT[platform] });
}

const RUNTIME_SOURCES: Readonly<Record<RuntimeDir['source'], string>> = {
  env: 'OPENSHELL_VM_RUNTIME_DIR',
  package: 'bundled',
  system: 'system',
  build: 'the last kernel build --target libkrunfw',
};

/** The lines printed at start (and by `openshell-vm runtime`). */
export function describeRuntime(r: RuntimeDir): string[] {
  const lines = [
    `runtime: ${r.dir} (${RUNTIME_SOURCES[r.source]})`,
    `libkrun: ${r.libkrun ?? 'missing (this directory cannot boot VMs)'}`,
    ...r.libkrunfw.map((f) => `libkrunfw: ${path.basename(f)}`),
    `sha256: ${r.libkrunfwSha256.slice(0, 12)}...`,
  ];
  if (r.kind === 'custom' && r.provenance) {
    const p = r.provenance;
    lines.push(
      'type: custom (OpenShell-built)',
      `libkrunfw-commit: ${p.libkrunfw_commit ?? 'unknown'}`,
      `kernel-version: ${p.kernel_version ?? 'unknown'}`,
      `build-timestamp: ${p.build_timestamp ?? 'unknown'}`,
    );
  } else {
    lines.push('type: stock (system/homebrew)');
  }
  return lines;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function readJson<T>(file: string, fail: (m: string, h?: string) => Error): Promise<T | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      throw new Error('not a JSON object');
    return value as T;
  } catch (err) {
    throw fail(
      `${path.basename(file)} is not valid JSON (${(err as Error).message})`,
      `fix or remove ${file}`,
    );
  }
}

async function findFirst(dir: string, names: readonly string[]): Promise<string | undefined> {
  for (const n of names) if (await pathExists(path.join(dir, n))) return n;
  return undefined;
}

async function isDir(p: string): Promise<boolean> {
  return fs.stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}
