import os from 'node:os';
import { explainHostCondition, OvmError, UsageError } from '../errors.ts';
import { Interrupted } from './signals.ts';

/**
 * The error boundary's words: how an error is put on stderr (and, with --json, stdout) and which
 * exit code it gives; main.ts's boundary and the processes that do not run main.ts (a detached
 * run's supervisor, src/cli/run-supervisor.ts) report through it alike.
 */

/** The only place that decides exit codes for openshell-vm's own failures. */
export const EXIT = { usage: 2, failure: 125 } as const;

/** How the error boundary reports: --debug adds the cause chain, --json puts the error on stdout. */
export interface ErrorMode {
  readonly debug: boolean;
  readonly json: boolean;
}

/** An error as the user sees it: its lines for stderr, and the exit code. */
interface Report {
  readonly code: number;
  readonly message?: string;
  readonly hint?: string | undefined;
  readonly causes: string[];
}

function describeError(err: unknown, debug: boolean): Report {
  if (err instanceof Interrupted) {
    // withSignals has said which signal stops what; the exit code is the shell's 128+N.
    return { code: 128 + (os.constants.signals[err.signal] ?? 0), causes: [] };
  }
  // A full disk (or a quota, a read-only filesystem, a denied path) somewhere below: say so, with the fix.
  const condition = explainHostCondition(err);
  if (condition && !(err instanceof OvmError)) return describeError(condition, debug);
  if (err instanceof OvmError) {
    const causes: string[] = [];
    if (debug) {
      for (let cause = err.cause; cause; cause = (cause as Error).cause) {
        causes.push(cause instanceof Error ? (cause.stack ?? cause.message) : String(cause));
      }
    }
    return {
      code: err instanceof UsageError ? EXIT.usage : EXIT.failure,
      message: err.message,
      hint: err.hint ?? (condition ? `${condition.message}: ${condition.hint}` : undefined),
      causes,
    };
  }
  return {
    code: EXIT.failure,
    message: `internal error: ${err instanceof Error ? err.message : String(err)}`,
    hint: debug ? undefined : 'run again with --debug for details, and report it',
    causes: debug && err instanceof Error && err.stack ? [err.stack] : [],
  };
}

/**
 * The error boundary: the error on stderr (message, hint, with --debug the cause chain) and, with
 * --json, as {"error":{"message","hint"}} on stdout too. The exit code is the same either way.
 */
export function reportError(err: unknown, mode: ErrorMode): number {
  const r = describeError(err, mode.debug);
  const write = (line: string) => process.stderr.write(`${line}\n`);
  if (r.message !== undefined) {
    const internal = r.message.startsWith('internal error: ');
    write(`openshell-vm: ${internal ? '' : 'error: '}${r.message}`);
    if (r.hint) write(`  hint: ${r.hint}`);
    for (const cause of r.causes) write(internal ? cause : `  caused by: ${cause}`);
  }
  if (mode.json) {
    const message = r.message ?? (err instanceof Error ? err.message : String(err));
    const error = {
      message,
      ...(r.hint ? { hint: r.hint } : {}),
      ...(r.causes.length ? { causes: r.causes } : {}),
    };
    process.stdout.write(`${JSON.stringify({ error })}\n`);
  }
  return r.code;
}
