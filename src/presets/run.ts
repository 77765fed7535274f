import fs from 'node:fs/promises';
import path from 'node:path';
import type { AccelChoice } from '../accel/probe.ts';
import type { SessionIo } from '../agent/session.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { VmError } from '../errors.ts';
import { agentRequest, type WorkloadRequest } from '../exec/request.ts';
import { attachTerminal, stdinIsTerminal, terminalSize } from '../exec/terminal.ts';
import type { GuestArtifacts } from '../guest/artifacts.ts';
import type { GuestArch } from '../host/arch.ts';
import { type InstanceHandle, raceAbort, startInstance } from '../instance/start.ts';
import type { KernelChoice } from '../kernel/selection.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import type { ExitResult, PidRecord } from '../supervisor/process.ts';
import type { NetworkSpec, VmmBackend } from '../vmm/backend.ts';

/** The progress message when the guest has started the command (a detached run is then up). */
export const COMMAND_STARTED = 'command started in the guest';

/** A validated VM on the exec preset (a run's, or the library's startVm): everything decided, nothing started. */
export interface VmPlan {
  readonly arch: GuestArch;
  readonly accel: AccelChoice;
  readonly vcpus: number;
  readonly memMib: number;
  readonly instance: string;
  /** For the state file (`list` shows it); undefined: a VM without a command of its own (startVm). */
  readonly command?: readonly string[] | undefined;
  /** Deadline for the guest agent to connect (boot + init). */
  readonly bootTimeoutMs: number;
  /** Keep the run directory (logs) even when the run succeeds. */
  readonly keepLogs: boolean;
  readonly network: NetworkSpec['mode'];
  /** Host-to-guest TCP forwards (validated, host ports checked free). */
  readonly forwards: readonly PortForward[];
  /** A prepared rootfs (verified against its build record before boot); default: the embedded one. */
  readonly rootfs?: string | undefined;
  /** The guest kernel (QEMU); undefined: OPENSHELL_VM_KERNEL, else auto (the built one if present). */
  readonly kernel?: KernelChoice | undefined;
  /** Run by a detached supervisor (openshell-vm run --detach), for the state file. */
  readonly detached?: boolean | undefined;
  /**
   * What to boot from, when the process that started this one prepared it (prepareGuest: a
   * detached run's CLI, before it started the supervisor); else startExecVm prepares it itself.
   */
  readonly prepared?: PreparedGuest | undefined;
}

/** The guest artifacts' files a boot uses: GuestArtifacts less what only progress output shows. */
export interface BootArtifacts {
  readonly kernel: GuestArtifacts['kernel'];
  readonly initramfs: GuestArtifacts['initramfs'];
  readonly rootfs: GuestArtifacts['rootfs'];
  readonly modulesRelease?: GuestArtifacts['modulesRelease'];
}

/** What a VM on the exec preset boots from, decided before its instance is touched (prepareGuest). */
export interface PreparedGuest {
  readonly artifacts: BootArtifacts;
  /** The prepared rootfs's real path (checked for where it lives); undefined: the default rootfs. */
  readonly rootfs?: string | undefined;
}

/** A validated exec run: the VM and its one command. */
export interface ExecPlan extends VmPlan {
  readonly request: WorkloadRequest;
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
  /** The command's exit code (128+N for signal N; 127 not found, 126 not executable, 125 not started). */
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
export type ExecIo = SessionIo;

export interface ExecOptions {
  readonly backend: VmmBackend;
  readonly signal?: AbortSignal | undefined;
  readonly onEvent?: ((event: ExecEvent) => void) | undefined;
  /** Clock for elapsed times (ms); defaults to time since process start. */
  readonly now?: (() => number) | undefined;
}

/** How long the guest gets to power off by itself once the command has ended. */
const GUEST_SHUTDOWN_MS = 10_000;

/**
 * `openshell-vm run`: the VM (startExecVm), then the command as an agent session (stdout and
 * stderr to `io` as it runs, stdin passed through, a pseudo-terminal when stdin is one), then the
 * guest shut down in order: the same on every backend (under libkrun the agent is the VM's
 * workload, reached over vsock). Everything started is stopped and every socket removed before
 * this returns or throws, also on abort.
 */
export async function runExec(
  env: HostEnvironment,
  plan: ExecPlan,
  io: ExecIo,
  options: ExecOptions,
): Promise<ExecResult> {
  const now = options.now ?? (() => performance.now());
  const emit = emitter(options, now);
  const t0 = now();
  const { signal } = options;
  const { handle, artifactsAt } = await startExecVm(
    env,
    { ...plan, command: plan.command ?? [plan.request.exec, ...plan.request.args] },
    { ...options, now },
  );

  let failed = true;
  try {
    const tStarted = now();
    const bootMs = performance.now() - handle.bootStartedAt;
    emit({ type: 'stage', stage: 'running', message: COMMAND_STARTED });
    const code = await execInGuest(handle, plan.request, io, signal, true);
    // The command has ended: the agent ends the guest in order (QEMU: it asks PID 1; libkrun: the
    // agent, the VM's workload, exits itself).
    await handle.stop({ timeoutMs: GUEST_SHUTDOWN_MS, force: signal, failed: code === 125 });
    const tDone = now();
    emit({ type: 'stage', stage: 'done', message: `command exited: exit code ${code}` });
    failed = code === 125;
    return {
      exitCode: code,
      reason: 'exited',
      message: undefined,
      timings: {
        artifactsMs: Math.round(artifactsAt - t0),
        bootMs: Math.round(bootMs),
        commandMs: Math.round(tDone - tStarted),
        totalMs: Math.round(tDone - t0),
      },
    };
  } finally {
    // Idempotent: after the orderly stop above this only returns its outcome. On an abort or a
    // failure the VM is killed at once.
    await handle.stop({ orderly: false, failed });
  }
}

function emitter(
  options: Pick<ExecOptions, 'onEvent'>,
  now: () => number,
): (event: DistributiveOmit<ExecEvent, 'elapsedMs'>) => void {
  return (event) => options.onEvent?.({ ...event, elapsedMs: Math.round(now()) } as ExecEvent);
}

/**
 * The preflight of a VM on the exec preset: a prepared rootfs is refused on a backend without a
 * read-only lower layer and where another local user could reach it; the guest artifacts (kernel,
 * initramfs, default rootfs) are taken from the cache after their integrity check, or built. The
 * expensive part of a start (it reads and hashes the initramfs, the default rootfs's files and the
 * agent), so a detached run does it in the CLI before it starts the supervisor: the long-lived
 * supervisor then never loads this code nor holds the buffers it read (src/cli/run.ts).
 */
export async function prepareGuest(
  env: HostEnvironment,
  plan: Pick<VmPlan, 'arch' | 'rootfs' | 'kernel'>,
  options: Pick<ExecOptions, 'backend' | 'onEvent' | 'now'>,
): Promise<PreparedGuest> {
  const emit = emitter(options, options.now ?? (() => performance.now()));
  const { ensureRootLocation, refuseWritableRunRoot } = await import('../instance/root-location.ts');
  refuseWritableRunRoot(options.backend, plan.rootfs);
  const rootfs = plan.rootfs ? await ensureRootLocation(plan.rootfs) : undefined;
  const { ensureGuestArtifacts, ensureRootArtifacts } = await import('../guest/artifacts.ts');
  // A backend whose kernel is libkrunfw's (libkrun) boots no kernel or initramfs of ours: only the
  // default rootfs, its busybox from the package, so nothing of the Linux host's provisioning.
  const artifacts =
    options.backend.features.guestKernel === 'libkrunfw'
      ? await ensureRootArtifacts(
          env,
          await (await import('../guest/busybox-source.ts')).findBusybox(env, plan.arch),
        )
      : await ensureGuestArtifacts(
          env,
          await (await import('../host/toolchain.ts')).loadGuestInputs(env, plan.arch),
          {
            kernel: plan.kernel,
          },
        );
  if (artifacts.rebuiltBecause)
    emit({ type: 'warning', message: `${artifacts.rebuiltBecause}: rebuilt them` });
  if (artifacts.kernelNote) emit({ type: 'warning', message: artifacts.kernelNote });
  emit({
    type: 'stage',
    stage: 'artifacts',
    message: `guest artifacts ${artifacts.built ? 'built' : 'cached'} (${plan.arch}, kernel ${artifacts.kernelDescription})`,
  });
  const { kernel, initramfs, modulesRelease } = artifacts;
  return { artifacts: { kernel, initramfs, rootfs: artifacts.rootfs, modulesRelease }, rootfs };
}

/**
 * The exec preset's VM on the lifecycle (src/instance/start.ts), on the embedded default rootfs or
 * a prepared one, returned once its guest agent is connected: `openshell-vm run` runs its command
 * in it, the library's startVm any number of them. The guest runs until the handle's stop(). On a
 * failure or an abort everything started is stopped before this throws. `artifactsAt`: when the
 * guest artifacts were ready (now()'s clock).
 */
export async function startExecVm(
  env: HostEnvironment,
  plan: VmPlan,
  options: ExecOptions,
): Promise<{ readonly handle: InstanceHandle; readonly artifactsAt: number }> {
  const now = options.now ?? (() => performance.now());
  const emit = emitter(options, now);
  const { backend, signal } = options;
  let artifacts: BootArtifacts | undefined;
  let rootfs: string | undefined;
  let tArtifacts = now();
  let share: string | undefined;

  const handle = await startInstance(
    env,
    {
      instance: plan.instance,
      mode: 'run',
      purpose: plan.command ? 'running a command' : 'running a microVM',
      detached: plan.detached ?? false,
      arch: plan.arch,
      accel: plan.accel,
      vcpus: plan.vcpus,
      memMib: plan.memMib,
      network: plan.network,
      forwards: plan.forwards,
      command: plan.command,
      agentTimeoutMs: plan.bootTimeoutMs,
      keepLogs: plan.keepLogs,
    },
    {
      preflight: async () => {
        ({ artifacts, rootfs } = plan.prepared ?? (await prepareGuest(env, plan, { ...options, now })));
        tArtifacts = now();
      },
      prepare: async () => {
        if (!rootfs || !artifacts) return;
        // A prepared rootfs must be this tool's build: guest scripts and (QEMU) kernel modules.
        // Loaded for a prepared rootfs only (a run's supervisor on the default one never does).
        const [{ verifyRootfsForBoot }, { ensureAgent, installAgent }] = await Promise.all([
          import('../rootfs/record.ts'),
          import('../guest/agent-build.ts'),
        ]);
        const record = await verifyRootfsForBoot(rootfs, {
          kernelRelease: backend.features.guestKernel === 'openshell' ? artifacts.modulesRelease : undefined,
        });
        await installAgent(rootfs, await ensureAgent(env, plan.arch));
        emit({
          type: 'stage',
          stage: 'artifacts',
          message: `rootfs ${rootfs} (${record.base.source}, built ${record.builtAt})`,
        });
      },
      boot: async (run) => {
        if (!artifacts) throw new Error('the guest artifacts were not prepared');
        let rootDir = rootfs ?? artifacts.rootfs;
        // The default rootfs is shared by every run of every instance: a backend whose guest
        // would write into the directory itself (no read-only lower layer) boots a private copy.
        if (!rootfs && backend.features.overlayRoot === 'writable') {
          share = path.join(run.dir, 'share');
          await fs.mkdir(share, { mode: 0o700 });
          rootDir = await privateRootCopy(artifacts.rootfs, path.join(share, 'rootfs'));
        }
        return {
          kernel: artifacts.kernel,
          initramfs: artifacts.initramfs,
          rootDir,
          // The default rootfs is small: the guest runs it from memory (RootMode 'copy').
          rootMode: rootfs ? 'overlay' : 'copy',
          kernelArgs: [],
        };
      },
      started: () => {
        if (plan.forwards.length) {
          emit({ type: 'stage', stage: 'network', message: plan.forwards.map(describeForward).join(', ') });
        }
      },
      cleanup: async () => {
        if (share) await fs.rm(share, { recursive: true, force: true });
      },
    },
    {
      backend,
      signal,
      // A clock correction says the host slept or the guest drifted: worth a line even with -q.
      emit: (e) =>
        emit(
          e.type === 'agent' || (e.type === 'stage' && e.stage === 'boot')
            ? { type: 'stage', stage: 'boot', message: e.message }
            : e.type === 'clock'
              ? { type: 'warning', message: e.message }
              : e,
        ),
    },
  );
  return { handle, artifactsAt: tArtifacts };
}

/**
 * One command in a running exec VM as an agent session: its exit code as the agent reports it
 * (a pseudo-terminal when stdin is a terminal). An abort closes the session (the agent kills the
 * command) and rejects with the signal's reason; the agent's link going down is the VM's failure,
 * with its console. `followStopRequest`: `openshell-vm stop` (detached runs) sends the command
 * SIGTERM, and SIGKILL when it is still running the stop's timeout later.
 */
export async function execInGuest(
  handle: InstanceHandle,
  request: WorkloadRequest,
  io: ExecIo,
  signal: AbortSignal | undefined,
  followStopRequest = false,
): Promise<number> {
  signal?.throwIfAborted();
  const tty = stdinIsTerminal(io);
  const command = handle.exec(agentRequest(request, { tty, ...terminalSize(io) }), io);
  const restore = tty ? attachTerminal(io, (rows, cols) => command.resize(rows, cols)) : () => undefined;
  let killTimer: NodeJS.Timeout | undefined;
  let ended = false;
  if (followStopRequest) {
    void handle.stopRequested.then((ms) => {
      if (ended) return;
      command.signal('TERM');
      killTimer = setTimeout(() => command.signal('KILL'), ms);
      killTimer.unref();
    });
  }
  try {
    return await raceAbort(command.done, signal);
  } catch (err) {
    if (!(err instanceof VmError) || signal?.aborted) throw err;
    throw await handle.failure(err.message, err);
  } finally {
    ended = true;
    clearTimeout(killTimer);
    restore();
    command.close();
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
