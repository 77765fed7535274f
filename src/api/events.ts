import type { ProgressEvent } from './options.ts';
import type { ProgressSink } from './vmm-choice.ts';

/** The process warning's name when the caller's onEvent throws (process.on('warning') sees it). */
export const ON_EVENT_WARNING = 'OpenShellVmWarning';

/**
 * The library's progress: every message and record as one event to the caller's onEvent (nothing
 * is printed), with the time since this process started, as the CLI's --events file has it.
 *
 * The callback is the caller's code, called from inside the lifecycle: a throw (or an async
 * callback's rejection) must not break a start or skip a cleanup. It is caught here; the first one
 * is reported as a process warning (with the error as its cause), later ones are not, and every
 * event is still delivered.
 */
export function eventSink<E extends { readonly type: string }>(
  onEvent: ((event: E | ProgressEvent) => unknown) | undefined,
): ProgressSink & { readonly emit: (event: E) => void } {
  const elapsedMs = () => Math.round(performance.now());
  let reported = false;
  const report = (event: { readonly type: string }, err: unknown) => {
    if (reported) return;
    reported = true;
    const warning = new Error(
      `onEvent threw on a '${event.type}' event (${err instanceof Error ? err.message : String(err)}); openshell-vm went on without it (later throws are not reported)`,
      { cause: err },
    );
    warning.name = ON_EVENT_WARNING;
    process.emitWarning(warning);
  };
  const send = (event: E | ProgressEvent) => {
    if (!onEvent) return;
    try {
      const returned = onEvent(event);
      if (returned instanceof Promise) returned.catch((err: unknown) => report(event, err));
    } catch (err) {
      report(event, err);
    }
  };
  return {
    progress: (message) => send({ type: 'progress', message, elapsedMs: elapsedMs() }),
    warn: (message) => send({ type: 'warning', message, elapsedMs: elapsedMs() } as unknown as E),
    event: (event) => send(event as unknown as E),
    emit: (event) => send(event),
  };
}
