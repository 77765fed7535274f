import fs from 'node:fs/promises';
import path from 'node:path';
import type { AccelChoice } from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { UsageError, VmError } from '../errors.ts';
import { type BootstrapResult, bootstrapGateway } from '../gateway/bootstrap.ts';
import { mergeGatewayKubeconfig, rewriteKubeconfig, writeKubeconfig } from '../gateway/kubeconfig.ts';
import { describeWait, waitForGateway } from '../gateway/readiness.ts';
import { ensureAgent } from '../guest/agent-build.ts';
import { ensureGuestArtifacts, type GuestArtifacts } from '../guest/artifacts.ts';
import type { GuestArch } from '../host/arch.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { terminalSafeLine, terminalSafeLines } from '../host/terminal-text.ts';
import { loadGuestInputs } from '../host/toolchain.ts';
import { recordPreset } from '../instance/cleanup.ts';
import { ensureRootLocation } from '../instance/root-location.ts';
import { instanceDir } from '../instance/runs.ts';
import {
  commitSnapshot,
  findSnapshot,
  newSnapshotDir,
  removeSnapshot,
  SNAPSHOT_FILES,
  type SnapshotInputs,
  type SnapshotMeta,
} from '../instance/snapshot.ts';
import {
  CONSOLE_LINE_MAX_CHARS,
  type InstanceHandle,
  raceAbort,
  type StopOutcome,
  startInstance,
} from '../instance/start.ts';
import type { SupervisorEvent } from '../instance/supervisor.ts';
import type { KernelChoice } from '../kernel/selection.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import { prepareRootfsForBoot } from '../rootfs/boot-prep.ts';
import { buildDiskImage } from '../rootfs/disk-image.ts';
import { followFile } from '../supervisor/follow.ts';
import { abortableSleep, tailFile } from '../supervisor/wait.ts';
import type { VmmBackend } from '../vmm/backend.ts';
import type { SessionEvent } from '../vmm/session.ts';
import { GATEWAY_PRESET, K3S_KUBECONFIG } from './gateway-cleanup.ts';
import {
  coldRetryAfter,
  gatewaySnapshotInputs,
  restoreCheckFailure,
  restoreReadyBudgetMs,
  waitForGuestKubeconfig,
} from './gateway-snapshot.ts';

/** The guest port of the gateway's NodePort service, and of the Kubernetes API. */
export const GATEWAY_GUEST_PORT = 30051;
export const KUBE_API_GUEST_PORT = 6443;

/** A validated gateway boot: everything decided, nothing started. */
export interface GatewayPlan {
  readonly arch: GuestArch;
  readonly accel: AccelChoice;
  readonly vcpus: number;
  readonly memMib: number;
  readonly instance: string;
  readonly rootfs: string;
  /** The guest kernel (QEMU); undefined: OPENSHELL_VM_KERNEL, else auto. */
  readonly kernel?: KernelChoice | undefined;
  /** The gateway's forward (guest port 30051); its host port is the endpoint's. */
  readonly gateway: PortForward;
  /** The Kubernetes API's forward (guest port 6443) to a loopback port. */
  readonly api: PortForward;
  readonly extraForwards: readonly PortForward[];
  readonly readyTimeoutMs: number;
  /** Add a context to this kubeconfig (normally ~/.kube/config); undefined: leave it alone. */
  readonly mergeKubeconfig: string | undefined;
  /** Make the merged context current. */
  readonly useContext: boolean;
  readonly extraSans: readonly string[];
  readonly keepLogs: boolean;
  /** How long an orderly stop (Ctrl-C, SIGTERM) gives the guest before the VM is killed. */
  readonly stopTimeoutMs: number;
  /**
   * Boot from a disk image and save the VM's state at the first Ready, then restore that state on
   * the next starts with unchanged inputs (gateway-snapshot.ts, src/instance/snapshot.ts).
   */
  readonly snapshot: boolean;
}

export interface GatewayReady {
  readonly name: string;
  readonly endpoint: string;
  readonly gatewayPort: number;
  readonly mtlsDir: string;
  readonly kubeconfig: string;
  readonly kubeApi: string;
  readonly mergedInto: string | undefined;
  readonly kubeconfigBackup: string | undefined;
  readonly bootstrap: BootstrapResult['path'];
  /** 'booted' (a cold boot), or 'restored' from the instance's saved state (--snapshot). */
  readonly start: 'booted' | 'restored';
  readonly backend: string;
  readonly accel: string;
  readonly consoleLog: string;
  readonly readyMs: number;
  /** The version the gateway's openshell.v1.OpenShell/Health answered with ('' when it sent none). */
  readonly gatewayVersion: string;
}

export type GatewayEvent =
  | SessionEvent
  | {
      readonly type: 'stage';
      readonly stage: 'prepare' | 'bootstrap' | 'network' | 'health' | 'snapshot' | 'ready' | 'stopping';
      readonly message: string;
    }
  | { readonly type: 'guest'; readonly message: string }
  | SupervisorEvent;

export interface GatewayOptions {
  readonly backend: VmmBackend;
  readonly signal?: AbortSignal | undefined;
  readonly onEvent?: ((event: GatewayEvent) => void) | undefined;
  /**
   * Called once when the gateway answers mTLS and the kubeconfig is written, with the instance
   * (commands in the guest: handle.exec; the library's Gateway handle is built on it).
   */
  readonly onReady?: ((ready: GatewayReady, handle: InstanceHandle) => void) | undefined;
  /** How the guest stopped: in order ('clean'; 'already' ended by itself), or not ('forced', 'no-agent', 'killed'). */
  readonly onStopped?: ((how: StopOutcome) => void) | undefined;
  /** Where the gateway's kubeconfig goes (~/.kube). */
  readonly kubeDir: string;
  /** Aborted to skip the orderly stop and kill the VM at once (a second Ctrl-C). */
  readonly force?: AbortSignal | undefined;
  /** The supervisor runs in the background (openshell-vm --detach), for the state file. */
  readonly detached?: boolean | undefined;
}

/**
 * The gateway preset on the one lifecycle (src/instance/start.ts): checks and prepares the
 * instance's rootfs, runs the host bootstrap while the guest boots, waits for the gateway to answer
 * mTLS with the client credentials, writes the kubeconfig, reports Ready, then stays in the
 * foreground until the signal aborts (Ctrl-C), `openshell-vm stop`, or the VM stops. Everything
 * started is stopped before this returns or throws. An abort rejects with the signal's reason; a
 * VM that stops by itself is a VmError with its console's last lines.
 */
export async function runGateway(
  env: HostEnvironment,
  plan: GatewayPlan,
  options: GatewayOptions,
): Promise<void> {
  const emit = (event: GatewayEvent) => options.onEvent?.(event);
  const t0 = performance.now();
  const dir = instanceDir(env, plan.instance);
  const forwards = [plan.gateway, plan.api, ...plan.extraForwards];
  let artifacts: GuestArtifacts | undefined;
  let fatal: string | undefined;
  let stopFollow: (() => Promise<void>) | undefined;
  let bootstrapping: Promise<BootstrapResult> | undefined;
  let ready: GatewayReady | undefined;
  // --snapshot: how this start boots ('share': the rootfs directory over virtio-fs, as without it).
  let bootKind: GatewayBoot = { kind: 'share' };
  let forceCold = false;
  // The restore failed: the cold attempt removes the snapshot (under the lock) before it starts.
  let dropSnapshot = false;
  let committed = false;

  const bootstrapOptions = () => ({
    rootfs: plan.rootfs,
    configDir: env.openshellConfigDir,
    name: plan.instance,
    port: plan.gateway.hostPort,
    extraSans: plan.extraSans,
  });

  /**
   * The first Ready of a --snapshot boot: the VM's state saved (paused for it; its image frozen,
   * later writes to an overlay), the snapshot put in place, the guest clock set again after the
   * pause. A failure is a warning: this gateway runs on, the next start boots cold.
   */
  const saveSnapshot = async (
    handle: InstanceHandle,
    save: Extract<GatewayBoot, { kind: 'save' }>,
    coldReadyMs: number,
  ) => {
    try {
      if (!handle.vm.saveState)
        throw new Error(`the ${options.backend.name} backend cannot save a VM's state`);
      emit({ type: 'stage', stage: 'snapshot', message: "saving the gateway's state for the next start" });
      const saved = await handle.vm.saveState(path.join(save.dir, SNAPSHOT_FILES.state));
      await handle.supervisor.link.syncClock().catch(() => undefined);
      await commitSnapshot(dir, save.dir, {
        inputs: save.inputs,
        savedAt: new Date().toISOString(),
        pausedMs: saved.pausedMs,
        coldReadyMs,
      });
      committed = true;
      emit({
        type: 'stage',
        stage: 'snapshot',
        message: `state saved: ${mib(saved.bytes)} (the VM paused ${(saved.pausedMs / 1000).toFixed(1)} s); the next start restores it`,
      });
    } catch (err) {
      emit({
        type: 'warning',
        message: `the gateway's state was not saved (${err instanceof Error ? err.message : String(err)}): the next start boots cold`,
      });
    }
  };

  /** The VM stopped by itself: what the guest said last (ovm-gateway: FATAL), or how the VMM ended. */
  const ended = async (handle: InstanceHandle): Promise<VmError> => {
    await handle.exited;
    await stopFollow?.();
    return handle.failure(
      fatal ? `the gateway guest stopped: ${fatal}` : 'the gateway microVM stopped before it was ready',
    );
  };

  const attempt = (): Promise<InstanceHandle> =>
    startInstance(
      env,
      {
        instance: plan.instance,
        mode: 'gateway',
        purpose: 'running the gateway',
        detached: options.detached ?? false,
        arch: plan.arch,
        accel: plan.accel,
        vcpus: plan.vcpus,
        memMib: plan.memMib,
        network: 'gvproxy',
        forwards,
        // Ready means mTLS answers (--ready-timeout, with its own message and hint), not the agent:
        // `exec` into a gateway whose agent is not up yet says so itself.
        agentTimeoutMs: undefined,
        keepLogs: plan.keepLogs,
      },
      {
        preflight: async () => {
          if (plan.snapshot && !options.backend.features.snapshots) {
            throw new UsageError(`--snapshot: the ${options.backend.name} backend cannot save a VM's state`, {
              hint: 'drop --snapshot, or use --backend qemu',
            });
          }
          // Only where no other local user can reach it (the guest's root owns it); booted from its real path.
          plan = { ...plan, rootfs: await ensureRootLocation(plan.rootfs) };
          // libkrun boots libkrunfw's kernel and no initramfs: nothing of ours to prepare.
          if (options.backend.features.guestKernel === 'libkrunfw') return;
          artifacts = await ensureGuestArtifacts(env, await loadGuestInputs(env, plan.arch), {
            kernel: plan.kernel,
          });
        },
        prepare: async () => {
          // Before anything is written outside the instance directory (the bootstrap's OpenShell
          // files, the kubeconfig, a merge): `delete` runs the gateway's cleanup for what it names.
          await recordPreset(dir, GATEWAY_PRESET);
          const agent = await ensureAgent(env, plan.arch);
          const prep = await prepareRootfsForBoot(plan.rootfs, {
            kernelRelease:
              options.backend.features.guestKernel === 'openshell' ? artifacts?.modulesRelease : undefined,
            agent,
          });
          emit({
            type: 'stage',
            stage: 'prepare',
            message: `rootfs ${plan.rootfs} (built ${prep.record.builtAt}; ${prep.kine ? `datastore cleaned: ${prep.kine.rowsBefore - prep.kine.rowsAfter} runtime records` : 'first boot'}${prep.manifestWritten ? '; HelmChart rendered' : ''})`,
          });
          // What a crash or a failed save left half-made goes, whatever the snapshot beside it
          // (this start holds the lock: no other is making one).
          await removeSnapshot(dir, { unfinishedOnly: true });
          if (!plan.snapshot) return;
          // A disk root: the host's writes (the TLS Secrets) land in the rootfs before its image is made.
          bootstrapping = bootstrapGateway(bootstrapOptions());
          const boot = await bootstrapping;
          const inputs = await gatewaySnapshotInputs({
            rootfs: plan.rootfs,
            record: prep.record,
            agent,
            bundle: boot.bundle,
            kernel: artifacts?.kernel ?? '',
            initramfs: artifacts?.initramfs ?? '',
            vmm: (await options.backend.identity?.({ arch: plan.arch })) ?? options.backend.name,
            machine: `${plan.arch} ${plan.accel.accel} ${plan.vcpus} vCPU ${plan.memMib} MiB`,
          });
          if (dropSnapshot) {
            await removeSnapshot(dir);
            dropSnapshot = false;
          }
          const found = forceCold ? ({ kind: 'none' } as const) : await findSnapshot(dir, inputs);
          if (found.kind === 'found') {
            bootKind = { kind: 'restore', dir: found.dir, meta: found.meta };
            return;
          }
          if (found.kind === 'stale') {
            emit({
              type: 'stage',
              stage: 'snapshot',
              message: `saved state not used (${found.reason}): booting cold`,
            });
          }
          await removeSnapshot(dir);
          const newDir = await newSnapshotDir(dir);
          bootKind = { kind: 'save', dir: newDir, inputs };
          emit({
            type: 'stage',
            stage: 'snapshot',
            message: `building the root disk image from ${plan.rootfs}`,
          });
          // Ctrl-C ends mke2fs (an image of a large rootfs takes a while).
          const image = await buildDiskImage(env, plan.rootfs, path.join(newDir, SNAPSHOT_FILES.disk), {
            signal: options.signal,
          });
          emit({
            type: 'stage',
            stage: 'snapshot',
            message: `root disk image: ${mib(image.usedBytes)} of ${mib(image.sizeBytes)} (sparse) in ${(image.ms / 1000).toFixed(1)} s`,
          });
        },
        boot: async (run) => {
          if (!artifacts && options.backend.features.guestKernel !== 'libkrunfw')
            throw new Error('the guest artifacts were not prepared');
          stopFollow = followFile(run.consoleLog, (line) => {
            const m = /ovm-gateway: (.*)$/.exec(line);
            if (!m?.[1]) return;
            // The guest writes these lines: no control character reaches the terminal or an error.
            const message = terminalSafeLine(m[1], { maxChars: CONSOLE_LINE_MAX_CHARS });
            if (message.startsWith('FATAL: ')) fatal = message.slice(7);
            emit({ type: 'guest', message });
          });
          const common = {
            kernel: artifacts?.kernel ?? '',
            initramfs: artifacts?.initramfs ?? '',
            rootDir: plan.rootfs,
            kernelArgs: [],
          };
          if (bootKind.kind === 'restore') {
            return {
              ...common,
              rootMode: 'disk',
              rootDisk: { path: path.join(bootKind.dir, SNAPSHOT_FILES.disk), discardWrites: true },
              restoreState: path.join(bootKind.dir, SNAPSHOT_FILES.state),
            };
          }
          if (bootKind.kind === 'save') {
            return {
              ...common,
              rootMode: 'disk',
              rootDisk: { path: path.join(bootKind.dir, SNAPSHOT_FILES.disk), discardWrites: false },
            };
          }
          // The host bootstrap runs while the guest boots: k3s picks the Secrets manifest up
          // whenever it lands in its auto-deploy directory, and the guest init never removes it.
          bootstrapping = bootstrapGateway(bootstrapOptions());
          bootstrapping.catch(() => undefined);
          return { ...common, rootMode: 'rw' };
        },
        started: () => {
          emit({ type: 'stage', stage: 'network', message: forwards.map(describeForward).join(', ') });
        },
        ready: async (handle, signal) => {
          if (!bootstrapping) throw new Error('the bootstrap was not started');
          const boot = await bootstrapping;
          emit({
            type: 'stage',
            stage: 'bootstrap',
            message: `credentials: ${boot.path} (${boot.reason}); mTLS files in ${boot.mtlsDir}`,
          });
          const vm = handle.vm;
          const restoring = bootKind.kind === 'restore';
          // A restored guest gets min(--ready-timeout, 120 s) for all its checks: past it, the
          // restore failed (a cold boot follows), rather than a wait of the whole --ready-timeout.
          const checkT0 = performance.now();
          const checkBudgetMs = restoring ? restoreReadyBudgetMs(plan.readyTimeoutMs) : plan.readyTimeoutMs;
          const checkLeftMs = () => Math.max(1_000, checkBudgetMs - (performance.now() - checkT0));
          // What the guest must show before Ready; for a restored one, a failure of any of it is a
          // failed restore (RestoreError: the state is dropped), never a host problem's.
          const checkGuest = async () => {
            if (restoring) {
              // A restored guest's agent is where it was when saved: asked to say hello on the new
              // link, it then gets host entropy (no two restores share a random pool) and the clock.
              handle.supervisor.reconnectAgent();
              const agentMs = Math.min(AGENT_RECONNECT_MS, checkLeftMs());
              const back = await raceAbort(handle.supervisor.agentReady(agentMs), signal);
              if (!back) {
                throw await handle.failure(
                  `the restored guest's agent did not answer within ${Math.round(agentMs / 1000)} s`,
                );
              }
            }
            // Readiness: mTLS on the gateway's port and its Health saying HEALTHY, raced against the VM ending.
            const stopWaiting = new AbortController();
            const waitSignal = signal ? AbortSignal.any([signal, stopWaiting.signal]) : stopWaiting.signal;
            const waiting = waitForGateway({
              port: plan.gateway.hostPort,
              bundle: boot.bundle,
              deadlineMs: restoring ? checkLeftMs() : plan.readyTimeoutMs,
              signal: waitSignal,
              consoleTail: () => consoleTail(handle.run.consoleLog),
              onHealth: (probe) =>
                emit({
                  type: 'stage',
                  stage: 'health',
                  message: `${describeWait({ kind: 'health', probe })}; waiting for HEALTHY`,
                }),
            }).then((r) => ({ kind: 'ready' as const, ...r }));
            waiting.catch(() => undefined); // settled by the race below, or abandoned when the VM ends
            const outcome = await Promise.race([
              waiting,
              vm.exited.then(() => ({ kind: 'ended' as const })),
            ]).finally(() => stopWaiting.abort());
            if (outcome.kind === 'ended') throw await ended(handle);

            // k3s writes its kubeconfig before anything in the cluster can run: wait for it briefly
            // (a disk root's through the agent: the host cannot read the image while it runs).
            const kubeWaitMs = restoring
              ? checkLeftMs()
              : Math.max(30_000, plan.readyTimeoutMs - (performance.now() - t0));
            const k3sYaml =
              bootKind.kind === 'share'
                ? await waitForKubeconfig(new GuestRoot(plan.rootfs), kubeWaitMs, signal, () => vm.hasExited)
                : await waitForGuestKubeconfig(handle, K3S_KUBECONFIG, kubeWaitMs, signal);
            if (k3sYaml === undefined) {
              if (vm.hasExited) throw await ended(handle);
              throw new VmError(`k3s wrote no kubeconfig (${K3S_KUBECONFIG} in the rootfs)`, {
                hint: `see ${handle.run.consoleLog}`,
              });
            }
            return { outcome, k3sYaml };
          };
          const { outcome, k3sYaml } = await checkGuest().catch((err: unknown) => {
            throw restoring ? restoreCheckFailure(err, signal) : err;
          });
          const kubeText = rewriteKubeconfig(k3sYaml, { name: plan.instance, port: plan.api.hostPort });
          const kubeconfig = await writeKubeconfig(options.kubeDir, plan.instance, kubeText);
          let backup: string | undefined;
          if (plan.mergeKubeconfig) {
            backup = await mergeGatewayKubeconfig(dir, plan.mergeKubeconfig, kubeText, {
              setCurrent: plan.useContext,
            });
          }
          ready = {
            name: plan.instance,
            endpoint: boot.endpoint,
            gatewayPort: plan.gateway.hostPort,
            mtlsDir: boot.mtlsDir,
            kubeconfig,
            kubeApi: `https://127.0.0.1:${plan.api.hostPort}`,
            mergedInto: plan.mergeKubeconfig,
            kubeconfigBackup: backup,
            bootstrap: boot.path,
            start: bootKind.kind === 'restore' ? 'restored' : 'booted',
            backend: options.backend.name,
            accel: plan.accel.accel,
            consoleLog: handle.run.consoleLog,
            readyMs: Math.round(performance.now() - t0),
            gatewayVersion: outcome.version,
          };
          if (bootKind.kind === 'restore') {
            const saved = bootKind.meta;
            emit({
              type: 'stage',
              stage: 'snapshot',
              message: `restored the state saved ${saved.savedAt} (${mib(saved.stateBytes)}): Ready in ${(ready.readyMs / 1000).toFixed(1)} s, the cold boot took ${(saved.coldReadyMs / 1000).toFixed(1)} s`,
            });
          } else if (bootKind.kind === 'save') {
            await saveSnapshot(handle, bootKind, ready.readyMs);
          }
          return {
            gateway: ready.endpoint,
            gatewayVersion: ready.gatewayVersion,
            kubeApi: ready.kubeApi,
            kubeconfig,
            mtlsDir: ready.mtlsDir,
          };
        },
        stopping: () => emit({ type: 'stage', stage: 'stopping', message: 'stopping the gateway microVM' }),
        cleanup: async () => {
          await stopFollow?.();
          // A snapshot that was not saved: its image goes (the VM that used it has stopped).
          if (bootKind.kind === 'save' && !committed)
            await fs.rm(bootKind.dir, { recursive: true, force: true });
        },
      },
      { backend: options.backend, signal: options.signal, emit },
    );

  let handle: InstanceHandle;
  try {
    handle = await attempt();
  } catch (err) {
    // A saved state that does not come back (QEMU could not load it, or the restored guest failed
    // its checks) is dropped, and the gateway boots cold (once); any other failure is the start's
    // own, as without snapshots, and the state stays.
    if (!coldRetryAfter(err, (bootKind as GatewayBoot).kind === 'restore', options.signal)) throw err;
    emit({
      type: 'warning',
      message: `the saved state did not restore (${err instanceof Error ? err.message : String(err)}): dropped, booting cold`,
    });
    // Dropped by the cold attempt's prepare, where the instance lock is held again.
    dropSnapshot = true;
    forceCold = true;
    fatal = undefined;
    stopFollow = undefined;
    bootstrapping = undefined;
    ready = undefined;
    bootKind = { kind: 'share' };
    handle = await attempt();
  }

  let stopTimeoutMs: number | undefined;
  void handle.stopRequested.then((ms) => {
    stopTimeoutMs = ms;
  });
  let failed = true;
  try {
    if (!ready) throw new Error('the gateway preset reported no readiness');
    emit({
      type: 'stage',
      stage: 'ready',
      message: `gateway ready in ${(ready.readyMs / 1000).toFixed(1)} s`,
    });
    options.onReady?.(ready, handle);
    failed = false;

    // Foreground: until Ctrl-C (the signal), openshell-vm stop, or the VM stops by itself.
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(options.signal?.reason);
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      void handle.stopRequested.then(() => {
        options.signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      void handle.exited.then(async () => {
        if (options.signal?.aborted || stopTimeoutMs !== undefined) return; // stopped on request
        options.signal?.removeEventListener('abort', onAbort);
        failed = true;
        reject(await ended(handle));
      });
    });
  } finally {
    // k3s's datastore and containerd's state are on the shared root: stop them in order.
    const timeoutMs = stopTimeoutMs ?? plan.stopTimeoutMs;
    const how = await handle.stop({ timeoutMs, force: options.force, failed });
    options.onStopped?.(how);
    if (how === 'forced') {
      emit({
        type: 'warning',
        message: `the guest did not stop within ${(timeoutMs / 1000).toFixed(0)} s: killed`,
      });
    }
  }
}

/** How a --snapshot start boots: from the rootfs share (no snapshot), saving, or restoring. */
type GatewayBoot =
  | { readonly kind: 'share' }
  | { readonly kind: 'save'; readonly dir: string; readonly inputs: SnapshotInputs }
  | { readonly kind: 'restore'; readonly dir: string; readonly meta: SnapshotMeta };

/** How long a restored guest's agent gets to answer again (it is running: seconds at most). */
const AGENT_RECONNECT_MS = 30_000;

const mib = (bytes: number) => `${(bytes / (1 << 20)).toFixed(0)} MiB`;

/** The console's last lines for readiness's own errors: guest text, so made terminal-safe. */
async function consoleTail(file: string): Promise<string> {
  return terminalSafeLines((await tailFile(file, 12)).trim(), { maxChars: CONSOLE_LINE_MAX_CHARS });
}

/**
 * Waits for k3s's kubeconfig in the guest's rootfs. Read through GuestRoot (a symlink the guest
 * planted there is refused, a file over the size limit too); missing or partly written: wait.
 */
async function waitForKubeconfig(
  root: GuestRoot,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  stop: () => boolean,
): Promise<string | undefined> {
  const t0 = performance.now();
  for (;;) {
    const text = await root.readText(K3S_KUBECONFIG);
    if (text?.includes('clusters:') && text.includes('users:')) return text;
    if (stop() || performance.now() - t0 > timeoutMs) return undefined;
    await abortableSleep(500, signal);
  }
}
