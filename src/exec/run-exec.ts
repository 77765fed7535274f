import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Writable } from 'node:stream';
import type { AccelChoice } from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, VmError } from '../errors.ts';
import { ensureAgent, installAgent } from '../guest/agent-build.ts';
import { ensureGuestArtifacts, type GuestArtifacts } from '../guest/artifacts.ts';
import type { GuestArch } from '../host/arch.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { terminalSafeLines } from '../host/terminal-text.ts';
import { loadGuestInputs } from '../host/toolchain.ts';
import { takeInstanceLock } from '../instance/lock.ts';
import { describeReap, reapStaleInstance } from '../instance/reap.ts';
import { ensureRootLocation, refuseWritableRunRoot } from '../instance/root-location.ts';
import { createRun, finishRun, instanceDir, RUN_FILES, type RunPaths } from '../instance/runs.ts';
import { InstanceSupervisor } from '../instance/supervisor.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import { verifyRootfsForBoot } from '../rootfs/record.ts';
import type { ExitResult, PidRecord } from '../supervisor/process.ts';
import { isWaitFailure, poll, tailFile } from '../supervisor/wait.ts';
import type { NetworkSpec, RunningVm, VmmBackend } from '../vmm/backend.ts';
import { VmSession } from '../vmm/session.ts';
import { OutputSink } from './output.ts';
import {
  describeStatus,
  type GuestStatus,
  parseStatus,
  renderRequestScript,
  type WorkloadRequest,
} from './request.ts';

/** Names of the virtio-serial ports the guest init writes the command's output to. */
export const OUTPUT_PORTS = { stdout: 'org.openshell.stdout', stderr: 'org.openshell.stderr' } as const;

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
  /** Deadline for the guest to start the command (boot + init). */
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
  /** Set when the guest did not run the command as asked (not found, not executable, init failure). */
  readonly message: string | undefined;
  readonly timings: {
    readonly artifactsMs: number;
    readonly bootMs: number;
    readonly commandMs: number;
    readonly totalMs: number;
  };
  readonly outputBytes: { readonly stdout: number; readonly stderr: number };
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
 * code. The command's stdout and stderr stream to `io` as it runs. Everything started here is
 * stopped and every socket removed before this returns or throws, including on abort.
 */
export async function runExec(
  env: HostEnvironment,
  plan: ExecPlan,
  io: { readonly stdout: Writable; readonly stderr: Writable },
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
  io: { readonly stdout: Writable; readonly stderr: Writable },
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
  // The guest's only writable place on the host: <run>/share/handoff, seen in the guest as
  // /.ovm/run (the rest of the root is read-only to virtiofsd). `share` stays 0700 and out of the
  // guest's reach, whatever modes the guest sets on the handoff directory.
  const share = path.join(run.dir, 'share');
  const handoffDir = path.join(share, 'handoff');
  const handoff = path.join(handoffDir, run.id);
  let session: VmSession | undefined;
  let supervisor: InstanceSupervisor | undefined;
  let sinks: OutputSink[] = [];
  let failed = true;
  // QEMU: openshell-vm's guest init runs the command (request and status through the shared
  // root, output through virtio-serial ports). libkrun: the VMM runs it and exits with its status.
  const vmmRuns = options.backend.features.workload === 'vmm';
  try {
    // The default rootfs is shared by every run of every instance: a backend whose guest would
    // write into the directory itself (no read-only lower layer) boots a private copy of it.
    if (!plan.rootfs && options.backend.features.overlayRoot === 'writable') {
      await fs.mkdir(share, { mode: 0o700 });
      rootDir = await privateRootCopy(artifacts.rootfs, path.join(share, 'rootfs'));
    }
    let stdoutSink: OutputSink | undefined;
    let stderrSink: OutputSink | undefined;
    if (!vmmRuns) {
      await fs.mkdir(share, { recursive: true, mode: 0o700 });
      await fs.mkdir(handoffDir, { mode: 0o700 });
      await fs.mkdir(handoff, { mode: 0o700 });
      await fs.writeFile(path.join(handoff, 'request.sh'), renderRequestScript(plan.request), {
        mode: 0o600,
        flag: 'wx',
      });
      stdoutSink = await OutputSink.listen(path.join(run.socketDir, RUN_FILES.stdoutSocket), io.stdout);
      stderrSink = await OutputSink.listen(path.join(run.socketDir, RUN_FILES.stderrSocket), io.stderr);
      sinks = [stdoutSink, stderrSink];
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
        kernelArgs: ['ovm.mode=exec', `ovm.run=${run.id}`],
        rootDir,
        rootMode: 'overlay',
        handoffDir,
        ports:
          stdoutSink && stderrSink
            ? [
                { name: OUTPUT_PORTS.stdout, socketPath: stdoutSink.socketPath },
                { name: OUTPUT_PORTS.stderr, socketPath: stderrSink.socketPath },
              ]
            : [],
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
    // openshell-vm stop: the guest init stops the command (SIGTERM) and reports its status.
    const stopping = session;
    const owner = supervisor;
    void supervisor.stopRequested.then((ms) => owner.shutdownGuest(stopping, ms, options.signal));
    if (plan.forwards.length) {
      emit({ type: 'stage', stage: 'network', message: plan.forwards.map(describeForward).join(', ') });
    }

    if (vmmRuns) await owner.ready({}); // libkrun runs the command itself, as soon as it boots
    const { status, tStarted } = vmmRuns
      ? await waitVmmExit(running, options.signal, now)
      : await waitGuestInit(
          running,
          { dir: handoffDir, id: run.id },
          run,
          plan.bootTimeoutMs,
          options.signal,
          now,
          emit,
          () => owner.ready({}),
        );
    await Promise.all(sinks.map((s) => s.drained(2_000)));
    const tDone = now();
    const message = describeStatus(status, plan.request);
    emit({ type: 'stage', stage: 'done', message: `command ${status.reason}: exit code ${status.code}` });
    failed = status.code === 125 && status.reason !== 'exited';
    return {
      exitCode: status.code,
      reason: status.reason,
      message,
      timings: {
        artifactsMs: Math.round(tArtifacts - t0),
        bootMs: Math.round(tStarted - tBoot),
        commandMs: Math.round(tDone - tStarted),
        totalMs: Math.round(tDone - t0),
      },
      outputBytes: { stdout: stdoutSink?.bytes.count ?? 0, stderr: stderrSink?.bytes.count ?? 0 },
    };
  } finally {
    await session?.close();
    await supervisor?.close();
    for (const sink of sinks) await sink.close();
    await fs.rm(share, { recursive: true, force: true });
    await finishRun(run, failed || plan.keepLogs);
  }
}

/**
 * A copy of the directory tree `source` at `dest` (modes, times and symlinks as they are, nothing
 * shared with the source: no hard links), for a guest that may write to its root.
 */
async function privateRootCopy(source: string, dest: string): Promise<string> {
  await fs.cp(source, dest, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  return dest;
}

/** QEMU: waits for the guest init to start the command (boot deadline), then for its status. */
async function waitGuestInit(
  vm: RunningVm,
  handoff: { readonly dir: string; readonly id: string },
  run: RunPaths,
  bootTimeoutMs: number,
  signal: AbortSignal | undefined,
  now: () => number,
  emit: (event: DistributiveOmit<ExecEvent, 'elapsedMs'>) => void,
  onStarted: () => Promise<void>,
): Promise<{ status: GuestStatus; tStarted: number }> {
  // The per-run directory `id` is the guest's: it may be swapped for a symlink to a host
  // directory, so it is only looked at confined to the handoff directory (GuestRoot).
  const root = new GuestRoot(handoff.dir, { hint: HANDOFF_HINT });
  const started = await refusedAsVmError(run, () =>
    poll<'started' | 'exited'>(
      async () => {
        if (vm.hasExited) return 'exited';
        return (await root.exists(`${handoff.id}/started`)) ? 'started' : undefined;
      },
      { timeoutMs: bootTimeoutMs, signal, initialIntervalMs: 10, maxIntervalMs: 25 },
    ),
  );
  if (isWaitFailure(started)) {
    if (started.kind === 'aborted') throw started.reason;
    throw new VmError(`the guest did not start the command within ${bootTimeoutMs / 1000} s`, {
      hint: await consoleHint(run),
    });
  }
  const tStarted = now();
  if (started === 'started') {
    await onStarted();
    emit({ type: 'stage', stage: 'running', message: COMMAND_STARTED });
  }
  await raceAbort(vm.exited, signal);
  const status = await refusedAsVmError(run, () => readStatus(root, handoff.id));
  if (!status) {
    const exit = (await vm.exited).vmm;
    const vmmTail = terminalSafeLines((await vm.vmmLogTail()).trim(), { maxChars: CONSOLE_LINE_MAX_CHARS });
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
    throw new VmError(
      `the microVM ended without reporting the command's result (QEMU ${how})${vmmTail ? `:\n    ${vmmTail.replaceAll('\n', '\n    ')}` : ''}`,
      { hint: await consoleHint(run) },
    );
  }
  return { status, tStarted };
}

/** libkrun: the VMM's own exit status is the command's (128+N when it dies of signal N). */
async function waitVmmExit(
  vm: RunningVm,
  signal: AbortSignal | undefined,
  now: () => number,
): Promise<{ status: GuestStatus; tStarted: number }> {
  const tStarted = now();
  const { vmm } = await raceAbort(vm.exited, signal);
  const refused = await vm.setupError?.();
  if (refused) throw new VmError(`libkrun did not start the VM: ${refused}`);
  const code = vmm.signal ? 128 + (os.constants.signals[vmm.signal] ?? 0) : (vmm.exitCode ?? 125);
  return { status: { code, reason: 'exited' }, tStarted };
}

/**
 * The status file the guest wrote: guest-controlled, so it is read through GuestRoot (no symlink
 * followed, the per-run directory included; a FIFO does not block; a regular file only), and no
 * more than STATUS_MAX_BYTES (a longer one is refused).
 */
async function readStatus(root: GuestRoot, id: string): Promise<GuestStatus | undefined> {
  const bytes = await root.readFile(`${id}/status`, { maxBytes: STATUS_MAX_BYTES });
  return bytes && parseStatus(bytes.toString('utf8'));
}

const HANDOFF_HINT = "the command's result is unknown: the guest changed its handoff directory";

/** A guest that tampered with its handoff (GuestRoot refused it): the VM's failure, with its console. */
async function refusedAsVmError<T>(run: RunPaths, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    throw new VmError(`the guest's handoff was refused: ${err.message}`, {
      hint: await consoleHint(run),
      cause: err,
    });
  }
}

/** "CODE REASON\n" is a few bytes; anything longer is not a status. */
const STATUS_MAX_BYTES = 64;

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
