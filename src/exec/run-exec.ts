import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { AccelChoice } from '../accel/probe.ts';
import { AgentSession } from '../agent/session.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { VmError } from '../errors.ts';
import { ensureAgent, installAgent } from '../guest/agent-build.ts';
import { ensureGuestArtifacts, type GuestArtifacts } from '../guest/artifacts.ts';
import type { GuestArch } from '../host/arch.ts';
import { terminalSafeLines } from '../host/terminal-text.ts';
import { loadGuestInputs } from '../host/toolchain.ts';
import { takeInstanceLock } from '../instance/lock.ts';
import { describeReap, reapStaleInstance } from '../instance/reap.ts';
import { ensureRootLocation, refuseWritableRunRoot } from '../instance/root-location.ts';
import { createRun, finishRun, instanceDir, type RunPaths } from '../instance/runs.ts';
import { InstanceSupervisor } from '../instance/supervisor.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import { verifyRootfsForBoot } from '../rootfs/record.ts';
import type { ExitResult, PidRecord } from '../supervisor/process.ts';
import { tailFile } from '../supervisor/wait.ts';
import type { NetworkSpec, RunningVm, VmmBackend } from '../vmm/backend.ts';
import { VmSession } from '../vmm/session.ts';
import { agentRequest, type WorkloadRequest } from './request.ts';
import { attachTerminal, stdinIsTerminal, terminalSize } from './terminal.ts';

/** The progress message when the guest has started the command (a detached run is then up). */
export const COMMAND_STARTED = 'command started in the guest';

/** A validated exec run: everything decided, nothing started. */
export interface ExecPlan {
  readonly arch: GuestArch;
  readonly accel: AccelChoice;
  readonly vcpus: number;
  readonly memMib: number;
  readonly instance: string;
  readonly request: WorkloadRequest;
  /** Deadline for the guest agent to connect (boot + init). */
  readonly bootTimeoutMs: number;
  /** Keep the run directory (logs) even when the run succeeds. */
  readonly keepLogs: boolean;
  readonly network: NetworkSpec['mode'];
  /** Host-to-guest TCP forwards (validated, host ports checked free). */
  readonly forwards: readonly PortForward[];
  /** A prepared rootfs (verified against its build record before boot); default: the embedded one. */
  readonly rootfs?: string | undefined;
  /** Run by a detached supervisor (openshell-vm run --detach), for the state file. */
  readonly detached?: boolean | undefined;
}

export type ExecStage = 'artifacts' | 'boot' | 'network' | 'running' | 'done';

export type ExecEvent =
  | {
      readonly type: 'stage';
      readonly stage: ExecStage;
      readonly message: string;
      readonly elapsedMs: number;
    }
  | {
      readonly type: 'process';
      readonly action: 'started' | 'stopped';
      readonly process: PidRecord;
      readonly exit?: ExitResult | undefined;
      readonly elapsedMs: number;
    }
  | { readonly type: 'warning'; readonly message: string; readonly elapsedMs: number };

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export interface ExecResult {
  /** The command's exit code (128+N for signal N; 125/126/127 as in libkrun). */
  readonly exitCode: number;
  readonly reason: string;
  /** Always undefined: the guest agent says on the command's stderr why it could not run it. */
  readonly message: string | undefined;
  readonly timings: {
    readonly artifactsMs: number;
    readonly bootMs: number;
    readonly commandMs: number;
    readonly totalMs: number;
  };
}

/** The command's streams: stdin passed through (a terminal gets a pseudo-terminal in the guest). */
export interface ExecIo {
  readonly stdin?: Readable | undefined;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

export interface ExecOptions {
  readonly backend: VmmBackend;
  readonly signal?: AbortSignal | undefined;
  readonly onEvent?: ((event: ExecEvent) => void) | undefined;
  /** Clock for elapsed times (ms); defaults to time since process start. */
  readonly now?: (() => number) | undefined;
}

/**
 * Boots a microVM on the embedded default rootfs, runs one command in it and returns its exit
 * code. QEMU: the guest init only prepares the guest and keeps the agent running; the command is
 * an agent session (stdout and stderr to `io` as it runs, stdin passed through, a pseudo-terminal
 * when stdin is one), then the guest is shut down in order. Everything started here is stopped
 * and every socket removed before this returns or throws, including on abort.
 */
export async function runExec(
  env: HostEnvironment,
  plan: ExecPlan,
  io: ExecIo,
  options: ExecOptions,
): Promise<ExecResult> {
  const now = options.now ?? (() => performance.now());
  const emit = (event: DistributiveOmit<ExecEvent, 'elapsedMs'>) =>
    options.onEvent?.({ ...event, elapsedMs: Math.round(now()) } as ExecEvent);
  const t0 = now();
  // A prepared rootfs: only on a backend with a read-only lower layer, and only where no other
  // local user can reach it (booted from its real path).
  refuseWritableRunRoot(options.backend, plan.rootfs);
  if (plan.rootfs) plan = { ...plan, rootfs: await ensureRootLocation(plan.rootfs) };

  const guest = await loadGuestInputs(env, plan.arch);
  const artifacts = await ensureGuestArtifacts(env, guest);
  if (artifacts.rebuiltBecause)
    emit({ type: 'warning', message: `${artifacts.rebuiltBecause}: rebuilt them` });
  emit({
    type: 'stage',
    stage: 'artifacts',
    message: `guest artifacts ${artifacts.built ? 'built' : 'cached'} (${plan.arch}, kernel ${artifacts.kernelRelease})`,
  });
  const tArtifacts = now();

  // One VM per instance at a time: a second start is refused at once, naming the holder.
  const release = await takeInstanceLock(instanceDir(env, plan.instance), plan.instance, 'running a command');
  try {
    const reaped = describeReap(await reapStaleInstance(env, plan.instance));
    if (reaped) emit({ type: 'warning', message: reaped });
    return await runLocked(env, plan, io, options, artifacts, emit, now, t0, tArtifacts);
  } finally {
    await release();
  }
}

async function runLocked(
  env: HostEnvironment,
  plan: ExecPlan,
  io: ExecIo,
  options: ExecOptions,
  artifacts: GuestArtifacts,
  emit: (event: DistributiveOmit<ExecEvent, 'elapsedMs'>) => void,
  now: () => number,
  t0: number,
  tArtifacts: number,
): Promise<ExecResult> {
  // A prepared rootfs must be this tool's build: guest scripts and (QEMU) kernel modules.
  let rootDir = plan.rootfs ?? artifacts.rootfs;
  if (plan.rootfs) {
    const record = await verifyRootfsForBoot(plan.rootfs, {
      kernelRelease:
        options.backend.features.guestKernel === 'openshell' ? artifacts.kernelRelease : undefined,
    });
    await installAgent(plan.rootfs, await ensureAgent(env, plan.arch));
    emit({
      type: 'stage',
      stage: 'artifacts',
      message: `rootfs ${plan.rootfs} (${record.base.source}, built ${record.builtAt})`,
    });
  }

  const run = await createRun(env, plan.instance);
  // A writable overlay backend's private root copy lives here (0700, removed at the end).
  const share = path.join(run.dir, 'share');
  let session: VmSession | undefined;
  let supervisor: InstanceSupervisor | undefined;
  let failed = true;
  // QEMU: the guest agent runs the command (an agent session). libkrun: still the VMM's own
  // workload, ending with its exit status (issue 14: the agent there too is not done yet).
  const vmmRuns = options.backend.features.workload === 'vmm';
  try {
    // The default rootfs is shared by every run of every instance: a backend whose guest would
    // write into the directory itself (no read-only lower layer) boots a private copy of it.
    if (!plan.rootfs && options.backend.features.overlayRoot === 'writable') {
      await fs.mkdir(share, { mode: 0o700 });
      rootDir = await privateRootCopy(artifacts.rootfs, path.join(share, 'rootfs'));
    }

    supervisor = await InstanceSupervisor.open(
      env,
      run,
      plan.instance,
      {
        mode: 'run',
        detached: plan.detached ?? false,
        backend: options.backend.name,
        accel: plan.accel.accel,
        arch: plan.arch,
        vcpus: plan.vcpus,
        memMib: plan.memMib,
        forwards: plan.forwards.map(describeForward),
        command: [plan.request.exec, ...plan.request.args],
      },
      // A clock correction says the host slept or the guest drifted: worth a line even with -q.
      (e) =>
        emit(
          e.type === 'clock' || e.type === 'warning'
            ? { type: 'warning', message: e.message }
            : { type: 'stage', stage: 'boot', message: e.message },
        ),
    );
    const tBoot = now();
    session = await VmSession.start(
      env,
      run,
      {
        arch: plan.arch,
        accel: plan.accel,
        vcpus: plan.vcpus,
        memMib: plan.memMib,
        kernel: artifacts.kernel,
        initramfs: artifacts.initramfs,
        kernelArgs: ['ovm.mode=exec'],
        rootDir,
        rootMode: 'overlay',
        agentSocket: supervisor.agentSocket,
        workload: vmmRuns
          ? {
              path: plan.request.exec,
              args: plan.request.args,
              env: plan.request.env.map(([k, v]) => `${k}=${v}`),
              workdir: plan.request.workdir,
            }
          : undefined,
        network: plan.network,
        forwards: plan.forwards,
      },
      { backend: options.backend, signal: options.signal, emit },
    );
    const running = session.vm;
    await supervisor.attach(session);
    const stopping = session;
    const owner = supervisor;
    if (plan.forwards.length) {
      emit({ type: 'stage', stage: 'network', message: plan.forwards.map(describeForward).join(', ') });
    }

    let status: { code: number; tStarted: number };
    if (vmmRuns) {
      // openshell-vm stop: the agent stops the command (SIGTERM), libkrun ends with its status.
      void owner.stopRequested.then((ms) => owner.shutdownGuest(stopping, ms, options.signal));
      await owner.ready({}); // libkrun runs the command itself, as soon as it boots
      status = await waitVmmExit(running, options.signal, now);
    } else {
      await waitAgent(owner, running, run, plan.bootTimeoutMs, options.signal);
      const tStarted = now();
      await owner.ready({});
      emit({ type: 'stage', stage: 'running', message: COMMAND_STARTED });
      const code = await runAgentCommand(owner, running, run, plan.request, io, options.signal);
      // The command has ended: the agent asks PID 1 to end the guest in order.
      await owner.shutdownGuest(stopping, GUEST_SHUTDOWN_MS, options.signal);
      status = { code, tStarted };
    }
    const tDone = now();
    emit({ type: 'stage', stage: 'done', message: `command exited: exit code ${status.code}` });
    failed = status.code === 125;
    return {
      exitCode: status.code,
      reason: 'exited',
      message: undefined,
      timings: {
        artifactsMs: Math.round(tArtifacts - t0),
        bootMs: Math.round(status.tStarted - tBoot),
        commandMs: Math.round(tDone - status.tStarted),
        totalMs: Math.round(tDone - t0),
      },
    };
  } finally {
    await session?.close();
    await supervisor?.close();
    await fs.rm(share, { recursive: true, force: true });
    await finishRun(run, failed || plan.keepLogs);
  }
}

/** How long the guest gets to power off by itself once the command has ended. */
const GUEST_SHUTDOWN_MS = 10_000;

/**
 * Waits for the guest agent's hello (the boot deadline), the VM's end or the abort, whichever
 * comes first; the VM ending or the deadline passing is the VM's failure, with its console.
 */
async function waitAgent(
  owner: InstanceSupervisor,
  vm: RunningVm,
  run: RunPaths,
  bootTimeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const outcome = await raceAbort(
    Promise.race([
      owner.link.waitHello(bootTimeoutMs).then((hello) => (hello ? 'connected' : 'timeout')),
      vm.exited.then(() => 'exited' as const),
    ]),
    signal,
  );
  if (outcome === 'connected') return;
  if (outcome === 'timeout') {
    throw new VmError(`the guest agent did not connect within ${bootTimeoutMs / 1000} s`, {
      hint: await consoleHint(run),
    });
  }
  throw new VmError(`the microVM ended before the guest agent connected${await vmmEnd(vm)}`, {
    hint: await consoleHint(run),
  });
}

/**
 * The run's command as one agent session: its exit code as the agent reports it. `openshell-vm
 * stop` (detached runs) sends it SIGTERM, and SIGKILL when it is still running `ms` later.
 */
async function runAgentCommand(
  owner: InstanceSupervisor,
  vm: RunningVm,
  run: RunPaths,
  request: WorkloadRequest,
  io: ExecIo,
  signal: AbortSignal | undefined,
): Promise<number> {
  const tty = stdinIsTerminal(io);
  const command = AgentSession.start(owner.link, agentRequest(request, { tty, ...terminalSize(io) }), io);
  const restore = tty ? attachTerminal(io, (rows, cols) => command.resize(rows, cols)) : () => undefined;
  let killTimer: NodeJS.Timeout | undefined;
  void owner.stopRequested.then((ms) => {
    command.signal('TERM');
    killTimer = setTimeout(() => command.signal('KILL'), ms);
    killTimer.unref();
  });
  try {
    return await raceAbort(command.done, signal);
  } catch (err) {
    if (!(err instanceof VmError) || signal?.aborted) throw err;
    throw new VmError(`${err.message}${await vmmEnd(vm)}`, { hint: await consoleHint(run), cause: err });
  } finally {
    clearTimeout(killTimer);
    restore();
    command.close();
  }
}

/** How the VMM ended, with its own last lines, for an error; empty while it runs. */
async function vmmEnd(vm: RunningVm): Promise<string> {
  if (!vm.hasExited) return '';
  const exit = (await vm.exited).vmm;
  const vmmTail = terminalSafeLines((await vm.vmmLogTail()).trim(), { maxChars: CONSOLE_LINE_MAX_CHARS });
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
  return ` (the VMM ${how})${vmmTail ? `:\n    ${vmmTail.replaceAll('\n', '\n    ')}` : ''}`;
}

/**
 * A copy of the directory tree `source` at `dest` (modes, times and symlinks as they are, nothing
 * shared with the source: no hard links), for a guest that may write to its root.
 */
async function privateRootCopy(source: string, dest: string): Promise<string> {
  await fs.cp(source, dest, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  return dest;
}

/** libkrun: the VMM's own exit status is the command's (128+N when it dies of signal N). */
async function waitVmmExit(
  vm: RunningVm,
  signal: AbortSignal | undefined,
  now: () => number,
): Promise<{ code: number; tStarted: number }> {
  const tStarted = now();
  const { vmm } = await raceAbort(vm.exited, signal);
  const refused = await vm.setupError?.();
  if (refused) throw new VmError(`libkrun did not start the VM: ${refused}`);
  const code = vmm.signal ? 128 + (os.constants.signals[vmm.signal] ?? 0) : (vmm.exitCode ?? 125);
  return { code, tStarted };
}

/** A console line in an error is cut here (the guest may write one line of any length). */
const CONSOLE_LINE_MAX_CHARS = 400;

async function consoleHint(run: RunPaths): Promise<string> {
  const tail = terminalSafeLines(await tailFile(run.consoleLog, 8), { maxChars: CONSOLE_LINE_MAX_CHARS });
  const lines = tail ? `last console lines:\n    ${tail.replaceAll('\n', '\n    ')}\n  ` : '';
  return `${lines}see ${run.consoleLog}`;
}

/** Waits for `promise`, or throws the signal's reason when it aborts first. */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
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
