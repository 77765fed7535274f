import * as v from 'valibot';
import { prepareExec } from '../api/prepare.ts';
import { HostError } from '../errors.ts';
import { describeIssues } from '../instance/schema.ts';
import { CLI_NAMES } from '../options/exec-options.ts';
import {
  COMMAND_STARTED,
  type ExecEvent,
  type PreparedGuest,
  prepareGuest,
  runExec,
} from '../presets/run.ts';
import type { ParsedArgs } from './args.ts';
import { receiveHandoff, reportDetachedReady, runDetached } from './detach.ts';
import type { Reporter } from './reporter.ts';
import { execRawOptions } from './run-options.ts';
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
  reporter: Reporter,
  args: ParsedArgs,
  exec: string,
  guestArgs: readonly string[],
  argv: readonly string[],
  /** How many words at the end of argv are the guest's command (run's), kept whole by --detach. */
  guestWords: number,
): Promise<number> {
  const raw = execRawOptions(args, exec, guestArgs);
  const supervise = args.flags.has('supervise');
  // Everything that can fail without starting a process fails here, before anything starts.
  const { env, options, backend, accel } = await prepareExec(raw, CLI_NAMES, reporter);
  if (args.flags.has('detach') && !supervise) {
    // The guest artifacts are prepared (checked, or built) here, and the supervisor is handed the
    // result: it stays resident for the instance's life, and would keep the memory that work took.
    const handoff = await withSignals(reporter, 'stopping before the instance starts', async (signal) => {
      const events: ExecEvent[] = [];
      const prepared = await prepareGuest(env, options, { backend, onEvent: (e) => events.push(e) });
      signal.throwIfAborted();
      return { prepared, events } satisfies Handoff;
    });
    return runDetached(env, options.instance, argv, reporter, args.flags.has('quiet'), {
      guestWords,
      handoff,
    });
  }
  const handoff = supervise ? parseHandoff(await receiveHandoff()) : undefined;
  // Said by the supervisor (its log is what the starting command shows, its events file is the one).
  for (const e of handoff?.events ?? []) reporter.event({ ...e, elapsedMs: Math.round(performance.now()) });

  return withSignals(reporter, 'stopping the microVM', async (signal) => {
    const result = await runExec(
      env,
      {
        ...options,
        accel,
        keepLogs: args.flags.has('keep-logs'),
        detached: supervise,
        prepared: handoff?.prepared,
      },
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

/** What a detached run's CLI hands its supervisor: the prepared guest and the progress it made. */
interface Handoff {
  readonly prepared: PreparedGuest;
  readonly events: readonly ExecEvent[];
}

const HANDOFF_SCHEMA = v.strictObject({
  prepared: v.strictObject({
    artifacts: v.strictObject({
      kernel: v.string(),
      initramfs: v.string(),
      rootfs: v.string(),
      modulesRelease: v.optional(v.string()),
    }),
    rootfs: v.optional(v.string()),
  }),
  events: v.array(
    v.variant('type', [
      v.strictObject({
        type: v.literal('stage'),
        stage: v.literal('artifacts'),
        message: v.string(),
        elapsedMs: v.number(),
      }),
      v.strictObject({ type: v.literal('warning'), message: v.string(), elapsedMs: v.number() }),
    ]),
  ),
});

/**
 * The handoff a detached supervisor received (receiveHandoff), checked; undefined when it was
 * started without one (then it prepares the guest itself). It comes from the CLI process of the
 * same user through a private socket pair: the check is against a mismatched build, not an attacker.
 */
export function parseHandoff(value: unknown): Handoff | undefined {
  if (value === undefined) return undefined;
  const result = v.safeParse(HANDOFF_SCHEMA, value);
  if (result.success) return result.output;
  throw new HostError(
    `the detached supervisor's handoff from its starting command is not what this version sends (${describeIssues(result.issues)})`,
    { hint: 'start the instance again with this openshell-vm (openshell-vm run --detach ...)' },
  );
}
