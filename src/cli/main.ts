import os from 'node:os';
import { explainHostCondition, OvmError, UsageError } from '../errors.ts';
import { packageVersion } from '../version.ts';
import {
  leadingGlobalFlags,
  type OptionSpec,
  type ParsedArgs,
  parseArgs,
  single,
  subcommandArgv,
  wantsDebug,
} from './args.ts';
import { HELP } from './help.ts';
import { Interrupted } from './signals.ts';

// Every command's module is imported when that command runs, not before: `--version`, `list` and
// `exec` then start without loading the Kubernetes client, the x509 stack, the OCI and rootfs code
// or the VMM backends, which only `verify`, a gateway and `run` use (see scripts/bench-startup.ts).

/** The only place that decides exit codes for openshell-vm's own failures. */
export const EXIT = { usage: 2, failure: 125 } as const;

const OPTIONS: readonly OptionSpec[] = [
  { name: 'exec', kind: 'value' },
  { name: 'args', kind: 'greedy-any' },
  { name: 'env', kind: 'greedy-plain', repeatable: true },
  { name: 'workdir', kind: 'value' },
  { name: 'vcpus', kind: 'value' },
  { name: 'mem', kind: 'value' },
  { name: 'arch', kind: 'value' },
  { name: 'accel', kind: 'value' },
  { name: 'boot-timeout', kind: 'value' },
  { name: 'name', kind: 'value' },
  { name: 'port', short: 'p', kind: 'value', repeatable: true },
  { name: 'net', kind: 'value' },
  { name: 'backend', kind: 'value' },
  { name: 'rootfs', kind: 'value' },
  { name: 'events', kind: 'value' },
  { name: 'api-port', kind: 'value' },
  { name: 'ready-timeout', kind: 'value' },
  { name: 'tls-san', kind: 'value', repeatable: true },
  { name: 'merge-kubeconfig', kind: 'flag' },
  { name: 'use-context', kind: 'flag' },
  { name: 'json', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'keep-logs', kind: 'flag' },
  { name: 'detach', short: 'd', kind: 'flag' },
  { name: 'reset', kind: 'flag' },
  // Internal: this process is the background supervisor --detach started.
  { name: 'supervise', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
  { name: 'version', short: 'V', kind: 'flag' },
];

const EXEC_ONLY = ['args', 'env', 'workdir', 'boot-timeout'] as const;
const GATEWAY_ONLY = [
  'api-port',
  'ready-timeout',
  'tls-san',
  'merge-kubeconfig',
  'use-context',
  'json',
  'reset',
] as const;

export async function main(argv: readonly string[]): Promise<number> {
  const debug = wantsDebug(argv);
  try {
    return await dispatch(argv);
  } catch (err) {
    return reportError(err, debug);
  }
}

/**
 * The commands with their own parser. `verb`: the command's first word is its subcommand
 * (`kernel check`), and its options follow that word.
 */
const SUBCOMMANDS: Readonly<
  Record<string, { readonly run: (argv: readonly string[]) => Promise<number>; readonly verb?: true }>
> = {
  help: { run: async () => printHelp() },
  kernel: { run: async (a) => (await import('./kernel.ts')).kernelCommand(a), verb: true },
  runtime: { run: async (a) => (await import('./runtime.ts')).runtimeCommand(a) },
  doctor: { run: async (a) => (await import('./doctor.ts')).doctorCommand(a) },
  'prepare-rootfs': { run: async (a) => (await import('./prepare-rootfs.ts')).prepareRootfsCommand(a) },
  rootfs: { run: async (a) => (await import('./rootfs.ts')).rootfsCommand(a), verb: true },
  verify: { run: async (a) => (await import('./verify.ts')).verifyCommand(a) },
  status: { run: async (a) => (await import('./instances.ts')).statusCommand(a) },
  list: { run: async (a) => (await import('./instances.ts')).listCommand(a) },
  ls: { run: async (a) => (await import('./instances.ts')).listCommand(a) },
  stop: { run: async (a) => (await import('./instances.ts')).stopCommand(a) },
  logs: { run: async (a) => (await import('./instances.ts')).logsCommand(a) },
  delete: { run: async (a) => (await import('./instances.ts')).deleteCommand(a) },
  rm: { run: async (a) => (await import('./instances.ts')).deleteCommand(a) },
  exec: { run: async (a) => (await import('./exec-into.ts')).execIntoCommand(a) },
};

async function dispatch(argv: readonly string[]): Promise<number> {
  const leading = leadingGlobalFlags(argv);
  const name = leading.rest[0];
  const sub = name !== undefined && Object.hasOwn(SUBCOMMANDS, name) ? SUBCOMMANDS[name] : undefined;
  if (sub) return sub.run(subcommandArgv(leading.flags, leading.rest.slice(1), sub.verb ?? false));
  // `run` may come first or after options: `openshell-vm -q run -- PATH`.
  let args = parseArgs(argv, OPTIONS, true);
  const isRun = args.rest[0] === 'run';
  if (isRun) {
    args = mergeArgs(args, parseArgs(args.rest.slice(1), OPTIONS, true));
  } else if (args.rest.length) {
    throw new UsageError(`unexpected argument '${args.rest[0]}'`, {
      hint: 'guest arguments go after --args (--exec /bin/echo --args hello), or use: openshell-vm run -- PATH [ARG...]',
    });
  }
  if (args.flags.has('help')) return printHelp();
  if (args.flags.has('version')) {
    process.stdout.write(`openshell-vm ${packageVersion()}\n`);
    return 0;
  }
  if (isRun) {
    for (const name of GATEWAY_ONLY) {
      if (args.values.has(name) || args.flags.has(name)) {
        throw new UsageError(`--${name} is a gateway option; it does nothing with run`, {
          hint: `drop --${name}`,
        });
      }
    }
    if (args.values.has('exec') || args.values.has('args')) {
      throw new UsageError('run takes the command after its options, not --exec/--args', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    }
    if (!args.rest.length)
      throw new UsageError('run: no command given', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    const { execCommand } = await import('./run.ts');
    return execCommand(args, args.rest[0] as string, args.rest.slice(1), argv, args.rest.length);
  }
  const exec = single(args, 'exec');
  if (exec === undefined) {
    for (const name of EXEC_ONLY) {
      if (args.values.has(name) || args.flags.has(name)) {
        throw new UsageError(`--${name} needs --exec PATH (the gateway takes no command)`, {
          hint: 'add --exec PATH to run a command, or drop it to boot the gateway',
        });
      }
    }
    return (await import('./gateway.ts')).gatewayCommand(args, argv);
  }
  for (const name of GATEWAY_ONLY) {
    if (args.values.has(name) || args.flags.has(name)) {
      throw new UsageError(`--${name} is a gateway option; it does nothing with --exec`, {
        hint: `drop --${name}, or drop --exec to boot the gateway`,
      });
    }
  }
  const { execCommand } = await import('./run.ts');
  return execCommand(args, exec, args.values.get('args') ?? [], argv, 0);
}

function mergeArgs(first: ParsedArgs, second: ParsedArgs): ParsedArgs {
  const values = new Map<string, readonly string[]>(first.values);
  for (const [name, list] of second.values) {
    if (values.has(name) && OPTIONS.find((o) => o.name === name)?.kind === 'value') {
      throw new UsageError(`--${name} was given more than once`, { hint: 'give it once' });
    }
    values.set(name, [...(values.get(name) ?? []), ...list]);
  }
  return { values, flags: new Set([...first.flags, ...second.flags]), rest: second.rest };
}

function printHelp(): number {
  process.stdout.write(HELP);
  return 0;
}

function reportError(err: unknown, debug: boolean): number {
  if (err instanceof Interrupted) {
    return 128 + (os.constants.signals[err.signal] ?? 0);
  }
  const write = (line: string) => process.stderr.write(`${line}\n`);
  // A full disk (or a quota, a read-only filesystem, a denied path) somewhere below: say so, with the fix.
  const condition = explainHostCondition(err);
  if (condition && !(err instanceof OvmError)) return reportError(condition, debug);
  if (err instanceof OvmError) {
    write(`openshell-vm: error: ${err.message}`);
    if (err.hint) write(`  hint: ${err.hint}`);
    else if (condition) write(`  hint: ${condition.message}: ${condition.hint}`);
    if (debug) {
      for (let cause = err.cause; cause; cause = (cause as Error).cause) {
        write(`  caused by: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`);
      }
    }
    return err instanceof UsageError ? EXIT.usage : EXIT.failure;
  }
  write(`openshell-vm: internal error: ${err instanceof Error ? err.message : String(err)}`);
  if (debug && err instanceof Error && err.stack) write(err.stack);
  else write('  hint: run again with --debug for details, and report it');
  return EXIT.failure;
}

process.exitCode = await main(process.argv.slice(2));
