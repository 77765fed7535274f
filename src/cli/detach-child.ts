import { HostError } from '../errors.ts';

/**
 * The detached supervisor's side of `--detach` (runDetached in detach.ts is the starting command's):
 * what it is handed as it starts, and the message that lets its starter go. Its own module, so that
 * the resident supervisor loads neither the starter's code nor the log follower.
 */

/** What a detached supervisor tells the command that started it. */
export type DetachMessage = { readonly type: 'ready'; readonly text: string };

/** What the starting command sends a detached supervisor first: what it prepared for it (runDetached). */
export type HandoffMessage = { readonly type: 'handoff'; readonly value: unknown };

/** How long a detached supervisor waits for its starting command's handoff (sent as it starts). */
const HANDOFF_TIMEOUT_MS = 30_000;

/**
 * In a detached supervisor: the value its starting command handed over (runDetached's `handoff`),
 * as it came through the IPC channel (JSON: to be validated by the caller). Undefined when this
 * process has no such channel (`--supervise` started by hand). A starting command that goes away
 * or sends nothing within 30 s is a HostError.
 */
export function receiveHandoff(): Promise<unknown> {
  if (!process.send) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
    };
    const onMessage = (m: HandoffMessage) => {
      if (m?.type !== 'handoff') return;
      done();
      resolve(m.value);
    };
    const fail = (why: string) => {
      done();
      reject(
        new HostError(`the detached supervisor got nothing from the command that started it: ${why}`, {
          hint: 'start the instance again (openshell-vm run --detach ...)',
        }),
      );
    };
    const onDisconnect = () => fail('it went away');
    const timer = setTimeout(() => fail(`nothing within ${HANDOFF_TIMEOUT_MS / 1000} s`), HANDOFF_TIMEOUT_MS);
    process.on('message', onMessage);
    process.once('disconnect', onDisconnect);
  });
}

/** In a detached supervisor: tells the starting command that the instance is up, then lets it go. */
export function reportDetachedReady(text: string): void {
  if (!process.send) return;
  process.send({ type: 'ready', text } satisfies DetachMessage, () => {
    if (process.connected) process.disconnect();
  });
}
