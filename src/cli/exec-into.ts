import path from 'node:path';
import { ExecSession } from '../agent/client.ts';
import { readEnvironment } from '../config/environment.ts';
import { HostError, UsageError } from '../errors.ts';
import { attachTerminal, terminalSize } from '../exec/terminal.ts';
import { pathExists } from '../host/fs.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { instanceDir, parseInstanceName } from '../instance/runs.ts';
import { type InstanceState, readState } from '../instance/state.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import { type OptionSpec, parseArgs, single } from './args.ts';
import { SHELL_HELP } from './help.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'name', kind: 'value' },
  { name: 'env', short: 'e', kind: 'value', repeatable: true },
  { name: 'workdir', short: 'w', kind: 'value' },
  { name: 'tty', short: 't', kind: 'flag' },
  { name: 'no-tty', short: 'T', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const EXEC_HELP = `Usage: openshell-vm exec [NAME] [OPTIONS] [-- CMD [ARG...]]

Runs a command in a running instance (gateway or detached run) through its guest agent.
stdout and stderr stream separately, stdin is passed through, and the exit code is the
command's (128+N for signal N; 127 not found, 126 not executable; 125 openshell-vm failed).
When stdin is a terminal the command gets a pseudo-terminal (raw mode, window-size changes
forwarded) and CMD defaults to sh. In a gateway, KUBECONFIG is set: exec -- kubectl get pods -A.

  --name NAME        the instance (or as the first word; default "default")
  --env, -e K=V      environment variable for the command (repeatable)
  --workdir, -w DIR  working directory in the guest (default /)
  --tty, -t          a pseudo-terminal even when stdin is not a terminal
  --no-tty, -T       no pseudo-terminal even when stdin is a terminal
`;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The login shell `shell` runs: POSIX sh, there in every rootfs openshell-vm builds. */
export const LOGIN_SHELL: readonly string[] = ['/bin/sh', '-l'];

/**
 * `shell [NAME] [OPTIONS]`: exec NAME -- /bin/sh -l (a pseudo-terminal when stdin is a terminal,
 * else the shell reads its commands from stdin).
 */
export async function shellCommand(argv: readonly string[]): Promise<number> {
  if (argv.includes('--')) {
    throw new UsageError('shell takes no command (it runs a login shell)', {
      hint: 'a command: openshell-vm exec NAME -- CMD [ARG...]',
    });
  }
  return execIntoCommand([...argv, '--', ...LOGIN_SHELL], 'shell');
}

export async function execIntoCommand(argv: readonly string[], command = 'exec'): Promise<number> {
  const split = argv.indexOf('--');
  const own = split < 0 ? argv : argv.slice(0, split);
  const guestCommand = split < 0 ? [] : argv.slice(split + 1);
  const args = parseArgs(own, OPTIONS, true, command);
  let rest = args.rest;
  let more = args;
  if (rest.length) {
    // Options may follow the name: exec gw --workdir /tmp -- ls
    more = parseArgs(rest.slice(1), OPTIONS, true, command);
    if (more.rest.length) {
      throw new UsageError(`${command}: unexpected argument '${more.rest[0]}'`, {
        hint:
          command === 'exec'
            ? 'the command goes after --: openshell-vm exec NAME -- CMD [ARG...]'
            : 'use: openshell-vm shell [NAME] [OPTIONS]; a command: openshell-vm exec NAME -- CMD [ARG...]',
      });
    }
    rest = rest.slice(0, 1);
  }
  const flag = (name: string) => args.flags.has(name) || more.flags.has(name);
  if (flag('help')) {
    process.stdout.write(command === 'exec' ? EXEC_HELP : SHELL_HELP);
    return 0;
  }
  const value = (name: string) => single(args, name) ?? single(more, name);
  const name = parseInstanceName(rest[0] ?? value('name'));
  const env = [...(args.values.get('env') ?? []), ...(more.values.get('env') ?? [])];
  for (const e of env) {
    const eq = e.indexOf('=');
    if (eq < 1 || !ENV_NAME.test(e.slice(0, eq))) {
      throw new UsageError(`--env: '${e}' is not NAME=VALUE`, {
        hint: 'use --env NAME=VALUE (NAME: letters, digits, _)',
      });
    }
  }
  if (flag('tty') && flag('no-tty'))
    throw new UsageError('--tty and --no-tty contradict each other', { hint: 'give one' });
  const stdinTty = Boolean(process.stdin.isTTY);
  const tty = flag('tty') || (!flag('no-tty') && stdinTty);
  const argvInGuest = guestCommand.length ? guestCommand : tty ? ['sh'] : [];
  if (!argvInGuest.length) {
    throw new UsageError('exec: no command given', {
      hint: `use: openshell-vm exec ${name} -- CMD [ARG...] (sh is the default only on a terminal)`,
    });
  }
  const workdir = value('workdir') ?? '/';
  if (!workdir.startsWith('/'))
    throw new UsageError(`--workdir: '${workdir}' is not an absolute path`, {
      hint: 'give a path that starts with /',
    });

  const dir = instanceDir(readEnvironment(), name);
  if (!(await pathExists(dir))) {
    throw new HostError(`there is no instance '${name}'`, {
      hint: `see: openshell-vm list; start one: openshell-vm start ${name} (a gateway) or openshell-vm run --name ${name} --detach -- CMD [ARG...]`,
    });
  }
  const state = await readState(dir);
  if (!state || !(await isSameProcess(state.supervisor.pid, state.supervisor.startTime))) {
    const hasRootfs = await pathExists(path.join(dir, 'rootfs', ROOTFS_PATHS.record));
    throw new HostError(`instance '${name}' is not running`, {
      hint: startHint(name, state, hasRootfs),
    });
  }
  if (state.phase === 'starting') {
    throw new HostError(`instance '${name}' is still starting`, {
      hint: 'wait until it is Ready, then try again',
    });
  }
  const io = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr };
  const term = process.env.TERM;
  const session = await ExecSession.start(
    state.control,
    name,
    {
      argv: argvInGuest,
      env: tty && term && !env.some((e) => e.startsWith('TERM=')) ? [`TERM=${term}`, ...env] : env,
      workdir,
      tty,
      ...terminalSize(io),
    },
    io,
  );
  // Raw mode and window-size changes while the guest command has a pseudo-terminal.
  const detachTerminal = tty
    ? attachTerminal(io, (rows, cols) => session.resize(rows, cols))
    : () => undefined;
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  const forward = (sig: NodeJS.Signals) => session.signal(sig.slice(3));
  for (const s of signals) process.on(s, forward);
  try {
    return await session.done;
  } finally {
    for (const s of signals) process.off(s, forward);
    detachTerminal();
    process.stdin.pause();
    process.stdin.destroy();
  }
}

/** A guest command word as a POSIX shell reads it back (quoted only when it must be). */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * How to start a stopped instance again so that exec reaches it, in the mode it last ran in: a
 * `run` again with its command (from a state file its supervisor left), the gateway again; with
 * no state left, what its directory allows (the gateway needs a built rootfs; a command does not).
 */
export function startHint(
  name: string,
  last: Pick<InstanceState, 'mode' | 'command'> | undefined,
  hasRootfs: boolean,
): string {
  const gateway = `openshell-vm start ${name}`;
  const run = (command: readonly string[] | undefined) =>
    `openshell-vm run --name ${name} --detach -- ${command?.length ? terminalSafeLine(command.map(shellWord).join(' '), { maxChars: 200 }) : 'CMD [ARG...]'}`;
  const list = 'or see: openshell-vm list';
  if (last?.mode === 'run') return `start its command again (${run(last.command)}), ${list}`;
  if (last?.mode === 'gateway') return `start the gateway again (${gateway}), ${list}`;
  if (hasRootfs) return `start the gateway (${gateway}) or a command (${run(undefined)}) in it, ${list}`;
  return `start a command in it (${run(undefined)}; the gateway needs a rootfs first: openshell-vm prepare-rootfs --name ${name}), ${list}`;
}
