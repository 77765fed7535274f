import path from 'node:path';
import { VmError } from '../errors.ts';
import type { InstanceHandle, StopOutcome } from '../instance/start.ts';
import { type GatewayReady, runGateway } from '../presets/gateway.ts';
import { resetGateway } from '../presets/gateway-cleanup.ts';
import { eventSink } from './events.ts';
import { type GatewayOptions, type GatewayStartEvent, LIBRARY_NAMES, rawGatewayOptions } from './options.ts';
import { type PreparedGateway, prepareGateway } from './prepare-gateway.ts';
import { RunningInstance } from './running.ts';

/** How long a stop gives k3s to wind down before the VM is killed (the CLI's too). */
export const GATEWAY_STOP_TIMEOUT_MS = 30_000;

/** The gateway's mTLS client credentials (PEM files). */
export interface MtlsPaths {
  readonly dir: string;
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

/**
 * What a gateway boot takes once its options are prepared (the CLI's and the library's): reset
 * if asked, then the preset in the foreground until the signal aborts, `openshell-vm stop`, or
 * the VM's own end. `onReady` is called once, when it answers mTLS.
 */
export async function runPreparedGateway(
  prepared: PreparedGateway,
  options: {
    readonly keepLogs: boolean;
    readonly detached: boolean;
    readonly stopTimeoutMs: number;
    readonly signal: AbortSignal;
    readonly force?: AbortSignal | undefined;
    readonly onEvent: (event: GatewayStartEvent) => void;
    readonly onReady: (ready: GatewayReady, handle: InstanceHandle) => void;
    readonly onStopped?: ((how: StopOutcome) => void) | undefined;
  },
): Promise<void> {
  const { env, options: o, rootfs } = prepared;
  await runGateway(
    env,
    {
      arch: o.arch,
      accel: prepared.accel,
      vcpus: o.vcpus,
      memMib: o.memMib,
      instance: o.instance,
      rootfs,
      kernel: o.kernel,
      gateway: o.gateway,
      api: prepared.api,
      extraForwards: o.extraForwards,
      readyTimeoutMs: o.readyTimeoutMs,
      mergeKubeconfig: o.mergeKubeconfig ? path.join(env.kubeDir, 'config') : undefined,
      useContext: o.useContext,
      extraSans: o.extraSans,
      keepLogs: options.keepLogs,
      stopTimeoutMs: options.stopTimeoutMs,
      snapshot: o.snapshot,
    },
    {
      backend: prepared.backend,
      signal: options.signal,
      force: options.force,
      detached: options.detached,
      kubeDir: env.kubeDir,
      onEvent: options.onEvent,
      onReady: options.onReady,
      onStopped: options.onStopped,
    },
  );
}

/** Removes the instance's cluster state and credentials (the built rootfs layers are kept). */
export async function resetPreparedGateway(
  prepared: PreparedGateway,
  warn: (message: string) => void,
): Promise<{ readonly removed: readonly string[]; readonly takenOut: readonly string[] }> {
  return resetGateway(prepared.env, prepared.options.instance, prepared.rootfs, warn);
}

/**
 * Boots the gateway (k3s and the OpenShell control plane on the instance's rootfs, built by
 * prepare-rootfs) as `openshell-vm` does, supervised by this process, and returns its handle once
 * it answers mTLS with the client credentials and the kubeconfig is written. It runs until stop()
 * (or dispose), the signal's abort, `openshell-vm stop NAME`, or its own end.
 */
export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  options.signal?.throwIfAborted();
  const sink = eventSink<GatewayStartEvent>(options.onEvent);
  const prepared = await prepareGateway(rawGatewayOptions(options), LIBRARY_NAMES, sink);
  if (options.reset) await resetPreparedGateway(prepared, sink.warn);
  options.signal?.throwIfAborted();
  const stopper = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stopper.signal]) : stopper.signal;
  let readyNow: (value: { ready: GatewayReady; handle: InstanceHandle }) => void = () => undefined;
  const ready = new Promise<{ ready: GatewayReady; handle: InstanceHandle }>((resolve) => {
    readyNow = resolve;
  });
  const running = runPreparedGateway(prepared, {
    keepLogs: options.keepLogs ?? false,
    detached: false,
    stopTimeoutMs: options.stopTimeoutMs ?? GATEWAY_STOP_TIMEOUT_MS,
    signal,
    onEvent: sink.emit,
    onReady: (r, handle) => readyNow({ ready: r, handle }),
  });
  running.catch(() => undefined);
  const first = await Promise.race([
    ready,
    running.then(() => {
      throw new VmError('the gateway stopped before it was ready');
    }),
  ]);
  return new Gateway(first.ready, first.handle, prepared, running, stopper, signal);
}

/** A running gateway (startGateway). */
export class Gateway extends RunningInstance implements AsyncDisposable {
  /** host:port of the gateway (mTLS). */
  readonly endpoint: string;
  /** The kubeconfig written for it (~/.kube/NAME.yaml). */
  readonly kubeconfigPath: string;
  /** The Kubernetes API on the host (https://127.0.0.1:PORT). */
  readonly kubeApi: string;
  readonly mtls: MtlsPaths;
  /** Everything the CLI prints as Ready. */
  readonly ready: GatewayReady;
  readonly #running: Promise<void>;
  readonly #stopper: AbortController;
  readonly #signal: AbortSignal;
  #stopping: Promise<void> | undefined;

  constructor(
    ready: GatewayReady,
    handle: InstanceHandle,
    prepared: PreparedGateway,
    running: Promise<void>,
    stopper: AbortController,
    signal: AbortSignal,
  ) {
    super(handle, prepared.forwards);
    this.ready = ready;
    this.endpoint = ready.endpoint;
    this.kubeconfigPath = ready.kubeconfig;
    this.kubeApi = ready.kubeApi;
    this.mtls = {
      dir: ready.mtlsDir,
      ca: path.join(ready.mtlsDir, 'ca.crt'),
      cert: path.join(ready.mtlsDir, 'tls.crt'),
      key: path.join(ready.mtlsDir, 'tls.key'),
    };
    this.#running = running;
    this.#stopper = stopper;
    this.#signal = signal;
  }

  /**
   * Stops the gateway in order (k3s gets stopTimeoutMs, then the VM is killed) and settles when
   * everything is stopped. Idempotent. Rejects only with a failure of the gateway itself (the VM
   * ended by itself: a VmError with its console's last lines).
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#stopper.abort(new VmError(`gateway '${this.name}' stopped by stop()`));
      try {
        await this.#running;
      } catch (err) {
        if (this.#signal.aborted && err === this.#signal.reason) return;
        throw err;
      }
    })();
    return this.#stopping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
