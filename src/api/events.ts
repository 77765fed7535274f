import type { ProgressEvent } from './options.ts';
import type { ProgressSink } from './vmm-choice.ts';

/**
 * The library's progress: every message and record as one event to the caller's onEvent (nothing
 * is printed), with the time since this process started, as the CLI's --events file has it.
 */
export function eventSink<E extends { readonly type: string }>(
  onEvent: ((event: E | ProgressEvent) => void) | undefined,
): ProgressSink & { readonly emit: (event: E) => void } {
  const elapsedMs = () => Math.round(performance.now());
  const send = (event: E | ProgressEvent) => onEvent?.(event);
  return {
    progress: (message) => send({ type: 'progress', message, elapsedMs: elapsedMs() }),
    warn: (message) => send({ type: 'warning', message, elapsedMs: elapsedMs() } as unknown as E),
    event: (event) => send(event as unknown as E),
    emit: (event) => send(event),
  };
}
