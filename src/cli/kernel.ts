import fs from 'node:fs';
import os from 'node:os';
import { readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { defaultGuestArch, parseGuestArch } from '../host/arch.ts';
import {
  checkKernelConfig,
  type KernelCheck,
  parseKernelConfig,
  readFragment,
  readKernelConfigFile,
} from '../kernel/requirements.ts';
import { type OptionSpec, parseArgs } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'builtin', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

const BUILD_OPTIONS: readonly OptionSpec[] = [
  { name: 'arch', kind: 'value' },
  { name: 'target', kind: 'value' },
  { name: 'jobs', short: 'j', kind: 'value' },
  { name: 'source', kind: 'value', aliases: ['kernel-source'] },
  { name: 'libkrunfw-source', kind: 'value' },
  { name: 'json', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const KERNEL_BUILD_HELP = `Usage: openshell-vm kernel build [--arch x86_64|aarch64] [--target qemu|libkrunfw|all] [--jobs N]
                                [--source TARBALL] [--libkrunfw-source PATH] [--json] [-q]

Builds the QEMU backend's guest kernel from Debian's kernel source (linux-source-6.12, fetched by
scripts/provision-host.sh with its sha256, checked before every build) with openshell-vm's own
configuration: make allnoconfig + src/kernel/qemu-guest.kconfig (virtio-mmio, virtio-fs, -blk,
-net, -console, vsock, ext4, overlay, serial console, cgroups, ...) + the gateway's options
(src/kernel/openshell.kconfig), everything built in (no module support). make olddefconfig must
keep every requested option, and kernel check --builtin must pass, or the build stops naming the
option. Output in <cache>/kernels/ARCH-qemu/KEY/: bzImage (x86_64) or Image (aarch64),
kernel.config, provenance.json; KEY covers the source, the requested config and the toolchain,
so a second build with the same inputs does nothing. Runs then boot it (OPENSHELL_VM_KERNEL=auto,
the default: the built kernel when there is one for the guest architecture, else Debian's;
debian; built; or a PATH to a kernel image). The compile runs at nice 15.
  --arch      guest architecture (default: the host's)
  --target    qemu (default; the above), libkrunfw (libkrun's kernel library, libkrunfw's own
              build with the gateway's options built in: src/kernel/libkrunfw-build.ts), or all
  --jobs N    parallel compile jobs (default: the number of CPUs)
  --source    (or --kernel-source) a kernel source tarball to build instead of the provisioned
              (qemu) or pinned (libkrunfw) one
  --libkrunfw-source  libkrunfw's source (a release tarball or a checkout) instead of the pinned one
  --json      print the result (key, paths, provenance) as JSON on stdout
`;

export const KERNEL_HELP = `Usage: openshell-vm kernel check [CONFIG] [--builtin] [--json]
       openshell-vm kernel build [--arch ARCH] [--target qemu|libkrunfw|all] [--jobs N] [--source TARBALL]

Checks a kernel config against the options the gateway needs (src/kernel/openshell.kconfig:
bridge, netfilter/nftables, conntrack, IPVS, cgroups, Landlock, seccomp, ...) and reports each as
built in (y), module (m) or missing (-). CONFIG is a .config file or /proc/config.gz (default:
/proc/config.gz, else /boot/config-$(uname -r)). Modules count as present, since the QEMU
backend's guest init loads them; --builtin requires every option built in (a libkrunfw kernel
cannot load modules). Exit code: 0 all present, 1 some missing, 2 bad arguments.
\`kernel build --help\` describes the build.
`;

/** `openshell-vm kernel check|build ...`: returns the exit code. */
export async function kernelCommand(argv: readonly string[]): Promise<number> {
  if (argv[0] === 'build') return kernelBuildCommand(argv.slice(1));
  if (argv[0] !== 'check') {
    if (argv[0] === undefined || argv[0] === '--help' || argv[0] === '-h') {
      process.stdout.write(KERNEL_HELP);
      return argv[0] === undefined ? 2 : 0;
    }
    throw new UsageError(`kernel: unknown subcommand '${argv[0]}'`, {
      hint: 'use: openshell-vm kernel check [CONFIG] or openshell-vm kernel build',
    });
  }
  const args = parseArgs(argv.slice(1), OPTIONS, true);
  if (args.flags.has('help')) {
    process.stdout.write(KERNEL_HELP);
    return 0;
  }
  if (args.rest.length > 1)
    throw new UsageError('kernel check takes one CONFIG', { hint: 'see openshell-vm kernel --help' });
  const source = args.rest[0] ?? defaultConfig();
  const check = checkKernelConfig(
    await readFragment(),
    parseKernelConfig(await readKernelConfigFile(source)),
    source,
    args.flags.has('builtin'),
  );
  process.stdout.write(args.flags.has('json') ? `${JSON.stringify(check, null, 2)}\n` : formatCheck(check));
  return check.ok ? 0 : 1;
}

async function kernelBuildCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, BUILD_OPTIONS, false, 'kernel build');
  if (args.flags.has('help')) {
    process.stdout.write(KERNEL_BUILD_HELP);
    return 0;
  }
  const one = (name: string) => args.values.get(name)?.at(-1);
  const arch = one('arch') ? parseGuestArch(one('arch') as string) : defaultGuestArch();
  const target = one('target') ?? 'qemu';
  // What each --target builds (kernel targets, not VMM backends).
  const TARGETS: Readonly<Record<string, readonly ('qemu' | 'libkrunfw')[]>> = {
    qemu: ['qemu'],
    libkrunfw: ['libkrunfw'],
    all: ['qemu', 'libkrunfw'],
  };
  const builds = new Set(Object.hasOwn(TARGETS, target) ? TARGETS[target] : []);
  if (builds.size === 0) {
    throw new UsageError(`kernel build --target ${target}: unknown target`, {
      hint: "use --target qemu (the QEMU backend's guest kernel), libkrunfw (libkrun's kernel library) or all",
    });
  }
  if (one('libkrunfw-source') !== undefined && !builds.has('libkrunfw'))
    throw new UsageError('--libkrunfw-source is for --target libkrunfw (or all)', {
      hint: 'drop it, or add --target libkrunfw',
    });
  const { buildKernel, defaultJobs } = await import('../kernel/build.ts');
  let jobs = defaultJobs();
  const jobsText = one('jobs');
  if (jobsText !== undefined) {
    jobs = Number(jobsText);
    if (!/^[1-9][0-9]{0,3}$/.test(jobsText))
      throw new UsageError(`--jobs: '${jobsText}' is not a number of jobs`, {
        hint: 'use --jobs N with N from 1 to 9999',
      });
  }
  const { Reporter } = await import('./reporter.ts');
  const reporter = new Reporter({ stderr: process.stderr, quiet: args.flags.has('quiet') });
  const { withSignals } = await import('./signals.ts');
  const env = readEnvironment();
  const outputs: { json: Record<string, unknown>; text: string }[] = [];
  await withSignals(reporter, 'stopping the kernel build (nothing is left half-built)', async (signal) => {
    if (builds.has('qemu')) {
      const result = await buildKernel(
        env,
        { arch, target: 'qemu', jobs, source: one('source') },
        { signal, onProgress: (m) => reporter.progress(m) },
      );
      const p = result.kernel.provenance;
      outputs.push({
        json: {
          target: 'qemu',
          built: result.built,
          key: result.kernel.key,
          dir: result.kernel.dir,
          image: result.kernel.image,
          config: result.kernel.config,
          elapsedMs: Math.round(result.elapsedMs),
          provenance: p,
        },
        text: `${result.built ? 'built' : 'cached'}: ${result.kernel.image}\n  Linux ${p.version} (${p.kernel_source}), ${p.arch}, everything built in\n  config ${result.kernel.config} (sha256 ${p.kernel_config_sha256.slice(0, 12)}...)\n  ${p.compiler}; built ${p.build_timestamp} in ${p.build_seconds} s\n`,
      });
    }
    if (builds.has('libkrunfw')) {
      const { buildLibkrunfw, describeLibkrunfwBuild } = await import('../kernel/libkrunfw-build.ts');
      const result = await buildLibkrunfw(
        env,
        { arch, jobs, libkrunfwSource: one('libkrunfw-source'), kernelSource: one('source') },
        { signal, onProgress: (m) => reporter.progress(m), onWarning: (m) => reporter.warn(m) },
      );
      outputs.push({
        json: {
          target: 'libkrunfw',
          built: result.built,
          key: result.key,
          dir: result.dir,
          library: result.library,
          elapsedMs: Math.round(result.elapsedMs),
          provenance: result.provenance,
        },
        text: describeLibkrunfwBuild(result),
      });
    }
  });
  if (args.flags.has('json')) {
    const json = outputs.length === 1 ? outputs[0]?.json : outputs.map((o) => o.json);
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  } else {
    for (const o of outputs) process.stdout.write(o.text);
  }
  return 0;
}

function defaultConfig(): string {
  if (fs.existsSync('/proc/config.gz')) return '/proc/config.gz';
  return `/boot/config-${os.release()}`;
}

export function formatCheck(check: KernelCheck): string {
  const mark = { builtin: 'y', module: 'm', missing: '-' } as const;
  const width = Math.max(...check.results.map((r) => r.option.length));
  const lines = [`kernel config: ${check.source}${check.kernel ? ` (${check.kernel})` : ''}`];
  for (const r of check.results) {
    const note =
      r.status === 'missing'
        ? 'MISSING'
        : r.status === 'module' && check.builtinOnly
          ? 'MODULE (must be built in)'
          : '';
    const via = r.via ? ` (as ${r.via})` : '';
    lines.push(`  ${mark[r.status]}  ${r.option.padEnd(width)}  ${r.group}${via}${note ? `  ${note}` : ''}`);
  }
  for (const u of check.unwanted) lines.push(`  !  ${u.padEnd(width)}  set, but not wanted`);
  const builtin = check.results.length - check.modules.length - check.missing.length;
  lines.push(
    `${check.results.length} required: ${builtin} built in, ${check.modules.length} modules, ${check.missing.length} missing`,
    check.ok
      ? `ok${check.modules.length && !check.builtinOnly ? ' (modules count as present; use --builtin for a libkrunfw kernel)' : ''}`
      : `NOT OK: ${check.missing.length ? `missing ${check.missing.join(', ')}` : ''}${check.builtinOnly && check.modules.length ? `${check.missing.length ? '; ' : ''}${check.modules.length} options are modules, not built in` : ''}`,
  );
  return `${lines.join('\n')}\n`;
}
