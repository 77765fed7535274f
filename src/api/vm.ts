import type { InstanceHandle } from '../instance/start.ts';
import type { PortForward } from '../net/ports.ts';
import { startExecVm } from '../presets/run.ts';
import { eventSink } from './events.ts';
import { LIBRARY_NAMES, rawVmOptions, type VmEvent, type VmOptions } from './options.ts';
import { prepareVm } from './prepare.ts';
import { RunningInstance } from './running.ts';

/** How long stop() gives the guest to power off by itself before the VM is killed. */
const STOP_TIMEOUT_MS = 10_000;

export interface StopOptions {
  /** How long the guest gets to stop by itself (default 10 000 ms); then the VM is killed. */
  readonly timeoutMs?: number | undefined;
}

/**
 * Starts a microVM with the guest agent and no command of its own (as `run` boots one, on the
 * embedded default root or a prepared rootfs), supervised by this process, and returns its handle
 * once the agent is connected. It runs until stop() (or dispose: `await using vm = await
 * startVm()`), the signal's abort, `openshell-vm stop NAME`, or its own end. On a failure or an
 * abort, mid-boot too, everything started is stopped before this rejects.
 */
export async function startVm(options: VmOptions = {}): Promise<Vm> {
  options.signal?.throwIfAborted();
  const sink = eventSink<VmEvent>(options.onEvent);
  const prepared = await prepareVm(rawVmOptions(options), LIBRARY_NAMES, sink);
  const { handle } = await startExecVm(
    prepared.env,
    { ...prepared.options, accel: prepared.accel, keepLogs: options.keepLogs ?? false },
    { backend: prepared.backend, signal: options.signal, onEvent: sink.emit },
  );
  return new Vm(handle, prepared.options.forwards, options.signal);
}

/** A running microVM (startVm). */
export class Vm extends RunningInstance implements AsyncDisposable {
  #stopping: Promise<void> | undefined;
  readonly #signal: AbortSignal | undefined;
  // A stop nobody awaits (an abort, `openshell-vm stop`, the VM's own end) may fail too (a full
  // disk as the run directory is finished): its error is kept for stop() and dispose to throw,
  // never an unhandled rejection that would end the caller's process.
  readonly #onAbort = () => this.#endInBackground(false, false);

  constructor(handle: InstanceHandle, forwards: readonly PortForward[], signal: AbortSignal | undefined) {
    super(handle, forwards);
    this.#signal = signal;
    signal?.addEventListener('abort', this.#onAbort, { once: true });
    if (signal?.aborted) this.#onAbort();
    // `openshell-vm stop NAME` from elsewhere: an orderly stop with the timeout it asks for.
    void handle.stopRequested.then((ms) => this.#endInBackground(true, false, ms));
    // The VM ended by itself (the guest powered off, the VMM died): its helpers, state and lock go
    // too; its logs are kept.
    void handle.exited.then(() => this.#endInBackground(false, true));
  }

  /**
   * Stops the VM in order (the guest is asked to power off and gets `timeoutMs`, then the VM, its
   * helpers, the state file, the run directory and the lock). Idempotent: every call settles when
   * the first one's stop is done, and rejects with its failure, also when that stop began without
   * a call (the signal's abort, `openshell-vm stop`, the VM's own end).
   */
  stop(options: StopOptions = {}): Promise<void> {
    return this.#end(true, false, options.timeoutMs ?? STOP_TIMEOUT_MS);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  #endInBackground(orderly: boolean, failed: boolean, timeoutMs?: number): void {
    this.#end(orderly, failed, timeoutMs).catch(() => undefined);
  }

  /** The one stop: every caller gets its promise (a rejection included). */
  #end(orderly: boolean, failed: boolean, timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
    this.#stopping ??= (async () => {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      await this.handle.stop({ orderly, failed, timeoutMs });
    })();
    return this.#stopping;
  }
}
