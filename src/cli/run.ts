import fs from 'node:fs';
import type { AccelChoice } from '../accel/probe.ts';
import { prepareExec } from '../api/prepare.ts';
import { UsageError } from '../errors.ts';
import { siblingModulePath } from '../host/module-path.ts';
import { CLI_NAMES, type ExecOptions } from '../options/exec-options.ts';
import { type ExecEvent, type ExecPlan, prepareGuest } from '../presets/run.ts';
import { isBackendName } from '../vmm/load-backend.ts';
import { type ParsedArgs, single } from './args.ts';
import { runDetached } from './detach.ts';
import type { Reporter } from './reporter.ts';
import { RUN_HANDOFF_FORMAT, type RunHandoff, runHandoffBuild } from './run-handoff.ts';
import { runHere } from './run-here.ts';
import { execRawOptions } from './run-options.ts';
import { withSignals } from './signals.ts';

/** The resident entry point of a detached run (beside this module, .ts or .js as this one). */
export const RUN_SUPERVISOR = siblingModulePath(import.meta.url, 'run-supervisor');

/**
 * `run -- PATH [ARG...]` and `--exec PATH [--args ...]`: boots a VM for one command (or, with
 * --detach, starts the background supervisor that does) and returns the command's exit code.
 * A client of the library's path (src/api/run.ts): the same preparation (prepareExec: the one
 * validator, the VMM choice, the port checks) and the same preset (runExec), with the terminal's
 * streams and the Reporter. Its own module so that the other commands do not load the VMM, the
 * guest build and the rootfs code (src/cli/main.ts imports it when a command runs).
 */
export async function execCommand(
  reporter: Reporter,
  args: ParsedArgs,
  exec: string,
  guestArgs: readonly string[],
  argv: readonly string[],
): Promise<number> {
  if (args.flags.has('supervise')) {
    throw new UsageError('run --supervise is not an option of run', {
      hint: 'run in the background: openshell-vm run --name NAME --detach -- PATH [ARG...]',
    });
  }
  const raw = execRawOptions(args, exec, guestArgs);
  // Everything that can fail without starting a process fails here, before anything starts.
  const { env, options, backend, accel } = await prepareExec(raw, CLI_NAMES, reporter);
  const keepLogs = args.flags.has('keep-logs');
  if (!args.flags.has('detach')) return runHere(reporter, env, execPlan(options, accel, keepLogs), backend);

  // Detached: the guest artifacts are prepared (checked, or built) here, and the supervisor, which
  // stays resident for the instance's life, is handed the whole run (src/cli/run-supervisor.ts):
  // it would keep the memory this work and its modules took.
  if (!isBackendName(backend.name)) throw new Error(`unknown VMM backend '${backend.name}'`);
  const backendName = backend.name;
  const handoff = await withSignals(reporter, 'stopping before the instance starts', async (signal) => {
    const events: ExecEvent[] = [];
    const prepared = await prepareGuest(env, options, { backend, onEvent: (e) => events.push(e) });
    signal.throwIfAborted();
    // The supervisor appends to the events file after what this command wrote there; that needs
    // a regular file (a FIFO, a terminal or /dev/stdout would block the read, or be its own log).
    const givenEvents = single(args, 'events');
    const regular =
      givenEvents !== undefined && fs.statSync(givenEvents, { throwIfNoEntry: false })?.isFile();
    if (givenEvents !== undefined && !regular) {
      reporter.warn(
        `--events ${givenEvents} is not a regular file: the background supervisor's events are not written to it (give a file path)`,
      );
    }
    const eventsFile = regular ? givenEvents : undefined;
    return {
      format: RUN_HANDOFF_FORMAT,
      build: runHandoffBuild(),
      backend: backendName,
      plan: { ...execPlan(options, accel, keepLogs), detached: true, prepared },
      events,
      reporter: {
        quiet: args.flags.has('quiet'),
        debug: args.flags.has('debug'),
        eventsFile,
        recorded: eventsFile === undefined ? '' : fs.readFileSync(eventsFile, 'utf8'),
      },
      readyText:
        `Started: '${[exec, ...guestArgs].join(' ')}' in instance '${options.instance}' (${backend.name}/${accel.accel}).\n` +
        `  output     openshell-vm logs ${options.instance} --source output\n` +
        `  exec       openshell-vm exec ${options.instance} -- sh\n` +
        `Running in the background: openshell-vm stop ${options.instance} stops it.\n`,
    } satisfies RunHandoff;
  });
  // Checked in full here, as the IPC channel will carry it (JSON): the supervisor checks only the
  // format and the build (acceptRunHandoff), and loads no validator.
  const { parseRunHandoff } = await import('./run-handoff-schema.ts');
  parseRunHandoff(JSON.parse(JSON.stringify(handoff)));
  return runDetached(env, options.instance, argv, reporter, args.flags.has('quiet'), {
    handoff,
    entry: RUN_SUPERVISOR,
  });
}

/** The run runExec takes, from the validated options and the chosen accelerator. */
function execPlan(options: ExecOptions, accel: AccelChoice, keepLogs: boolean): ExecPlan {
  return {
    arch: options.arch,
    accel,
    vcpus: options.vcpus,
    memMib: options.memMib,
    instance: options.instance,
    bootTimeoutMs: options.bootTimeoutMs,
    keepLogs,
    network: options.network,
    forwards: options.forwards,
    rootfs: options.rootfs,
    kernel: options.kernel,
    request: options.request,
  };
}
