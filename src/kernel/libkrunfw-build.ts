import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { CommandError, explainHostCondition, HostError, isErrno } from '../errors.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';
import { ensureTrustedCacheDir } from '../host/dir-trust.ts';
import { pathExists, writeFileAtomic } from '../host/fs.ts';
import { findOnPath } from '../host/toolchain.ts';
import { packageVersion } from '../version.ts';
import { kernelCacheRoot } from './cache.ts';
import { buildKernelConfig, configSha256, describeUnmet, unmetOptions } from './config-builder.ts';
import { LIBKRUNFW_FILES, libkrunfwTargetDir } from './libkrunfw-layout.ts';
import {
  LIBKRUNFW_COMMIT,
  LIBKRUNFW_KERNEL_PIN,
  LIBKRUNFW_REPO,
  LIBKRUNFW_SOURCE_PIN,
  type PinnedDownload,
} from './libkrunfw-pins.ts';
import { type ResolvedInput, readLibkrunfwTree, resolveInput } from './libkrunfw-source.ts';
import { checkKernelConfig, parseKernelConfig, readFragment } from './requirements.ts';
import { sha256File } from './source.ts';
import { findBuildTools, toolchainVersion } from './tools.ts';

/**
 * `openshell-vm kernel build --target libkrunfw`: what the original's build-custom-libkrunfw.sh
 * did. libkrunfw's own source (a pinned release, or a local tarball/checkout) and the kernel
 * tarball it is made for (pinned, or local); libkrunfw's patches applied as its Makefile applies
 * them; its config-libkrunfw_<arch> with libkrunfw-guest.kconfig and the gateway's fragment
 * merged over it (everything built in: libkrunfw's kernels have no modules), resolved by `make olddefconfig` and checked; then
 * libkrunfw's own Makefile builds the kernel, bin2cbundle.py turns it into kernel.c, and the
 * shared library is linked. The result is a libkrunfw runtime directory:
 *
 *   <cache>/kernels/<arch>-libkrunfw/<key>/libkrunfw.so.5     the library (its soname)
 *   <cache>/kernels/<arch>-libkrunfw/<key>/kernel.config      the resolved .config
 *   <cache>/kernels/<arch>-libkrunfw/<key>/fragments.kconfig  the fragments merged in
 *   <cache>/kernels/<arch>-libkrunfw/<key>/provenance.json    (src/vmm/libkrun/runtime.ts Provenance)
 *   <cache>/kernels/<arch>-libkrunfw/<key>/manifest.json      the files, as a runtime bundle's
 *   <cache>/kernels/<arch>-libkrunfw/current                  the key of the last build
 *   <cache>/kernels/<arch>-libkrunfw/last-failure.log         the log of the last failed build
 *   <cache>/kernels/downloads/                                verified downloads, kept
 *
 * The key covers both sources' sha256, the requested config's sha256 and the toolchain; the same
 * inputs a second time do nothing. Everything happens in a work directory beside the final one,
 * renamed into place only when complete; every failure removes it.
 */

export { LIBKRUNFW_FILES, libkrunfwTargetDir } from './libkrunfw-layout.ts';

/** Bump when the recipe changes in a way its inputs do not show. */
export const LIBKRUNFW_BUILD_FORMAT = 1;

export interface LibkrunfwBuildRequest {
  readonly arch: GuestArch;
  readonly jobs: number;
  /** libkrunfw's source: a release tarball or a checkout (else the pinned release, downloaded). */
  readonly libkrunfwSource?: string | undefined;
  /** The kernel tarball (else the one the pinned release is made for, downloaded). */
  readonly kernelSource?: string | undefined;
  /** Other pins (tests: a local HTTP server). */
  readonly pins?: { readonly libkrunfw: PinnedDownload; readonly kernel: PinnedDownload } | undefined;
  /** The compile's niceness (default 19: the machine is shared). */
  readonly niceness?: number | undefined;
  /** The host's platform (default this one's): the build runs on Linux only. */
  readonly platform?: NodeJS.Platform | undefined;
}

export interface LibkrunfwBuildOptions {
  readonly signal?: AbortSignal | undefined;
  /** One line per phase, as it starts, and a line every ~30 s while the kernel compiles. */
  readonly onProgress?: ((message: string) => void) | undefined;
  readonly onWarning?: ((message: string) => void) | undefined;
}

export interface LibkrunfwBuildResult {
  /** False when a complete build with the same key was already there (nothing was done). */
  readonly built: boolean;
  readonly dir: string;
  readonly key: string;
  readonly library: string;
  /** provenance.json of the build (src/vmm/libkrun/runtime.ts reads the same file). */
  readonly provenance: LibkrunfwProvenance;
  readonly elapsedMs: number;
}

/** What the build writes to provenance.json: runtime.ts's Provenance fields and the build's own. */
export interface LibkrunfwProvenance {
  readonly artifact: string;
  readonly version: string;
  readonly build_timestamp: string;
  readonly libkrunfw_repo: string;
  readonly libkrunfw_ref: string;
  readonly libkrunfw_commit: string;
  readonly libkrunfw_version: string;
  readonly libkrunfw_source_sha256: string;
  readonly kernel_version: string;
  readonly kernel_source: string;
  readonly kernel_source_sha256: string;
  readonly kernel_config_fragment: string;
  readonly kernel_config_sha256: string;
  readonly artifact_sha256: string;
  readonly abi_version: number;
  readonly arch: GuestArch;
  readonly compiler: string;
  readonly make: string;
  readonly build_seconds: number;
  readonly host_os: string;
  readonly host_arch: string;
  readonly builder: string;
  readonly cache_key: string;
}

/** The lines `openshell-vm kernel build --target libkrunfw` prints for a result. */
export function describeLibkrunfwBuild(r: LibkrunfwBuildResult): string {
  const p = r.provenance;
  return [
    `${r.built ? 'built' : 'cached'}: ${r.library}`,
    `  libkrunfw ${p.libkrunfw_version} (${p.libkrunfw_ref}, ABI ${p.abi_version}) with Linux ${p.kernel_version} (${p.kernel_source}), ${p.arch}, every gateway option built in`,
    `  config ${path.join(r.dir, LIBKRUNFW_FILES.config)} (sha256 ${p.kernel_config_sha256.slice(0, 12)}...)`,
    `  ${p.compiler}; built ${p.build_timestamp} in ${p.build_seconds} s`,
    `  use it: a runtime directory with libkrun and gvproxy beside ${path.basename(r.library)}, or OPENSHELL_VM_RUNTIME_DIR=${r.dir} openshell-vm runtime`,
    '',
  ].join('\n');
}

export async function buildLibkrunfw(
  env: HostEnvironment,
  request: LibkrunfwBuildRequest,
  options: LibkrunfwBuildOptions = {},
): Promise<LibkrunfwBuildResult> {
  const t0 = performance.now();
  const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;
  const say = (m: string) => options.onProgress?.(`[${elapsed()}] ${m}`);
  const warn = (m: string) => options.onWarning?.(m);
  const { arch } = request;
  const signal = options.signal;
  const platform = request.platform ?? process.platform;
  if (platform !== 'linux') {
    throw new HostError(`kernel build --target libkrunfw runs on Linux only (this host is ${platform})`, {
      hint:
        platform === 'darwin'
          ? 'build it on a Linux machine (or in a Linux VM with a case-sensitive filesystem) and copy libkrunfw.so.5 + kernel.config + provenance.json; on macOS libkrun wants libkrunfw.5.dylib, linked from the kernel.c the Linux build makes'
          : 'build it on a Linux machine',
    });
  }
  if (!(Number.isInteger(request.jobs) && request.jobs >= 1))
    throw new HostError(`--jobs ${request.jobs}: must be a whole number, 1 or more`, {
      hint: 'pass --jobs N with N >= 1',
    });
  const pins = request.pins ?? { libkrunfw: LIBKRUNFW_SOURCE_PIN, kernel: LIBKRUNFW_KERNEL_PIN };

  // 1. Tools, then sources: nothing is unpacked or compiled before both are there.
  const tools = await findBuildTools(env.searchPath, arch);
  const extra = await requireLibkrunfwTools(env.searchPath);
  if (extra.note) say(extra.note);
  const toolchain = await toolchainVersion(tools);
  const downloads = path.join(kernelCacheRoot(env), 'downloads');
  const progressOf = (what: string) => (received: number, total: number | undefined) =>
    say(`downloading the ${what}: ${mb(received)}${total ? ` of ${mb(total)}` : ''}`);
  const libkrunfwSrc = await resolveInput(pins.libkrunfw, request.libkrunfwSource, downloads, {
    allowDirectory: true,
    flag: '--libkrunfw-source',
    warn,
    onProgress: progressOf(pins.libkrunfw.what),
    signal,
  });
  const kernelSrc = await resolveInput(pins.kernel, request.kernelSource, downloads, {
    allowDirectory: false,
    flag: '--kernel-source',
    warn,
    onProgress: progressOf(pins.kernel.what),
    signal,
  });
  say(`sources: ${describeInput(libkrunfwSrc, pins.libkrunfw)}; ${describeInput(kernelSrc, pins.kernel)}`);

  const parent = libkrunfwTargetDir(env, arch);
  await ensureTrustedCacheDir(kernelCacheRoot(env), parent);
  const work = path.join(parent, `build.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  // The log sits beside the work directory: kept as last-failure.log when the build fails.
  const log = `${work}.log`;
  const failureLog = path.join(parent, LIBKRUNFW_FILES.failureLog);
  const stage = `${work}.out`;
  try {
    await fs.mkdir(work, { mode: 0o700 });
    // 2. libkrunfw's source, read for its kernel version, patches and base config.
    const src = path.join(work, 'libkrunfw');
    await unpackLibkrunfw(libkrunfwSrc, src, tools.tar, log, failureLog, signal);
    const tree = await readLibkrunfwTree(src, arch);
    const fragments = await readLibkrunfwFragments();
    const baseText = await fs.readFile(tree.configFile, 'utf8');
    const merged = buildKernelConfig(baseText, fragments);
    if (merged.problems.length)
      throw new HostError(`the kernel config cannot be merged:\n${merged.problems.join('\n')}`, {
        hint: 'fix src/kernel/openshell.kconfig',
      });
    const key = libkrunfwBuildKey({
      arch,
      libkrunfwSha256: libkrunfwSrc.sha256,
      kernelSha256: kernelSrc.sha256,
      requestSha256: configSha256(merged.config),
      toolchain,
    });
    const final = path.join(parent, key);
    const library = path.join(final, `libkrunfw.so.${tree.abiVersion}`);
    const existing = await completeBuild(final, library);
    if (existing) {
      say(`libkrunfw ${tree.fullVersion} (${key}) is already built: ${final}`);
      await writeFileAtomic(path.join(parent, LIBKRUNFW_FILES.current), `${key}\n`, 0o644);
      await fs.rm(work, { recursive: true, force: true });
      await fs.rm(log, { force: true });
      return {
        built: false,
        dir: final,
        key,
        library,
        provenance: existing,
        elapsedMs: performance.now() - t0,
      };
    }

    // 3. The kernel tree, with libkrunfw's patches, as the Makefile's $(KERNEL_SOURCES) rule does.
    say(`unpacking the kernel source (${path.basename(kernelSrc.path)})`);
    const kernelDir = await unpackKernel(kernelSrc.path, src, tools.tar, log, failureLog, signal);
    const ksrc = path.join(src, kernelDir);
    const kernelVersion = await treeKernelVersion(ksrc);
    if (kernelVersion !== tree.kernelVersion)
      warn(
        `libkrunfw ${tree.fullVersion} is made for Linux ${tree.kernelVersion}; this kernel source is ${kernelVersion}: its patches may not apply`,
      );
    say(`applying libkrunfw's ${tree.patches.length} patches to Linux ${kernelVersion}`);
    for (const patch of tree.patches) {
      await run('patch', ['-p1', '--forward', '--batch', '-d', ksrc, '-i', patch], {
        cwd: src,
        log,
        failureLog,
        signal,
      }).catch((err: unknown) => {
        throw new HostError(
          `libkrunfw's ${path.basename(patch)} does not apply to Linux ${kernelVersion}${err instanceof CommandError ? `:\n${patchFailures(err.failure.stderrTail)}` : ''}`,
          {
            hint: `libkrunfw ${tree.fullVersion}'s patches are made for Linux ${tree.kernelVersion}: use that kernel (leave out --kernel-source to download it)`,
            cause: err,
          },
        );
      });
    }

    // 4. The merged config, resolved by kconfig and checked: every requested option, built in.
    say(
      `configuring: config-libkrunfw_${arch} + ${fragments.map((f) => f.source).join(' + ')} (make olddefconfig)`,
    );
    const makeVars = archMakeVars(arch, tools.crossPrefix);
    await fs.writeFile(path.join(ksrc, '.config'), merged.config);
    await run(tools.make, ['-C', ksrc, ...makeVars, 'olddefconfig'], { cwd: src, log, failureLog, signal });
    const resolved = await fs.readFile(path.join(ksrc, '.config'), 'utf8');
    const unmet = unmetOptions(merged.requested, resolved);
    if (unmet.length)
      throw new HostError(
        `kconfig could not enable ${unmet.length} requested option(s) in Linux ${kernelVersion}:\n${describeUnmet(unmet)}`,
        {
          hint: 'each needs an option the config lacks, or this kernel does not have it: add what it depends on to src/kernel/openshell.kconfig',
        },
      );
    const check = checkKernelConfig(await readFragment(), parseKernelConfig(resolved), 'kernel.config', true);
    if (!check.ok)
      throw new HostError(
        `the resolved config does not build in: ${[...check.missing, ...check.modules].join(', ')}`,
        {
          hint: 'add what they depend on to src/kernel/openshell.kconfig',
        },
      );

    // 5. libkrunfw's own build: the kernel, bin2cbundle.py (kernel.c), the shared library.
    say(
      `building Linux ${kernelVersion} and libkrunfw ${tree.fullVersion} (nice make -j${request.jobs}; tens of minutes on 2 cores)`,
    );
    await fs.mkdir(path.join(src, 'tarballs'), { recursive: true });
    // The Makefile runs `python3 bin2cbundle.py`: the python3 chosen above comes first on PATH.
    const bin = path.join(work, 'bin');
    await fs.mkdir(bin);
    await fs.symlink(extra.python, path.join(bin, 'python3'));
    // libkrunfw's Makefile passes $(MAKEFLAGS) to the kernel's make as words: a MAKEFLAGS inherited
    // from a make that runs openshell-vm would become targets there.
    const { MAKEFLAGS: _flags, MFLAGS: _mflags, ...inherited } = process.env;
    const makeEnv = { ...inherited, PATH: [bin, env.searchPath].filter(Boolean).join(':') };
    const ticker = setInterval(() => say('still building'), 60_000);
    try {
      await run(
        tools.nice,
        [
          '-n',
          String(request.niceness ?? 19),
          tools.make,
          `-j${request.jobs}`,
          '-o',
          kernelDir,
          `KERNEL_SOURCES=${kernelDir}`,
          `KERNEL_TARBALL=${kernelSrc.path}`,
          ...makeVars,
        ],
        { cwd: src, log, failureLog, signal, env: makeEnv },
      );
    } finally {
      clearInterval(ticker);
    }
    const built = path.join(src, `libkrunfw.so.${tree.fullVersion}`);
    if (!(await pathExists(built)))
      throw new HostError(`libkrunfw's build made no libkrunfw.so.${tree.fullVersion}`, {
        hint: 'its Makefile may have changed: see the log',
      });

    // 6. The runtime directory, staged and renamed into place whole.
    await fs.mkdir(stage, { mode: 0o755 });
    const stagedLib = path.join(stage, path.basename(library));
    await fs.copyFile(built, stagedLib);
    await fs.writeFile(path.join(stage, LIBKRUNFW_FILES.config), resolved);
    await fs.writeFile(path.join(stage, LIBKRUNFW_FILES.fragment), fragments.map((f) => f.text).join('\n'));
    const provenance: LibkrunfwProvenance = {
      artifact: 'libkrunfw-openshell',
      version: `${tree.fullVersion}-openshell`,
      build_timestamp: new Date().toISOString(),
      libkrunfw_repo: LIBKRUNFW_REPO,
      libkrunfw_ref: libkrunfwSrc.pinned ? `v${pins.libkrunfw.version}` : 'local',
      libkrunfw_commit:
        libkrunfwSrc.pinned && pins.libkrunfw === LIBKRUNFW_SOURCE_PIN ? LIBKRUNFW_COMMIT : 'unknown',
      libkrunfw_version: tree.fullVersion,
      libkrunfw_source_sha256: libkrunfwSrc.sha256,
      kernel_version: kernelVersion,
      kernel_source: path.basename(kernelSrc.path),
      kernel_source_sha256: kernelSrc.sha256,
      kernel_config_fragment: LIBKRUNFW_FILES.fragment,
      kernel_config_sha256: configSha256(resolved),
      artifact_sha256: await sha256File(stagedLib),
      abi_version: tree.abiVersion,
      arch,
      compiler: toolchain.compiler,
      make: toolchain.make,
      build_seconds: Math.round((performance.now() - t0) / 1000),
      host_os: `${os.type()} ${os.release()}`,
      host_arch: os.machine(),
      builder: `openshell-vm ${packageVersion()} kernel build --target libkrunfw on ${os.hostname()}`,
      cache_key: key,
    };
    await fs.writeFile(
      path.join(stage, LIBKRUNFW_FILES.provenance),
      `${JSON.stringify(provenance, null, 2)}\n`,
    );
    const files = [
      path.basename(library),
      LIBKRUNFW_FILES.config,
      LIBKRUNFW_FILES.fragment,
      LIBKRUNFW_FILES.provenance,
    ];
    await fs.writeFile(
      path.join(stage, LIBKRUNFW_FILES.manifest),
      `${JSON.stringify({ target: `${arch}-linux`, custom: true, files }, null, 2)}\n`,
    );
    await fs.rm(final, { recursive: true, force: true });
    await fs.rename(stage, final);
    await writeFileAtomic(path.join(parent, LIBKRUNFW_FILES.current), `${key}\n`, 0o644);
    await fs.rm(work, { recursive: true, force: true });
    await fs.rm(log, { force: true });
    say(`libkrunfw ${tree.fullVersion} with Linux ${kernelVersion} built: ${library}`);
    return { built: true, dir: final, key, library, provenance, elapsedMs: performance.now() - t0 };
  } catch (err) {
    const kept = await fs.rename(log, failureLog).then(
      () => true,
      () => false,
    );
    await fs.rm(stage, { recursive: true, force: true });
    await fs.rm(work, { recursive: true, force: true });
    const explained = explainHostCondition(err) ?? err;
    if (kept && explained instanceof HostError && !(explained instanceof CommandError)) {
      throw new HostError(explained.message, {
        hint: `${explained.hint ? `${explained.hint}; ` : ''}the build's log: ${failureLog}`,
        cause: explained.cause ?? err,
      });
    }
    throw explained;
  }
}

/**
 * The fragments merged over libkrunfw's config, in order: libkrunfw-guest.kconfig (what the
 * gateway's options depend on that libkrunfw's config leaves out), then openshell.kconfig.
 */
export async function readLibkrunfwFragments(): Promise<{ source: string; text: string }[]> {
  return Promise.all(
    ['libkrunfw-guest.kconfig', 'openshell.kconfig'].map(async (source) => ({
      source,
      text: await fs.readFile(new URL(`./${source}`, import.meta.url), 'utf8'),
    })),
  );
}

/** The cache key: both sources, the requested config, the toolchain, the arch and the recipe. */
export function libkrunfwBuildKey(inputs: {
  readonly arch: GuestArch;
  readonly libkrunfwSha256: string;
  readonly kernelSha256: string;
  readonly requestSha256: string;
  readonly toolchain: { readonly compiler: string; readonly make: string };
}): string {
  const identity = {
    format: LIBKRUNFW_BUILD_FORMAT,
    target: 'libkrunfw',
    arch: inputs.arch,
    libkrunfw: inputs.libkrunfwSha256,
    kernel: inputs.kernelSha256,
    config: inputs.requestSha256,
    toolchain: [inputs.toolchain.compiler, inputs.toolchain.make],
  };
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 24);
}

/** A complete build's provenance: the library and kernel.config with the sha256s it names; else undefined. */
async function completeBuild(dir: string, library: string): Promise<LibkrunfwProvenance | undefined> {
  let provenance: LibkrunfwProvenance;
  try {
    provenance = JSON.parse(await fs.readFile(path.join(dir, LIBKRUNFW_FILES.provenance), 'utf8'));
  } catch (err) {
    if (isErrno(err, 'ENOENT') || err instanceof SyntaxError) return undefined;
    throw err;
  }
  try {
    const ok =
      (await sha256File(library)) === provenance.artifact_sha256 &&
      (await sha256File(path.join(dir, LIBKRUNFW_FILES.config))) === provenance.kernel_config_sha256;
    return ok ? provenance : undefined;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

/** The Makefile's ARCH/CROSS_COMPILE for a guest of another architecture than the host. */
function archMakeVars(arch: GuestArch, crossPrefix: string): string[] {
  if (arch === hostArch()) return [];
  return [`ARCH=${arch === 'aarch64' ? 'arm64' : 'x86_64'}`, `CROSS_COMPILE=${crossPrefix}`];
}

/**
 * Tools libkrunfw's build needs beyond the kernel's: patch, and a python3 that imports pyelftools
 * for bin2cbundle.py. The python3 first on PATH is preferred; when it lacks pyelftools (a pyenv or
 * venv python ahead of Debian's) and /usr/bin/python3 has it, that one is used for the build.
 */
async function requireLibkrunfwTools(searchPath: string): Promise<{ python: string; note?: string }> {
  const missing: string[] = [];
  if (!(await findOnPath('patch', searchPath)))
    missing.push("patch (applying libkrunfw's patches; apt package patch)");
  const onPath = await findOnPath('python3', searchPath);
  let python: string | undefined;
  let note: string | undefined;
  if (onPath && (await succeeds(onPath, ['-c', 'import elftools']))) python = onPath;
  else if (await succeeds(SYSTEM_PYTHON, ['-c', 'import elftools'])) {
    python = SYSTEM_PYTHON;
    if (onPath)
      note = `bin2cbundle.py runs with ${SYSTEM_PYTHON}: the python3 on PATH (${onPath}) has no pyelftools`;
  }
  if (!python)
    missing.push(
      onPath
        ? `pyelftools for ${onPath} (bin2cbundle.py reads the kernel ELF; apt package python3-pyelftools)`
        : 'python3 with pyelftools (bin2cbundle.py; apt packages python3 python3-pyelftools)',
    );
  if (missing.length)
    throw new HostError(`the libkrunfw build needs ${missing.join(', ')}`, {
      hint: 'apt-get install patch python3 python3-pyelftools (or run scripts/provision-host.sh)',
    });
  return { python: python as string, ...(note ? { note } : {}) };
}

const SYSTEM_PYTHON = '/usr/bin/python3';

function succeeds(command: string, args: readonly string[]): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
}

async function unpackLibkrunfw(
  input: ResolvedInput,
  to: string,
  tar: string,
  log: string,
  failureLog: string,
  signal?: AbortSignal,
): Promise<void> {
  if (input.kind === 'directory') {
    await fs.cp(input.path, to, { recursive: true, filter: (p) => path.basename(p) !== '.git' });
    return;
  }
  await fs.mkdir(to);
  await run(tar, ['-xf', input.path, '-C', to, '--strip-components=1', '--no-same-owner'], {
    cwd: to,
    log,
    failureLog,
    signal,
  });
}

/** Unpacks the kernel tarball into `into`; returns its top directory's name (a Linux tree). */
async function unpackKernel(
  tarball: string,
  into: string,
  tar: string,
  log: string,
  failureLog: string,
  signal?: AbortSignal,
): Promise<string> {
  const before = new Set(await fs.readdir(into));
  await run(tar, ['-xf', tarball, '-C', into, '--no-same-owner'], { cwd: into, log, failureLog, signal });
  const added = (await fs.readdir(into)).filter((n) => !before.has(n));
  const top = added.length === 1 ? (added[0] as string) : undefined;
  if (
    !top ||
    !(await pathExists(path.join(into, top, 'Makefile'))) ||
    !(await pathExists(path.join(into, top, 'Kconfig')))
  )
    throw new HostError(
      `${tarball} is not a Linux source tarball (one top directory with a Makefile and Kconfig)`,
      {
        hint: 'pass the tarball of a Linux source tree (--kernel-source), or leave it out to download the pinned one',
      },
    );
  return top;
}

async function treeKernelVersion(dir: string): Promise<string> {
  const makefile = await fs.readFile(path.join(dir, 'Makefile'), 'utf8');
  const field = (name: string) => new RegExp(`^${name} = *(\\S*)`, 'm').exec(makefile)?.[1] ?? '';
  return [field('VERSION'), field('PATCHLEVEL'), field('SUBLEVEL')].filter(Boolean).join('.');
}

/** What `patch` said about the hunks that failed (its other lines are the ones that applied). */
function patchFailures(output: string): string {
  const lines = output.split('\n');
  const failed = lines.filter((l) => /FAILED|saving rejects|can't find file|Reversed|malformed/.test(l));
  return (failed.length ? failed : lines.slice(-5)).map((l) => `  ${l.trim()}`).join('\n');
}

function describeInput(input: ResolvedInput, pin: PinnedDownload): string {
  const name = path.basename(input.path);
  if (input.pinned)
    return `${pin.what} ${pin.version} (${name}, sha256 verified${input.downloaded ? ', downloaded' : ''})`;
  return `${pin.what} from ${input.path} (${input.kind}, sha256 ${input.sha256.slice(0, 12)}...)`;
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Runs one build step with its output appended to `log`; a failure is a CommandError with the log's tail. */
function run(
  command: string,
  args: readonly string[],
  options: {
    readonly cwd: string;
    readonly log: string;
    /** Where the log is kept if the build fails (named in the error). */
    readonly failureLog: string;
    readonly signal?: AbortSignal | undefined;
    readonly env?: NodeJS.ProcessEnv | undefined;
  },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(options.log, { flags: 'a' });
    out.write(`$ ${[command, ...args].join(' ')}\n`);
    let tail = '';
    const child = spawn(command, args, {
      cwd: options.cwd,
      // The build's own environment (the python3 with pyelftools first on PATH, no inherited
      // MAKEFLAGS) when one is given.
      ...(options.env ? { env: options.env } : {}),
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: options.signal,
    });
    const take = (d: Buffer) => {
      out.write(d);
      tail = (tail + d.toString('utf8')).slice(-6000);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', (err) => out.end(() => reject(err)));
    child.on('close', (code, signal) =>
      out.end(() => {
        if (code === 0) return resolve();
        const failure = new CommandError(`the libkrunfw build failed (log: ${options.failureLog})`, {
          argv: [command, ...args],
          exitCode: code,
          signal,
          stderrTail: tail.trimEnd().split('\n').slice(-15).join('\n'),
        });
        if (/No space left on device/.test(tail)) {
          const full = Object.assign(new Error('ENOSPC: no space left on device'), {
            code: 'ENOSPC',
            syscall: 'write',
            path: options.cwd,
            cause: failure,
          });
          return reject(explainHostCondition(full) ?? failure);
        }
        reject(failure);
      }),
    );
  });
}
