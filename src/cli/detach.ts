import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { siblingModulePath } from '../host/module-path.ts';
import { readLockHolder } from '../instance/lock.ts';
import { instanceDir } from '../instance/runs.ts';
import { LOGS_DIR } from '../instance/state.ts';
import { followFile } from '../supervisor/follow.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import type { DetachMessage, HandoffMessage } from './detach-child.ts';
import type { Reporter } from './reporter.ts';
import { Interrupted, withSignals } from './signals.ts';

/** The hidden option a detached gateway's supervisor is started with (never typed by users; a run's has its own entry). */
export const SUPERVISE_FLAG = '--supervise';

/**
 * Node options of the detached supervisor, which stays resident for the instance's life and mostly
 * relays small agent frames: a 1 MiB young generation (V8 lets each semi-space grow to 16 MiB).
 * Measured with scripts/bench-startup.ts and a 3 MB stdin round trip through `exec -- cat`: ~30 MB
 * less RSS (116 -> 86 MB after start, 140 -> 94 MB after the round trip), the round trip no slower.
 * --max-opt=1 (baseline compilers only) and --optimize-for-size: ~11 MiB less again (74.8 -> 63 MiB
 * after execs), a 3 MB `exec -- cat` round trip no slower within noise. (--jitless would break type
 * stripping, which needs WebAssembly.) Options given to this process come after them, so they win.
 */
export const SUPERVISOR_NODE_OPTIONS: readonly string[] = [
  '--max-semi-space-size=1',
  '--max-opt=1',
  '--optimize-for-size',
];

/**
 * The CLI's entry module, which the supervisor runs: beside this one, with its extension (main.ts
 * in a checkout, main.js in the package). Not process.argv[1]: that is whatever program imported
 * the code (a user's, through the library), or a launcher.
 */
export const CLI_MAIN = siblingModulePath(import.meta.url, 'main');

/** openshell-vm's own option that --detach is (long and short). */
const DETACH_WORDS: ReadonlySet<string> = new Set(['--detach', '-d']);

/**
 * The argv a detached supervisor is started with: the starting command's, without openshell-vm's
 * own --detach (or -d). Only the options part is touched: the last `guestWords` words are the
 * guest's command (after `--`, or from the first word that is not an option) and are kept as they
 * are, a `--detach` among them included. In the options part every such word is the flag itself:
 * value options refuse our own options as values, and --args stops at them.
 */
export function supervisorArgv(argv: readonly string[], guestWords: number): string[] {
  const split = argv.length - Math.max(0, Math.min(guestWords, argv.length));
  return [...argv.slice(0, split).filter((word) => !DETACH_WORDS.has(word)), ...argv.slice(split)];
}

/**
 * The exit code for a supervisor that ended with `code` or by `signal` (as a child's 'exit'
 * event gives them): its own code, or 128+N for signal N, as a shell reports it. 125 (our own
 * failure) when it gives neither, or a signal this platform does not number.
 */
export function supervisorExitCode(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const number = signal ? os.constants.signals[signal] : undefined;
  return number ? 128 + number : 125;
}

export {
  type DetachMessage,
  type HandoffMessage,
  receiveHandoff,
  reportDetachedReady,
} from './detach-child.ts';

/**
 * `--detach`: starts this same command again as a background supervisor (its own session, no
 * terminal; stderr to logs/supervisor.log and, for run, the command's stdout to logs/output.log
 * in the instance directory), shows its progress from that log, and returns once it reports the
 * instance ready (the gateway answers; the command has started): exit 0 with its Ready text on
 * stdout. If it fails first, its error is shown and its exit code returned. Ctrl-C while waiting
 * stops it, and leaves nothing running. `guestWords`: how many words at the end of `argv` are the
 * guest's command (see supervisorArgv). `handoff` (JSON-serialisable), when given, is sent to the
 * supervisor as it starts (receiveHandoff): what this command prepared for it, so that the
 * long-lived supervisor does not load and run that code itself. `entry`, when given, is the
 * supervisor's own entry module, started with the instance's name alone (the handoff says the
 * rest, and `argv` is not passed on): a resident process that loads only what supervising needs,
 * not the CLI's parser, validators and VMM choice (src/cli/run-supervisor.ts). Without it the
 * supervisor is the CLI's main module with --supervise and `argv`.
 */
export async function runDetached(
  env: HostEnvironment,
  instance: string,
  argv: readonly string[],
  reporter: Reporter,
  quiet: boolean,
  more: { readonly guestWords?: number; readonly handoff?: unknown; readonly entry?: string } = {},
): Promise<number> {
  const { guestWords = 0, entry } = more;
  const dir = instanceDir(env, instance);
  const holder = await readLockHolder(dir);
  if (holder && (await isSameProcess(holder.pid, holder.startTime))) {
    throw new HostError(
      `instance '${instance}' is in use: openshell-vm (pid ${holder.pid}) is ${holder.purpose}`,
      {
        hint: `see: openshell-vm status ${instance}; stop it: openshell-vm stop ${instance}; or use another --name`,
      },
    );
  }
  const logs = path.join(dir, LOGS_DIR);
  fs.mkdirSync(logs, { recursive: true, mode: 0o700 });
  const supervisorLog = path.join(logs, 'supervisor.log');
  const err = fs.openSync(supervisorLog, 'w', 0o600);
  const out = fs.openSync(path.join(logs, 'output.log'), 'w', 0o600);
  const child = spawn(
    process.execPath,
    [
      ...SUPERVISOR_NODE_OPTIONS,
      ...process.execArgv,
      ...(entry ? [entry, instance] : [CLI_MAIN, SUPERVISE_FLAG, ...supervisorArgv(argv, guestWords)]),
    ],
    { detached: true, stdio: ['ignore', out, err, 'ipc'] },
  );
  fs.closeSync(err);
  fs.closeSync(out);
  if ('handoff' in more) {
    // A failure to send is the supervisor's early end, which 'exit' below reports.
    child.send({ type: 'handoff', value: more.handoff } satisfies HandoffMessage, () => undefined);
  }
  const stopFollow = followFile(supervisorLog, (line) => {
    if (!quiet || /error|hint|warning/.test(line)) process.stderr.write(`${line}\n`);
  });
  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => resolve(supervisorExitCode(code, signal)));
  });
  try {
    return await withSignals(reporter, 'stopping the detached instance', async (signal) => {
      const outcome = await new Promise<{ ready: string } | { code: number }>((resolve, reject) => {
        child.once('message', (m: DetachMessage) => {
          if (m?.type === 'ready') resolve({ ready: m.text });
        });
        void exited.then((code) => resolve({ code }));
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      });
      await stopFollow();
      if ('code' in outcome) return outcome.code;
      process.stdout.write(outcome.ready);
      if (child.connected) child.disconnect();
      child.unref();
      return 0;
    });
  } catch (error) {
    if (error instanceof Interrupted) {
      child.kill('SIGTERM');
      await exited;
      await stopFollow();
    }
    throw error;
  }
}
