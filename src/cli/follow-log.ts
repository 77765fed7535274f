import type { Writable } from 'node:stream';
import { isErrno } from '../errors.ts';
import { followFile } from '../supervisor/follow.ts';

export interface FollowLogOptions {
  readonly file: string;
  readonly out: Writable;
  /** false once the instance has ended (its log is then complete); a rejection ends the follow with that error. */
  readonly isRunning: () => Promise<boolean>;
  /** Ctrl-C: following ends, normally. */
  readonly signal: AbortSignal;
  readonly intervalMs?: number;
  readonly checkMs?: number;
}

/**
 * `logs --follow`: writes each line `file` gets to `out` until the signal aborts (Ctrl-C), the
 * instance ends (what is left is written first), or the reader goes away (EPIPE on `out`, as in
 * `logs -f | head`). Those are the expected ends; every other error (the state check's, `out`'s)
 * rejects, for the error boundary to report.
 */
export async function followLog(options: FollowLogOptions): Promise<void> {
  const { out, signal } = options;
  let readerGone = false;
  let settle: ((err?: unknown) => void) | undefined;
  // Attached until the last lines are written: an error event with no listener would crash.
  const onOutError = (err: unknown) => {
    if (isErrno(err, 'EPIPE')) readerGone = true;
    settle?.(readerGone ? undefined : err);
  };
  out.on('error', onOutError);
  const stop = followFile(
    options.file,
    (line) => {
      if (!readerGone) out.write(`${line}\n`);
    },
    { intervalMs: options.intervalMs ?? 200 },
  );
  try {
    await new Promise<void>((resolve, reject) => {
      let checking = false;
      const timer = setInterval(() => {
        if (checking) return;
        checking = true;
        options.isRunning().then(
          (running) => {
            checking = false;
            if (!running) settle?.();
          },
          (err: unknown) => settle?.(err ?? new Error('the instance check failed')),
        );
      }, options.checkMs ?? 1_000);
      const onAbort = () => settle?.();
      settle = (err?: unknown) => {
        settle = undefined;
        clearInterval(timer);
        signal.removeEventListener('abort', onAbort);
        if (err === undefined) resolve();
        else reject(err);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      if (signal.aborted) onAbort();
    });
  } finally {
    await stop();
    out.off('error', onOutError);
  }
}
