import path from 'node:path';
import { readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { rootfsDir } from '../rootfs/layout.ts';
import { type RootfsRecord, readRootfsRecord } from '../rootfs/record.ts';
import { type OptionSpec, parseArgs, single } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'name', kind: 'value' },
  { name: 'rootfs', kind: 'value' },
  { name: 'json', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const ROOTFS_HELP = `Usage: openshell-vm rootfs info [--name NAME | --rootfs DIR] [--json]

Prints the build record of an instance's rootfs (/opt/openshell/rootfs.json): every input with
its source, version and SHA-256, the Debian packages, and when it was built.
`;

export async function rootfsCommand(argv: readonly string[]): Promise<number> {
  if (argv[0] !== 'info') {
    if (argv[0] === undefined || argv[0] === '--help' || argv[0] === '-h') {
      process.stdout.write(ROOTFS_HELP);
      return argv[0] === undefined ? 2 : 0;
    }
    throw new UsageError(`rootfs: unknown subcommand '${argv[0]}'`, {
      hint: 'use: openshell-vm rootfs info [--json]',
    });
  }
  const args = parseArgs(argv.slice(1), OPTIONS, false, 'rootfs info');
  if (args.flags.has('help')) {
    process.stdout.write(ROOTFS_HELP);
    return 0;
  }
  const given = single(args, 'rootfs');
  if (given && args.values.has('name'))
    throw new UsageError('give --name or --rootfs, not both', { hint: 'drop one' });
  const dir = given ? path.resolve(given) : rootfsDir(readEnvironment(), single(args, 'name') ?? 'default');
  const record = await readRootfsRecord(dir);
  process.stdout.write(
    args.flags.has('json') ? `${JSON.stringify(record, null, 2)}\n` : formatRecord(dir, record),
  );
  return 0;
}

function formatRecord(dir: string, r: RootfsRecord): string {
  const lines = [
    `rootfs: ${dir}`,
    `built: ${r.builtAt} by openshell-vm ${r.tool.version} in ${(r.buildMs / 1000).toFixed(1)} s (${r.arch}, owners ${r.owners})`,
    `base: ${r.base.source}`,
    `kernel modules: ${r.kernelRelease ?? 'none'}`,
    'inputs:',
    ...r.inputs.map(
      (i) =>
        `  ${i.kind.padEnd(14)} ${i.version ? `${i.version}  ` : ''}sha256:${i.sha256.slice(0, 16)}…  ${i.path ? `/${i.path}  ` : ''}from ${i.source}${i.verification ? ` (${i.verification})` : ''}`,
    ),
    `packages: ${Object.keys(r.packages).length}${r.extraPackages?.length ? ` (asked for: ${r.extraPackages.join(', ')})` : ''}`,
    ...(r.images?.length
      ? [
          'images:',
          ...r.images.map(
            (i) =>
              `  ${(i.for ?? 'extra').padEnd(14)} ${i.reference ?? '(unnamed archive)'}  ${i.digest.slice(0, 19)}…  ${i.source}`,
          ),
        ]
      : r.images
        ? ['images: none pre-loaded (k3s pulls what it runs)']
        : []),
    r.preinit
      ? `preinit: ${r.preinit.at}, Ready in ${(r.preinit.readyMs / 1000).toFixed(1)} s (gateway ${r.preinit.gatewayVersion ? `version ${r.preinit.gatewayVersion}` : 'without a version'}), PKI baked (CA sha256 ${r.preinit.caSha256.slice(0, 16)}…)${r.preinit.kine ? `, kine ${r.preinit.kine.rowsBefore} → ${r.preinit.kine.rowsAfter} rows` : ''}`
      : 'preinit: no (the first boot initializes it)',
    ...r.warnings.map((w) => `warning: ${w}`),
  ];
  return `${lines.join('\n')}\n`;
}
