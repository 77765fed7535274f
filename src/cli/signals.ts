import type { Reporter } from './reporter.ts';

/** Raised when a signal interrupts a command; the exit code is 128 + the signal number. */
export class Interrupted extends Error {
  override readonly name = 'Interrupted';
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
    this.signal = signal;
  }
}

const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * Runs `fn` with an AbortSignal that Ctrl-C, SIGTERM and SIGHUP abort (with Interrupted), saying
 * `what` once; `fn` is expected to clean up and reject, and the error boundary turns that into 128+N.
 * A second signal aborts `force`: an orderly stop in progress is cut short.
 */
export async function withSignals<T>(
  reporter: Reporter,
  what: string,
  fn: (signal: AbortSignal, force: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const force = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (!controller.signal.aborted) {
      reporter.notice(`${signal}: ${what}`);
      controller.abort(new Interrupted(signal));
    } else if (!force.signal.aborted) {
      reporter.notice(`${signal}: forcing it`);
      force.abort(new Interrupted(signal));
    }
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  try {
    return await fn(controller.signal, force.signal);
  } catch (err) {
    // Whatever a step threw while being torn down, the interruption is what happened.
    if (controller.signal.aborted) throw controller.signal.reason;
    throw err;
  } finally {
    for (const s of SIGNALS) process.off(s, onSignal);
  }
}
