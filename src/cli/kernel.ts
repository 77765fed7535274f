import fs from 'node:fs';
import os from 'node:os';
import { UsageError } from '../errors.ts';
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

export const KERNEL_HELP = `Usage: openshell-vm kernel check [CONFIG] [--builtin] [--json]

Checks a kernel config against the options the gateway needs (src/kernel/openshell.kconfig:
bridge, netfilter/nftables, conntrack, IPVS, cgroups, Landlock, seccomp, ...) and reports each as
built in (y), module (m) or missing (-). CONFIG is a .config file or /proc/config.gz (default:
/proc/config.gz, else /boot/config-$(uname -r)). Modules count as present, since the QEMU
backend's guest init loads them; --builtin requires every option built in (a libkrunfw kernel
cannot load modules). Exit code: 0 all present, 1 some missing, 2 bad arguments.
`;

/** `openshell-vm kernel check ...`: returns the exit code. */
export async function kernelCommand(argv: readonly string[]): Promise<number> {
  if (argv[0] !== 'check') {
    if (argv[0] === undefined || argv[0] === '--help' || argv[0] === '-h') {
      process.stdout.write(KERNEL_HELP);
      return argv[0] === undefined ? 2 : 0;
    }
    throw new UsageError(`kernel: unknown subcommand '${argv[0]}'`, {
      hint: 'use: openshell-vm kernel check [CONFIG]',
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
