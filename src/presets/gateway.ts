import type { AccelChoice } from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { VmError } from '../errors.ts';
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
  CONSOLE_LINE_MAX_CHARS,
  type InstanceHandle,
  type StopOutcome,
  startInstance,
} from '../instance/start.ts';
import type { SupervisorEvent } from '../instance/supervisor.ts';
import type { KernelChoice } from '../kernel/selection.ts';
import { describe as describeForward } from '../net/forwarder.ts';
import type { PortForward } from '../net/ports.ts';
import { prepareRootfsForBoot } from '../rootfs/boot-prep.ts';
import { followFile } from '../supervisor/follow.ts';
import { abortableSleep, tailFile } from '../supervisor/wait.ts';
import type { VmmBackend } from '../vmm/backend.ts';
import type { SessionEvent } from '../vmm/session.ts';
import { GATEWAY_PRESET, K3S_KUBECONFIG } from './gateway-cleanup.ts';

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
      readonly stage: 'prepare' | 'bootstrap' | 'network' | 'health' | 'ready' | 'stopping';
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

  /** The VM stopped by itself: what the guest said last (ovm-gateway: FATAL), or how the VMM ended. */
  const ended = async (handle: InstanceHandle): Promise<VmError> => {
    await handle.exited;
    await stopFollow?.();
    return handle.failure(
      fatal ? `the gateway guest stopped: ${fatal}` : 'the gateway microVM stopped before it was ready',
    );
  };

  const handle = await startInstance(
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
        const prep = await prepareRootfsForBoot(plan.rootfs, {
          kernelRelease:
            options.backend.features.guestKernel === 'openshell' ? artifacts?.modulesRelease : undefined,
          agent: await ensureAgent(env, plan.arch),
        });
        emit({
          type: 'stage',
          stage: 'prepare',
          message: `rootfs ${plan.rootfs} (built ${prep.record.builtAt}; ${prep.kine ? `datastore cleaned: ${prep.kine.rowsBefore - prep.kine.rowsAfter} runtime records` : 'first boot'}${prep.manifestWritten ? '; HelmChart rendered' : ''})`,
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
        // The host bootstrap runs while the guest boots: k3s picks the Secrets manifest up
        // whenever it lands in its auto-deploy directory, and the guest init never removes it.
        bootstrapping = bootstrapGateway({
          rootfs: plan.rootfs,
          configDir: env.openshellConfigDir,
          name: plan.instance,
          port: plan.gateway.hostPort,
          extraSans: plan.extraSans,
        });
        bootstrapping.catch(() => undefined);
        return {
          kernel: artifacts?.kernel ?? '',
          initramfs: artifacts?.initramfs ?? '',
          rootDir: plan.rootfs,
          rootMode: 'rw',
          kernelArgs: [],
        };
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
        // Readiness: mTLS on the gateway's port and its Health saying HEALTHY, raced against the VM ending.
        const stopWaiting = new AbortController();
        const waitSignal = signal ? AbortSignal.any([signal, stopWaiting.signal]) : stopWaiting.signal;
        const waiting = waitForGateway({
          port: plan.gateway.hostPort,
          bundle: boot.bundle,
          deadlineMs: plan.readyTimeoutMs,
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

        // k3s writes its kubeconfig before anything in the cluster can run: wait for it briefly.
        const k3sYaml = await waitForKubeconfig(
          new GuestRoot(plan.rootfs),
          Math.max(30_000, plan.readyTimeoutMs - (performance.now() - t0)),
          signal,
          () => vm.hasExited,
        );
        if (k3sYaml === undefined) {
          if (vm.hasExited) throw await ended(handle);
          throw new VmError(`k3s wrote no kubeconfig (${K3S_KUBECONFIG} in the rootfs)`, {
            hint: `see ${handle.run.consoleLog}`,
          });
        }
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
          backend: options.backend.name,
          accel: plan.accel.accel,
          consoleLog: handle.run.consoleLog,
          readyMs: Math.round(performance.now() - t0),
          gatewayVersion: outcome.version,
        };
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
      },
    },
    { backend: options.backend, signal: options.signal, emit },
  );

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
