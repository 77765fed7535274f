import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { explainHostCondition, HostError, isErrno } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import { ensureTrustedCacheDir } from '../host/dir-trust.ts';
import { packageVersion } from '../version.ts';
import {
  type BuiltKernel,
  imageName,
  KERNEL_FILES,
  type KernelTarget,
  kernelBuildKey,
  kernelCacheRoot,
  readBuild,
  setCurrentBuild,
  targetDir,
} from './cache.ts';
import { runLogged } from './command.ts';
import {
  buildKernelConfig,
  type ConfigFragment,
  configSha256,
  describeUnmet,
  unmetOptions,
} from './config-builder.ts';
import { buildProvenance } from './provenance.ts';
import { builtImagePath, makeArch, qemuRecipe } from './recipe.ts';
import { checkKernelConfig, parseKernelConfig, readFragment } from './requirements.ts';
import {
  ensureSourceTree,
  type KernelSource,
  localSource,
  provisionedSource,
  sha256File,
  verifySource,
} from './source.ts';
import { findBuildTools, toolchainVersion } from './tools.ts';

export interface KernelBuildRequest {
  readonly arch: GuestArch;
  readonly target: KernelTarget;
  /** Parallel compile jobs (make -jN). */
  readonly jobs: number;
  /** A local source tarball instead of the provisioned linux-source-6.12. */
  readonly source?: string | undefined;
  /** More config fragments after the built-in ones (tests; local additions). */
  readonly extraFragments?: readonly ConfigFragment[] | undefined;
}

export interface KernelBuildOptions {
  readonly signal?: AbortSignal | undefined;
  /** One line per phase, as it starts. */
  readonly onProgress?: ((message: string) => void) | undefined;
}

export interface KernelBuildResult {
  /** False when a complete build with the same key was already there (nothing was done). */
  readonly built: boolean;
  readonly kernel: BuiltKernel;
  readonly elapsedMs: number;
}

/**
 * `openshell-vm kernel build`: checks the tools and the source first (nothing is written before
 * both pass), then, unless the cache has a complete build with the same key, configures and
 * compiles in a temporary directory beside the final one and renames the result into place.
 * Every failure removes the temporary directory (its log is kept as last-failure.log).
 */
export async function buildKernel(
  env: HostEnvironment,
  request: KernelBuildRequest,
  options: KernelBuildOptions = {},
): Promise<KernelBuildResult> {
  const t0 = performance.now();
  const say = (m: string) => options.onProgress?.(m);
  const { arch, target } = request;
  const { signal } = options;

  if (process.platform !== 'linux') {
    throw new HostError(`kernel build needs a Linux host (a Linux toolchain); this is ${process.platform}`, {
      hint: 'build on a Linux machine (or VM) and point OPENSHELL_VM_KERNEL at the bzImage/Image it writes',
    });
  }
  say(`kernel: checking the build tools (${arch})`);
  const tools = await findBuildTools(env.searchPath, arch);
  const source: KernelSource = request.source
    ? await localSource(request.source)
    : await provisionedSource(env);
  say(`kernel: verifying ${source.package} ${source.version} (sha256 ${source.sha256.slice(0, 12)}...)`);
  await verifySource(source);
  const recipe = await qemuRecipe(arch, request.extraFragments);
  const toolchain = await toolchainVersion(tools);
  const key = kernelBuildKey({ arch, target, source, configSha256: recipe.requestSha256, toolchain });
  const parent = targetDir(env, arch, target);
  const final = path.join(parent, key);

  const existing = await readBuild(env, final, arch);
  if (existing && 'build' in existing) {
    await setCurrentBuild(env, arch, target, key);
    say(`kernel: already built with these inputs (${final}): nothing to do`);
    return { built: false, kernel: existing.build, elapsedMs: performance.now() - t0 };
  }
  await ensureTrustedCacheDir(kernelCacheRoot(env), parent);
  if (existing) {
    say(`kernel: the cached build is damaged (${existing.problem}): building it again`);
    await discard(final);
  }

  const tmp = `${final}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const obj = path.join(tmp, 'obj');
  const out = path.join(tmp, 'out');
  const log = path.join(tmp, 'build.log');
  const keptLog = path.join(parent, KERNEL_FILES.failureLog);
  try {
    await fs.mkdir(tmp, { mode: 0o700 });
    await fs.mkdir(obj, { mode: 0o700 });
    await fs.mkdir(out, { mode: 0o700 });
    const tree = await ensureSourceTree(env, source, tools.tar, {
      signal,
      onUnpack: () => say(`kernel: unpacking ${path.basename(source.tarball)} (once per source)`),
    });
    const makeArgs = [
      '-C',
      tree.dir,
      `O=${obj}`,
      `ARCH=${makeArch(arch)}`,
      ...(tools.crossPrefix ? [`CROSS_COMPILE=${tools.crossPrefix}`] : []),
      // The build's identity in the kernel's version string, instead of this host's user and name.
      'KBUILD_BUILD_USER=openshell-vm',
      'KBUILD_BUILD_HOST=openshell-vm',
    ];
    const make = (args: readonly string[], niced = false) =>
      niced
        ? runLogged(tools.nice, ['-n', '15', tools.make, ...makeArgs, ...args], {
            logFile: log,
            keptLog,
            signal,
            writing: tmp,
          })
        : runLogged(tools.make, [...makeArgs, ...args], { logFile: log, keptLog, signal, writing: tmp });

    say(
      `kernel: configuring Linux ${tree.kernelVersion} (${recipe.base} + ${recipe.fragments.map((f) => f.source).join(' + ')})`,
    );
    await make([recipe.base]);
    const base = await fs.readFile(path.join(obj, '.config'), 'utf8');
    const merged = buildKernelConfig(base, recipe.fragments);
    if (merged.problems.length > 0)
      throw new HostError(`the kernel config fragments do not merge:\n  ${merged.problems.join('\n  ')}`, {
        hint: 'fix the fragment lines named above',
      });
    await fs.writeFile(path.join(obj, '.config'), merged.config);
    await make(['olddefconfig']);
    const resolved = await fs.readFile(path.join(obj, '.config'), 'utf8');
    const unmet = unmetOptions(merged.requested, resolved);
    if (unmet.length > 0) {
      throw new HostError(
        `kconfig could not enable ${unmet.length} requested option${unmet.length === 1 ? '' : 's'} of Linux ${tree.kernelVersion}:\n  ${describeUnmet(unmet).split('\n').join('\n  ')}`,
        {
          hint: 'an option whose dependencies are unset is dropped: add them to the fragment, or drop the option',
        },
      );
    }
    const check = checkKernelConfig(await readFragment(), parseKernelConfig(resolved), 'kernel.config', true);
    if (!check.ok) {
      throw new HostError(
        `the built config lacks options the gateway needs built in: ${[...check.missing, ...check.modules].join(', ')}`,
        { hint: 'see openshell-vm kernel check --builtin on the config' },
      );
    }

    const jobs = Math.max(1, Math.floor(request.jobs));
    const tCompile = performance.now();
    say(`kernel: compiling (nice -n 15 make -j${jobs} ${imageName(arch)}; minutes on a 2-core machine)`);
    await make([`-j${jobs}`, imageName(arch)], true);
    say(`kernel: compiled in ${((performance.now() - tCompile) / 1000).toFixed(0)} s`);

    const release = (await fs.readFile(path.join(obj, 'include/config/kernel.release'), 'utf8')).trim();
    const image = path.join(out, imageName(arch));
    await fs.copyFile(path.join(obj, builtImagePath(arch)), image);
    await fs.chmod(image, 0o644);
    await fs.writeFile(path.join(out, KERNEL_FILES.config), resolved, { mode: 0o644 });
    const provenance = buildProvenance({
      artifact: imageName(arch),
      release,
      kernelVersion: tree.kernelVersion,
      fragments: recipe.fragments.map((f) => f.source),
      artifactSha256: await sha256File(image),
      arch,
      source,
      configSha256: configSha256(resolved),
      requestSha256: recipe.requestSha256,
      toolchain,
      buildSeconds: Math.round((performance.now() - t0) / 1000),
      key,
      builtAt: new Date(),
      toolVersion: packageVersion(),
    });
    await fs.writeFile(path.join(out, KERNEL_FILES.provenance), `${JSON.stringify(provenance, null, 2)}\n`, {
      mode: 0o644,
    });
    say('kernel: installing into the cache');
    try {
      await fs.rename(out, final);
    } catch (err) {
      // Another build with the same key finished first: use it.
      if (!(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST'))) throw err;
    }
    await setCurrentBuild(env, arch, target, key);
    await fs.rm(tmp, { recursive: true, force: true });
  } catch (err) {
    await keepLog(log, keptLog);
    await fs.rm(tmp, { recursive: true, force: true });
    throw explainHostCondition(err) ?? err;
  }
  const done = await readBuild(env, final, arch);
  if (!done || !('build' in done))
    throw new HostError(`the kernel build in ${final} did not check out: ${done?.problem ?? 'missing'}`);
  return { built: true, kernel: done.build, elapsedMs: performance.now() - t0 };
}

/** The default for --jobs: every CPU (the compile runs at nice 15, so others still get theirs). */
export function defaultJobs(): number {
  return os.availableParallelism();
}

/** Keeps a failed build's log (there is none when it failed before the first command). */
async function keepLog(log: string, kept: string): Promise<void> {
  try {
    await fs.copyFile(log, kept);
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw explainHostCondition(err) ?? err;
  }
}

async function discard(dir: string): Promise<void> {
  const aside = `${dir}.bad-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await fs.rename(dir, aside);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  await fs.rm(aside, { recursive: true, force: true });
}
