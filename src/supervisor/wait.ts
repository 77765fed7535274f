import fs from 'node:fs/promises';

/** Why a wait ended without its condition becoming true. */
export type WaitFailure =
  | { readonly kind: 'timeout' }
  | { readonly kind: 'aborted'; readonly reason: unknown };

export interface PollOptions {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly initialIntervalMs?: number;
  readonly maxIntervalMs?: number;
  /** Injectable for tests. */
  readonly now?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/**
 * Polls `check` until it returns a value other than undefined, with a doubling interval, a
 * deadline and an abort signal. Resolves to the value, or to a WaitFailure.
 */
export async function poll<T>(
  check: () => Promise<T | undefined>,
  options: PollOptions,
): Promise<T | WaitFailure> {
  const now = options.now ?? (() => performance.now());
  const sleep = options.sleep ?? abortableSleep;
  const deadline = now() + options.timeoutMs;
  let interval = options.initialIntervalMs ?? 5;
  const maxInterval = options.maxIntervalMs ?? 100;
  for (;;) {
    if (options.signal?.aborted) return { kind: 'aborted', reason: options.signal.reason };
    const value = await check();
    if (value !== undefined) return value;
    const left = deadline - now();
    if (left <= 0) return { kind: 'timeout' };
    try {
      await sleep(Math.min(interval, left), options.signal);
    } catch {
      return { kind: 'aborted', reason: options.signal?.reason };
    }
    interval = Math.min(interval * 2, maxInterval);
  }
}

export function isWaitFailure(value: unknown): value is WaitFailure {
  return (
    typeof value === 'object' &&
    value !== null &&
    'kind' in value &&
    ((value as WaitFailure).kind === 'timeout' || (value as WaitFailure).kind === 'aborted')
  );
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export async function isSocket(file: string): Promise<boolean> {
  try {
    return (await fs.stat(file)).isSocket();
  } catch {
    return false;
  }
}

/** The last `lines` lines of a text file ('' when it does not exist). Reads at most 64 KiB. */
export async function tailFile(file: string, lines: number): Promise<string> {
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(file, 'r');
    const { size } = await handle.stat();
    const length = Math.min(size, 64 * 1024);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString('utf8').split('\n').filter(Boolean).slice(-lines).join('\n');
  } catch {
    return '';
  } finally {
    await handle?.close();
  }
}
