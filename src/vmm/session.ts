import path from 'node:path';
import type { AccelChoice } from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import type { GuestArch } from '../host/arch.ts';
import { hostTscKhz } from '../host/tsc.ts';
import { exposeAll, ForwarderClient } from '../net/forwarder.ts';
import { GvproxyRelay } from '../net/frame-relay.ts';
import { findGvproxy, GVPROXY_FILES, GVPROXY_NET, gvproxySpec } from '../net/gvproxy.ts';
import type { PortForward } from '../net/ports.ts';
import { type ExitResult, type PidRecord, SupervisedProcess } from '../supervisor/process.ts';
import type { NetworkSpec, RootMode, RunningVm, VmmBackend, VmSpec } from './backend.ts';
import type { GuestMode } from './guest-handoff.ts';
import type { RunPaths } from './run-paths.ts';

/** What a session reports while it starts and runs (the CLI shows them, --events records them). */
export type SessionEvent =
  | { readonly type: 'stage'; readonly stage: 'boot'; readonly message: string }
  | {
      readonly type: 'process';
      readonly action: 'started' | 'stopped';
      readonly process: PidRecord;
      readonly exit?: ExitResult | undefined;
    }
  | { readonly type: 'warning'; readonly message: string };

export interface SessionSpec {
  readonly arch: GuestArch;
  readonly accel: AccelChoice;
  readonly vcpus: number;
  readonly memMib: number;
  readonly kernel: string;
  readonly initramfs: string;
  readonly guestMode: GuestMode;
  readonly kernelArgs: readonly string[];
  readonly rootDir: string;
  readonly rootMode: RootMode;
  readonly rootDisk?: VmSpec['rootDisk'];
  readonly restoreState?: string | undefined;
  readonly agentSocket?: string | undefined;
  readonly network: NetworkSpec['mode'];
  readonly forwards: readonly PortForward[];
}

/**
 * One running microVM with its network: gvproxy (when asked) started first with the frame filter
 * in front of it (the VMM connects to the filter, never to gvproxy: frame-relay.ts), the VMM
 * through the backend, the forwards exposed through gvproxy's API, and a watch that says once if
 * gvproxy or the filter dies or gvproxy stops answering (degraded). close() stops everything in
 * order and is safe to call at any point, also after a failed start (start() cleans up itself
 * before it throws).
 */
export class VmSession {
  readonly vm: RunningVm;
  readonly gvproxy: SupervisedProcess | undefined;
  readonly forwarder: ForwarderClient | undefined;
  readonly relay: GvproxyRelay | undefined;
  readonly #forwards: readonly PortForward[];
  readonly #emit: (event: SessionEvent) => void;
  #stopWatch: (() => void) | undefined;
  #closed = false;

  private constructor(
    vm: RunningVm,
    gvproxy: SupervisedProcess | undefined,
    forwarder: ForwarderClient | undefined,
    relay: GvproxyRelay | undefined,
    forwards: readonly PortForward[],
    emit: (event: SessionEvent) => void,
  ) {
    this.vm = vm;
    this.gvproxy = gvproxy;
    this.forwarder = forwarder;
    this.relay = relay;
    this.#forwards = forwards;
    this.#emit = emit;
  }

  static async start(
    env: HostEnvironment,
    run: RunPaths,
    spec: SessionSpec,
    options: {
      readonly backend: VmmBackend;
      readonly signal?: AbortSignal | undefined;
      readonly emit: (event: SessionEvent) => void;
    },
  ): Promise<VmSession> {
    const { emit } = options;
    let gvproxy: SupervisedProcess | undefined;
    let relay: GvproxyRelay | undefined;
    let vm: RunningVm | undefined;
    let network: NetworkSpec = { mode: 'none' };
    // Everything after gvproxy's spawn is inside the try, the events too (the caller's emit may
    // throw): whatever fails, what was started is stopped before the error goes on.
    try {
      if (spec.network === 'gvproxy') {
        gvproxy = await SupervisedProcess.start(
          await gvproxySpec(await findGvproxy(env), run.dir, run.socketDir, { cacheDir: env.cacheDir }),
          { signal: options.signal },
        );
        emit({ type: 'process', action: 'started', process: gvproxy.record() });
        relay = await GvproxyRelay.start({
          listenPath: path.join(run.socketDir, GVPROXY_FILES.vmSocket),
          gvproxyPath: path.join(run.socketDir, GVPROXY_FILES.qemuSocket),
          onDrop: onceForGateway((message) => emit({ type: 'warning', message })),
        });
        network = { mode: 'gvproxy', socketPath: relay.listenPath, mac: GVPROXY_NET.mac };
      } else if (spec.network === 'user') {
        network = { mode: 'user', mac: GVPROXY_NET.mac, forwards: spec.forwards };
      } else if (spec.network === 'tsi') {
        network = { mode: 'tsi', forwards: spec.forwards };
      }
      const tsc = spec.arch === 'x86_64' && spec.accel.accel === 'tcg' ? await hostTscKhz() : undefined;
      emit({
        type: 'stage',
        stage: 'boot',
        message: `${spec.restoreState ? 'restoring' : 'booting'} ${spec.arch} microVM with ${options.backend.name}/${spec.accel.accel} (${spec.vcpus} vCPU, ${spec.memMib} MiB)${spec.restoreState ? ' from its saved state' : ''}`,
      });
      vm = await options.backend.start(
        {
          arch: spec.arch,
          accel: spec.accel.accel,
          vcpus: spec.vcpus,
          memMib: spec.memMib,
          kernel: spec.kernel,
          initramfs: spec.initramfs,
          guestMode: spec.guestMode,
          kernelArgs: [...spec.kernelArgs, ...(tsc ? [`tsc_early_khz=${tsc}`] : [])],
          rootDir: spec.rootDir,
          rootMode: spec.rootMode,
          rootDisk: spec.rootDisk,
          restoreState: spec.restoreState,
          agentSocket: spec.agentSocket,
          network,
          runDir: run.dir,
          socketDir: run.socketDir,
          consoleLog: run.consoleLog,
        },
        { signal: options.signal },
      );
      const client = gvproxy
        ? new ForwarderClient(path.join(run.socketDir, GVPROXY_FILES.apiSocket))
        : undefined;
      const session = new VmSession(vm, gvproxy, client, relay, gvproxy ? spec.forwards : [], emit);
      if (gvproxy && client && relay) {
        if (spec.forwards.length) {
          await exposeAll(client, spec.forwards, { deadlineMs: 10_000, signal: options.signal });
        }
        session.#stopWatch = watchGvproxy(gvproxy, relay, client, vm, (message) =>
          emit({ type: 'warning', message }),
        );
      }
      return session;
    } catch (err) {
      const started = { vm, relay, gvproxy };
      // The start's own failure is the one the caller needs: a cleanup step's failure (the
      // 'stopped' event's emit, say) does not replace it, and no step skips the next.
      await everyStep([
        async () => {
          if (started.vm && !started.vm.hasExited) await started.vm.stop();
        },
        async () => started.relay?.close(),
        async () => {
          if (!started.gvproxy) return;
          const exit = await started.gvproxy.stop();
          emit({ type: 'process', action: 'stopped', process: started.gvproxy.record(), exit });
        },
      ]).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Stops the VM, removes the forwards, closes the frame filter, stops gvproxy. Idempotent. Every
   * step runs whatever the one before did (a VM that fails to stop, an emit that throws); the
   * first failure is thrown once all have run.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopWatch?.();
    const { gvproxy, forwarder, relay } = this;
    await everyStep([
      async () => {
        if (!this.vm.hasExited) await this.vm.stop();
      },
      async () => {
        if (!gvproxy || !forwarder || gvproxy.hasExited) return;
        for (const f of this.#forwards) await forwarder.unexpose(f).catch(() => undefined);
      },
      async () => relay?.close(),
      async () => {
        if (!gvproxy) return;
        const exit = await gvproxy.stop();
        this.#emit({ type: 'process', action: 'stopped', process: gvproxy.record(), exit });
      },
    ]);
  }
}

/**
 * Runs every step in order, whatever the earlier ones did, and throws the first failure once all
 * have run: the rule of every stop path (a failing or throwing step must not leave a helper, a
 * socket or a state file behind).
 */
export async function everyStep(steps: readonly (() => Promise<unknown>)[]): Promise<void> {
  let failure: { readonly error: unknown } | undefined;
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      failure ??= { error };
    }
  }
  if (failure) throw failure.error;
}

/**
 * While the VM runs: if gvproxy exits, or stops answering its API, say so once (the guest's network
 * is down: the run is degraded, not healthy). Returns a function that stops watching.
 */
function watchGvproxy(
  gvproxy: SupervisedProcess,
  relay: GvproxyRelay,
  client: ForwarderClient,
  vm: RunningVm,
  warn: (message: string) => void,
): () => void {
  let stopped = false;
  let warned = false;
  const degrade = (why: string) => {
    if (stopped || warned || vm.hasExited) return;
    warned = true;
    warn(
      `gvproxy ${why}: the guest's network and port forwards are down (degraded); see ${gvproxy.spec.logFile}`,
    );
  };
  void gvproxy.exited.then(async (exit) => {
    // gvproxy also exits by itself when QEMU closes its end: that is the VM ending, not a failure.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([vm.exited, new Promise((resolve) => (timer = setTimeout(resolve, 1_000)))]);
    clearTimeout(timer);
    degrade(
      `(pid ${gvproxy.pid}) exited ${exit.signal ? `by ${exit.signal}` : `with code ${exit.exitCode}`}`,
    );
  });
  void relay.ended.then(async (end) => {
    // The VM closing its end is the VM ending; gvproxy's end closing is reported by its exit.
    if (end.by !== 'vm' || !end.error) return;
    degrade(`link to the VM broke in the frame filter (${end.error.message})`);
  });
  const timer = setInterval(() => {
    client.list().catch(async (err: Error) => {
      // A gvproxy that died also stops answering: let the exit watcher say so, with its status.
      await new Promise((resolve) => setTimeout(resolve, 250));
      if (!gvproxy.hasExited) degrade(`stopped answering its API (${err.message})`);
    });
  }, 2_000);
  timer.unref();
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}

/**
 * A warning, once per session, when the guest sends gvproxy something its filter keeps from it
 * (its API on the gateway address, or fragments for it); other drops (IPv6, multicast) are routine.
 */
function onceForGateway(
  warn: (message: string) => void,
): (verdict: { reason: string; detail: string }) => void {
  let warned = false;
  return (verdict) => {
    if (warned || (verdict.reason !== 'to-gateway' && verdict.reason !== 'fragment')) return;
    warned = true;
    warn(
      `the guest sent ${verdict.detail}; dropped: gvproxy's API and services other than DHCP/DNS are reachable only from the host`,
    );
  };
}
