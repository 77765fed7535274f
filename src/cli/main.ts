import { UsageError } from '../errors.ts';
import { packageVersion } from '../version.ts';
import {
  EXEC_ONLY,
  GATEWAY_ONLY,
  leadingGlobalFlags,
  MAIN_OPTIONS,
  ownOptionWords,
  type ParsedArgs,
  parseArgs,
  single,
  startArgv,
  subcommandArgv,
} from './args.ts';
import { reportError } from './error-report.ts';
import { commandWords, findCommand, GATEWAY_HELP, HELP, HELP_HELP, RUN_HELP, VERSION_HELP } from './help.ts';
import { closest } from './suggest.ts';

// Every command's module is imported when that command runs, not before: `--version`, `list` and
// `exec` then start without loading the Kubernetes client, the x509 stack, the OCI and rootfs code
// or the VMM backends, which only `verify`, a gateway and `run` use (see scripts/bench-startup.ts).

export async function main(argv: readonly string[]): Promise<number> {
  const own = ownWords(argv);
  const mode = { debug: own.includes('--debug'), json: own.includes('--json') };
  try {
    return await dispatch(argv);
  } catch (err) {
    return reportError(err, mode);
  }
}

type Command = (argv: readonly string[]) => Promise<number>;

/**
 * The commands with their own parser. `verb`: the command's first word is its subcommand
 * (`kernel check`), and its options follow that word.
 */
const SUBCOMMANDS: Readonly<Record<string, { readonly run: Command; readonly verb?: true }>> = {
  help: { run: async (a) => helpCommand(a) },
  version: { run: async (a) => versionCommand(a) },
  start: { run: (a) => startCommand(a, 'start') },
  create: { run: (a) => startCommand(a, 'create') },
  completion: { run: async (a) => (await import('./completion.ts')).completionCommand(a), verb: true },
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
  shell: { run: async (a) => (await import('./exec-into.ts')).shellCommand(a) },
  pool: { run: async (a) => (await import('./pool.ts')).poolCommand(a), verb: true },
};

function subcommandOf(word: string | undefined) {
  return word !== undefined && Object.hasOwn(SUBCOMMANDS, word) ? SUBCOMMANDS[word] : undefined;
}

/**
 * The words of argv that are openshell-vm's own options (not a guest command's): a subcommand's
 * up to `--`; the main form's up to `--` or the command after `run` (`run -- prog --json`).
 */
function ownWords(argv: readonly string[]): readonly string[] {
  if (subcommandOf(leadingGlobalFlags(argv).rest[0])) {
    const end = argv.indexOf('--');
    return end < 0 ? argv : argv.slice(0, end);
  }
  return ownOptionWords(argv, MAIN_OPTIONS, 'run');
}

async function dispatch(argv: readonly string[]): Promise<number> {
  const leading = leadingGlobalFlags(argv);
  const name = leading.rest[0];
  const sub = subcommandOf(name);
  if (sub) return sub.run(subcommandArgv(leading.flags, leading.rest.slice(1), sub.verb ?? false));
  if (name !== undefined && name !== 'run' && !name.startsWith('-')) throw unknownCommand(name, true);
  return mainForm(argv);
}

/**
 * An unknown command word: "did you mean" the closest command. `first`: it is argv's first word
 * other than global flags, so it can only have been meant as a command.
 */
function unknownCommand(word: string, first: boolean): UsageError {
  const meant = closest(word, commandWords());
  if (meant) {
    return new UsageError(`unknown command '${word}' (did you mean ${meant}?)`, {
      hint: `use: openshell-vm ${meant} ... (see openshell-vm help ${meant})`,
    });
  }
  const run = 'a command in a fresh microVM: openshell-vm run -- PATH [ARG...]';
  return first
    ? new UsageError(`unknown command '${word}'`, {
        hint: `see openshell-vm --help for the commands; ${run}`,
      })
    : new UsageError(`unexpected argument '${word}'`, {
        hint: `guest arguments go after --args (--exec /bin/echo --args hello), or use ${run}`,
      });
}

/** The bare command (the gateway in the foreground), `run` and the seed's `--exec` form. */
async function mainForm(argv: readonly string[]): Promise<number> {
  // `run` may come first or after options: `openshell-vm -q run -- PATH`.
  let args = parseArgs(argv, MAIN_OPTIONS, true);
  const isRun = args.rest[0] === 'run';
  if (isRun) {
    args = mergeArgs(args, parseArgs(args.rest.slice(1), MAIN_OPTIONS, true, 'run'));
  } else if (args.rest.length) {
    const word = args.rest[0] as string;
    if (findCommand(word)) {
      // `openshell-vm --name gw status`: only the global flags may come before a command's name.
      const before = argv.slice(0, argv.length - args.rest.length).join(' ');
      throw new UsageError(`'${before}' before '${word}': only global flags may come before a command`, {
        hint: `put the options after it: openshell-vm ${word} ${before}`,
      });
    }
    throw unknownCommand(word, false);
  }
  const exec = single(args, 'exec');
  if (args.flags.has('help')) return print(isRun || exec !== undefined ? RUN_HELP : HELP);
  if (args.flags.has('version')) return print(`openshell-vm ${packageVersion()}\n`);
  if (isRun) {
    refuse(args, GATEWAY_ONLY, (o) => [
      `--${o} is a gateway option; it does nothing with run`,
      `drop --${o}`,
    ]);
    if (args.values.has('exec') || args.values.has('args')) {
      throw new UsageError('run takes the command after its options, not --exec/--args', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    }
    if (!args.rest.length)
      throw new UsageError('run: no command given', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    return runCommand(args, args.rest[0] as string, args.rest.slice(1), argv);
  }
  if (exec === undefined) {
    refuse(args, EXEC_ONLY, (o) => [
      `--${o} needs --exec PATH (the gateway takes no command)`,
      'add --exec PATH to run a command, or drop it to boot the gateway',
    ]);
    return (await import('./gateway.ts')).gatewayCommand(args, argv);
  }
  refuse(args, GATEWAY_ONLY, (o) => [
    `--${o} is a gateway option; it does nothing with --exec`,
    `drop --${o}, or drop --exec to boot the gateway`,
  ]);
  return runCommand(args, exec, args.values.get('args') ?? [], argv);
}

/**
 * A run: on a VM of a matching warm pool when there is one (loading the pool client alone), else
 * booted cold by run.ts (the VMM backends, the guest build, the rootfs code).
 */
async function runCommand(
  args: ParsedArgs,
  exec: string,
  guestArgs: readonly string[],
  argv: readonly string[],
): Promise<number> {
  const { runPooled, runReporter } = await import('./run-options.ts');
  const reporter = runReporter(args);
  const pooled = await runPooled(args, exec, guestArgs, reporter);
  if (pooled !== undefined) return pooled;
  const { execCommand } = await import('./run.ts');
  return execCommand(reporter, args, exec, guestArgs, argv);
}

function refuse(
  args: ParsedArgs,
  names: readonly string[],
  why: (option: string) => [message: string, hint: string],
): void {
  for (const name of names) {
    if (args.values.has(name) || args.flags.has(name)) {
      const [message, hint] = why(name);
      throw new UsageError(message, { hint });
    }
  }
}

function mergeArgs(first: ParsedArgs, second: ParsedArgs): ParsedArgs {
  const values = new Map<string, readonly string[]>(first.values);
  for (const [name, list] of second.values) {
    if (values.has(name) && MAIN_OPTIONS.find((o) => o.name === name)?.kind === 'value') {
      throw new UsageError(`--${name} was given more than once`, { hint: 'give it once' });
    }
    values.set(name, [...(values.get(name) ?? []), ...list]);
  }
  return { values, flags: new Set([...first.flags, ...second.flags]), rest: second.rest };
}

/**
 * `start [NAME] [OPTIONS]` (and `create`): the gateway of instance NAME in the background, as
 * `openshell-vm --name NAME --detach [OPTIONS]`, returning at Ready. As with `limactl start` and
 * `colima start`, an instance that is already running is left as it is (exit 0); it is started
 * with the options given now (openshell-vm records no options of a stopped instance).
 */
async function startCommand(argv: readonly string[], word: string): Promise<number> {
  const usage = `use: openshell-vm ${word} [NAME] [OPTIONS] (see openshell-vm ${word} --help)`;
  if (argv.includes('--')) {
    throw new UsageError(`${word} boots the gateway and takes no command`, {
      hint: 'a command in the background: openshell-vm run --name NAME --detach -- CMD [ARG...]',
    });
  }
  const first = parseArgs(argv, MAIN_OPTIONS, true, word);
  const after = first.rest.length ? parseArgs(first.rest.slice(1), MAIN_OPTIONS, true, word) : undefined;
  if (after?.rest.length)
    throw new UsageError(`${word}: unexpected argument '${after.rest[0]}'`, { hint: usage });
  const args = after ? mergeArgs(first, after) : first;
  if (args.flags.has('help')) return print(GATEWAY_HELP);
  refuse(args, ['exec', ...EXEC_ONLY], (o) => [
    `--${o}: ${word} boots the gateway and takes no command`,
    'a command in the background: openshell-vm run --name NAME --detach -- CMD [ARG...]',
  ]);
  const positional = first.rest[0];
  const flag = single(args, 'name');
  if (positional !== undefined && flag !== undefined && positional !== flag) {
    throw new UsageError(`${word}: two names given ('${positional}' and --name ${flag})`, {
      hint: 'give one',
    });
  }
  const { parseInstanceName } = await import('../instance/runs.ts');
  const name = parseInstanceName(positional ?? flag);
  if (!args.flags.has('supervise') && (await reportRunning(name, args.flags.has('json')))) return 0;
  const nameAt = positional === undefined ? undefined : argv.length - first.rest.length;
  return mainForm(
    startArgv(argv, nameAt, name, { name: flag !== undefined, detach: args.flags.has('detach') }),
  );
}

/** Whether instance `name` is up already; if so says so (stdout: JSON with --json). */
async function reportRunning(name: string, json: boolean): Promise<boolean> {
  const { readEnvironment } = await import('../config/environment.ts');
  const { inspectInstance } = await import('../instance/lifecycle.ts');
  const status = await inspectInstance(readEnvironment(), name);
  if (!['running', 'degraded', 'starting'].includes(status.status) || !status.state) return false;
  const pid = status.state.supervisor.pid;
  if (json) {
    print(`${JSON.stringify({ name, status: status.status, pid, alreadyRunning: true })}\n`);
  } else {
    process.stderr.write(`openshell-vm: instance '${name}' is already ${status.status} (pid ${pid})\n`);
    print(
      `instance '${name}' is already ${status.status}: openshell-vm status ${name}; openshell-vm stop ${name} stops it\n`,
    );
  }
  return true;
}

/** `help [COMMAND]`: the overview, or COMMAND --help. */
async function helpCommand(argv: readonly string[]): Promise<number> {
  const words = argv.filter((w) => !w.startsWith('-'));
  if (argv.includes('--help') || argv.includes('-h')) return print(HELP_HELP);
  if (!words.length) return print(HELP);
  if (words.length > 1)
    throw new UsageError(`help: one command at a time ('${words.join(' ')}')`, {
      hint: 'use: openshell-vm help COMMAND',
    });
  const word = words[0] as string;
  if (word === 'run') return print(RUN_HELP);
  if (!findCommand(word)) throw unknownCommand(word, true);
  return dispatch([word, '--help']);
}

/** `version [--json]`: what --version prints, or {"version": ...}. */
function versionCommand(argv: readonly string[]): number {
  const args = parseArgs(argv, [{ name: 'json', kind: 'flag' }], false, 'version');
  if (args.flags.has('help')) return print(VERSION_HELP);
  const version = packageVersion();
  return print(args.flags.has('json') ? `${JSON.stringify({ version })}\n` : `openshell-vm ${version}\n`);
}

function print(text: string): number {
  process.stdout.write(text);
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
