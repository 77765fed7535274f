import type { AccelChoice } from '../accel/probe.ts';
import type { ExecRequest } from '../agent/protocol.ts';
import { AgentSession, type SessionIo } from '../agent/session.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { VmError } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import { terminalSafeLines } from '../host/terminal-text.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import { tailFile } from '../supervisor/wait.ts';
import type { NetworkSpec, RootMode, RunningVm, VmExit, VmmBackend, VmSpec } from '../vmm/backend.ts';
import type { RunPaths } from '../vmm/run-paths.ts';
import { everyStep, type SessionEvent, VmSession } from '../vmm/session.ts';
import { takeInstanceLock } from './lock.ts';
import { describeReap, reapStaleInstance } from './reap.ts';
import { createRun, finishRun, instanceDir } from './runs.ts';
import type { InstanceState } from './state.ts';
import { InstanceSupervisor, type SupervisorEvent } from './supervisor.ts';

/**
 * One lifecycle for every VM (`run` and the gateway are presets on top of it, src/presets/), in
 * one order: preflight → instance lock → reap what a dead supervisor left → run directory → state
 * file (the supervisor) → helpers + VMM (VmSession) → guest agent connected → the preset's
 * readiness → a handle. Whatever fails or is aborted on the way stops what was started, in the
 * reverse order, through the same path as the handle's stop(), and keeps the run's logs.
 * Nothing here knows what the VM is for: the presets add their steps through the hooks.
 */

/** What the lifecycle reports: the session's and the supervisor's events. */
export type InstanceEvent = SessionEvent | SupervisorEvent;

/** A VM to start: everything decided, nothing started. */
export interface InstanceSpec {
  readonly instance: string;
  readonly mode: InstanceState['mode'];
  /** Said to a second start while this one holds the instance's lock ("running a command"). */
  readonly purpose: string;
  readonly detached: boolean;
  readonly arch: GuestArch;
  readonly accel: AccelChoice;
  readonly vcpus: number;
  readonly memMib: number;
  readonly network: NetworkSpec['mode'];
  readonly forwards: readonly PortForward[];
  /** For the state file (`list` shows it). */
  readonly command?: readonly string[] | undefined;
  /** Deadline for the guest agent to connect; undefined: not waited for (the preset's readiness decides). */
  readonly agentTimeoutMs: number | undefined;
  /** Keep the run directory (logs) even when the instance ends well. */
  readonly keepLogs: boolean;
}

/** What the VMM boots, decided by the preset once the run directory exists. */
export interface BootSpec {
  readonly kernel: string;
  readonly initramfs: string;
  readonly rootDir: string;
  readonly rootMode: RootMode;
  /** rootMode 'disk': the root image (VmSpec.rootDisk). */
  readonly rootDisk?: VmSpec['rootDisk'];
  /** Resume this saved state instead of booting (VmSpec.restoreState). */
  readonly restoreState?: string | undefined;
  /** Extra kernel command-line words (QEMU); the init's mode follows the instance's mode. */
  readonly kernelArgs: readonly string[];
}

/** A preset's steps, each at its place in the one order. */
export interface PresetHooks {
  /** Before the lock: what can be checked or built without the instance (artifacts, a rootfs's location). */
  preflight?(): Promise<void>;
  /** With the lock held and a dead supervisor's leftovers reaped (a rootfs's boot preparation). */
  prepare?(): Promise<void>;
  /** In the run directory: what the VMM boots (a private root copy may be made there). */
  boot(run: RunPaths): Promise<BootSpec>;
  /** The VMM and its helpers run (the agent may not be there yet): start work that runs beside the boot. */
  started?(handle: InstanceHandle): void;
  /** After the agent connected: the preset's readiness; its endpoints go to the state file. */
  ready?(
    handle: InstanceHandle,
    signal: AbortSignal | undefined,
  ): Promise<InstanceState['endpoints'] | undefined>;
  /** The instance begins to stop (a stop, a failure or an abort; once). */
  stopping?(): void;
  /** After the VM and its helpers stopped, before the lock is released (also after a failure). */
  cleanup?(): Promise<void>;
}

export interface StartOptions {
  readonly backend: VmmBackend;
  readonly signal?: AbortSignal | undefined;
  readonly emit?: ((event: InstanceEvent) => void) | undefined;
}

export type StopOutcome = 'already' | 'clean' | 'forced' | 'no-agent' | 'killed';

export interface StopOptions {
  /** How long the guest gets to stop by itself after the agent asked it to (default 10 s). */
  readonly timeoutMs?: number | undefined;
  /** Aborted: the orderly stop is cut short, the VM killed. */
  readonly force?: AbortSignal | undefined;
  /** false: no orderly guest shutdown, the VM is killed at once (an abort, a failed start). */
  readonly orderly?: boolean | undefined;
  /** The instance failed: its run's logs are kept. */
  readonly failed?: boolean | undefined;
}

/** A console line in an error is cut here (the guest may write one line of any length). */
export const CONSOLE_LINE_MAX_CHARS = 400;
const CONSOLE_TAIL_LINES = 12;
const DEFAULT_STOP_MS = 10_000;

/**
 * The one place a VM's failure is put into words: the message, and a hint with the console's last
 * lines (guest text: made terminal-safe, each line cut) and where the logs are.
 */
export async function describeVmFailure(
  message: string,
  run: RunPaths,
  vm: RunningVm | undefined,
  cause?: unknown,
): Promise<VmError> {
  let vmmEnd = '';
  if (vm?.hasExited) {
    const exit = (await vm.exited).vmm;
    const tail = terminalSafeLines((await vm.vmmLogTail()).trim(), { maxChars: CONSOLE_LINE_MAX_CHARS });
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
    vmmEnd = ` (the VMM ${how})${tail ? `:\n    ${tail.replaceAll('\n', '\n    ')}` : ''}`;
  }
  const tail = terminalSafeLines((await tailFile(run.consoleLog, CONSOLE_TAIL_LINES)).trim(), {
    maxChars: CONSOLE_LINE_MAX_CHARS,
  });
  const lines = tail ? `last console lines:\n    ${tail.replaceAll('\n', '\n    ')}\n  ` : '';
  return new VmError(`${message}${vmmEnd}`, {
    hint: `${lines}see ${run.consoleLog} (logs in ${run.dir})`,
    cause,
  });
}

/** A running instance: its VM, the agent's sessions, and an ordered, idempotent stop. */
export class InstanceHandle {
  readonly instance: string;
  readonly run: RunPaths;
  readonly vm: RunningVm;
  readonly supervisor: InstanceSupervisor;
  /** performance.now() when the VMM was started. */
  readonly bootStartedAt: number;
  readonly #session: VmSession;
  readonly #teardown: (keepLogs: boolean) => Promise<void>;
  readonly #sayStopping: () => void;
  readonly #keepLogs: boolean;
  #stopping: Promise<StopOutcome> | undefined;

  constructor(
    instance: string,
    run: RunPaths,
    session: VmSession,
    supervisor: InstanceSupervisor,
    bootStartedAt: number,
    keepLogs: boolean,
    steps: { readonly stopping: () => void; readonly teardown: (keepLogs: boolean) => Promise<void> },
  ) {
    this.instance = instance;
    this.run = run;
    this.vm = session.vm;
    this.#session = session;
    this.supervisor = supervisor;
    this.bootStartedAt = bootStartedAt;
    this.#keepLogs = keepLogs;
    this.#teardown = steps.teardown;
    this.#sayStopping = steps.stopping;
  }

  /** Settles when the VMM has exited and its helpers are stopped. */
  get exited(): Promise<VmExit> {
    return this.vm.exited;
  }

  /** The state `status` reads (phase, processes, endpoints). */
  get state(): InstanceState {
    return this.supervisor.state;
  }

  /** Settles with the timeout (ms) when `openshell-vm stop` asks this instance to stop. */
  get stopRequested(): Promise<number> {
    return this.supervisor.stopRequested;
  }

  /** A command in the guest as an agent session (stdout/stderr apart, stdin passed through). */
  exec(request: ExecRequest, io: SessionIo): AgentSession {
    return AgentSession.start(this.supervisor.link, request, io);
  }

  /** This instance's failure, with the console tail and the log paths. */
  failure(message: string, cause?: unknown): Promise<VmError> {
    return describeVmFailure(message, this.run, this.vm, cause);
  }

  /**
   * Stops the instance in order: the agent asks the guest to stop, which gets `timeoutMs`; then
   * (or at once, unless orderly) the VM, virtiofsd, gvproxy; the state file; the preset's cleanup;
   * the run directory (kept on failure); the lock. Idempotent: a second call gets the first's outcome.
   */
  stop(options: StopOptions = {}): Promise<StopOutcome> {
    this.#stopping ??= (async () => {
      let how: StopOutcome = this.vm.hasExited ? 'already' : 'killed';
      this.#sayStopping();
      try {
        if (options.orderly !== false && !this.vm.hasExited) {
          how = await this.supervisor.shutdownGuest(
            this.#session,
            options.timeoutMs ?? DEFAULT_STOP_MS,
            options.force,
          );
        }
      } finally {
        await this.#teardown(Boolean(options.failed) || this.#keepLogs);
      }
      return how;
    })();
    return this.#stopping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/**
 * Starts an instance (see the order above) and returns its handle once the agent is connected and
 * the preset says it is ready; the state file then says 'running'. On any failure or abort,
 * everything started is stopped (the VM killed, not shut down) and the error, or the signal's
 * reason, is thrown.
 */
export async function startInstance(
  env: HostEnvironment,
  spec: InstanceSpec,
  hooks: PresetHooks,
  options: StartOptions,
): Promise<InstanceHandle> {
  const emit = options.emit ?? (() => undefined);
  const { signal } = options;
  await hooks.preflight?.();
  signal?.throwIfAborted();
  // One VM per instance at a time: a second start is refused at once, naming the holder.
  const release = await takeInstanceLock(instanceDir(env, spec.instance), spec.instance, spec.purpose);
  let run: RunPaths | undefined;
  let supervisor: InstanceSupervisor | undefined;
  let session: VmSession | undefined;
  let handle: InstanceHandle | undefined;
  let tornDown = false;
  let saidStopping = false;
  const sayStopping = () => {
    if (saidStopping) return;
    saidStopping = true;
    hooks.stopping?.();
  };
  // Every step runs whatever the one before did (a session whose close throws must not leave the
  // control socket and the state file); the first failure is thrown once the lock is released.
  const teardown = async (keepLogs: boolean) => {
    if (tornDown) return;
    tornDown = true;
    try {
      await everyStep([
        async () => sayStopping(),
        async () => session?.close(),
        async () => supervisor?.close(),
        async () => hooks.cleanup?.(),
        async () => {
          if (run) await finishRun(run, keepLogs);
        },
      ]);
    } finally {
      await release();
    }
  };
  try {
    const reaped = describeReap(await reapStaleInstance(env, spec.instance));
    if (reaped) emit({ type: 'warning', message: reaped });
    await hooks.prepare?.();
    signal?.throwIfAborted();
    run = await createRun(env, spec.instance);
    const boot = await hooks.boot(run);
    signal?.throwIfAborted();
    supervisor = await InstanceSupervisor.open(
      env,
      run,
      spec.instance,
      {
        mode: spec.mode,
        detached: spec.detached,
        backend: options.backend.name,
        vmmLog: options.backend.features.vmmLog,
        accel: spec.accel.accel,
        arch: spec.arch,
        vcpus: spec.vcpus,
        memMib: spec.memMib,
        forwards: spec.forwards.map(describeForward),
        command: spec.command,
      },
      emit,
    );
    const bootStartedAt = performance.now();
    session = await VmSession.start(
      env,
      run,
      {
        arch: spec.arch,
        accel: spec.accel,
        vcpus: spec.vcpus,
        memMib: spec.memMib,
        kernel: boot.kernel,
        initramfs: boot.initramfs,
        guestMode: spec.mode === 'gateway' ? 'gateway' : 'exec',
        kernelArgs: boot.kernelArgs,
        rootDir: boot.rootDir,
        rootMode: boot.rootMode,
        rootDisk: boot.rootDisk,
        restoreState: boot.restoreState,
        agentSocket: supervisor.agentSocket,
        network: spec.network,
        forwards: spec.forwards,
      },
      { backend: options.backend, signal, emit },
    );
    await supervisor.attach(session);
    handle = new InstanceHandle(spec.instance, run, session, supervisor, bootStartedAt, spec.keepLogs, {
      stopping: sayStopping,
      teardown,
    });
    hooks.started?.(handle);
    if (spec.agentTimeoutMs !== undefined) await waitAgent(handle, spec.agentTimeoutMs, signal);
    const endpoints = hooks.ready ? await hooks.ready(handle, signal) : undefined;
    signal?.throwIfAborted();
    await supervisor.ready(endpoints ?? {});
    return handle;
  } catch (err) {
    // The start's own failure (or the abort) is what the caller gets: the stop has run every
    // step, and a failure of one of them does not replace it.
    const stopped = handle ? handle.stop({ orderly: false, failed: true }) : teardown(true);
    await stopped.catch(() => undefined);
    if (signal?.aborted) throw signal.reason;
    throw err;
  }
}

/**
 * Waits for the guest agent's hello (the deadline), the VM's end or the abort, whichever comes
 * first; the VM ending or the deadline passing is the VM's failure, with its console.
 */
async function waitAgent(
  handle: InstanceHandle,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const outcome = await raceAbort(
    Promise.race([
      handle.supervisor.link.waitHello(timeoutMs).then((hello) => (hello ? 'connected' : 'timeout')),
      handle.vm.exited.then(() => 'exited' as const),
    ]),
    signal,
  );
  if (outcome === 'connected') return;
  throw await handle.failure(
    outcome === 'timeout'
      ? `the guest agent did not connect within ${timeoutMs / 1000} s`
      : 'the microVM ended before the guest agent connected',
  );
}

/** Waits for `promise`, or throws the signal's reason when it aborts first. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
