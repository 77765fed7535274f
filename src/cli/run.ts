import { prepareExec } from '../api/prepare.ts';
import { CLI_NAMES, type RawExecOptions } from '../options/exec-options.ts';
import { COMMAND_STARTED, runExec } from '../presets/run.ts';
import { type ParsedArgs, single } from './args.ts';
import { reportDetachedReady, runDetached } from './detach.ts';
import { Reporter } from './reporter.ts';
import { withSignals } from './signals.ts';

/**
 * `run -- PATH [ARG...]` and `--exec PATH [--args ...]`: boots a VM for one command (or, with
 * --detach, starts the background supervisor that does) and returns the command's exit code.
 * A client of the library's path (src/api/run.ts): the same preparation (prepareExec: the one
 * validator, the VMM choice, the port checks) and the same preset (runExec), with the terminal's
 * streams and the Reporter. Its own module so that the other commands do not load the VMM, the
 * guest build and the rootfs code (src/cli/main.ts imports it when a command runs).
 */
export async function execCommand(
  args: ParsedArgs,
  exec: string,
  guestArgs: readonly string[],
  argv: readonly string[],
  /** How many words at the end of argv are the guest's command (run's), kept whole by --detach. */
  guestWords: number,
): Promise<number> {
  const raw: RawExecOptions = {
    exec,
    args: guestArgs,
    env: args.values.get('env'),
    workdir: single(args, 'workdir'),
    vcpus: single(args, 'vcpus'),
    mem: single(args, 'mem'),
    arch: single(args, 'arch'),
    accel: single(args, 'accel'),
    bootTimeout: single(args, 'boot-timeout'),
    name: single(args, 'name'),
    ports: args.values.get('port'),
    net: single(args, 'net'),
    backend: single(args, 'backend'),
    rootfs: single(args, 'rootfs'),
    kernel: single(args, 'kernel'),
  };
  const reporter = new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
  // Everything that can fail without starting a process fails here, before anything starts.
  const { env, options, backend, accel } = await prepareExec(raw, CLI_NAMES, reporter);
  const supervise = args.flags.has('supervise');
  if (args.flags.has('detach') && !supervise) {
    return runDetached(env, options.instance, argv, reporter, args.flags.has('quiet'), guestWords);
  }

  return withSignals(reporter, 'stopping the microVM', async (signal) => {
    const result = await runExec(
      env,
      { ...options, accel, keepLogs: args.flags.has('keep-logs'), detached: supervise },
      { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
      {
        backend,
        signal,
        onEvent: (e) => {
          reporter.event(e);
          if (supervise && e.type === 'stage' && e.stage === 'running' && e.message === COMMAND_STARTED) {
            reportDetachedReady(
              `Started: '${[exec, ...guestArgs].join(' ')}' in instance '${options.instance}' (${backend.name}/${accel.accel}).\n` +
                `  output     openshell-vm logs ${options.instance} --source output\n` +
                `  exec       openshell-vm exec ${options.instance} -- sh\n` +
                `Running in the background: openshell-vm stop ${options.instance} stops it.\n`,
            );
          }
        },
      },
    );
    if (result.message) reporter.notice(result.message);
    reporter.event({
      type: 'result',
      exitCode: result.exitCode,
      reason: result.reason,
      timings: result.timings,
    });
    return result.exitCode;
  });
}
