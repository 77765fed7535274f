import {
  type AccelChoice,
  type Accelerator,
  chooseAccelerator,
  type HostAccelFacts,
  readHostAccelFacts,
} from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, UsageError } from '../errors.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';
import { refuseWritableRunRoot } from '../instance/root-location.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import type { PortForward } from '../net/ports.ts';
import type { NetworkMode } from '../options/exec-options.ts';
import {
  type BackendFeatures,
  type ProcessEvents,
  processEventsTo,
  type VmmBackend,
} from '../vmm/backend.ts';
import { discoverRuntime, type RuntimeBundle } from '../vmm/libkrun/runtime.ts';
import { backendFeatures, backendsWith, createBackend } from '../vmm/registry.ts';
import { type BackendName, chooseBackend, type GatewayKernelFact } from '../vmm/select.ts';

/**
 * Where a start's progress goes: the CLI's Reporter (stderr, --events), or the library's onEvent.
 * `event` gets machine-readable records (each helper process with its pid).
 */
export interface ProgressSink {
  progress(message: string): void;
  warn(message: string): void;
  event(event: Record<string, unknown>): void;
}

/**
 * Picks the VMM and accelerator for a boot (libkrun where a runtime is found and usable, else
 * QEMU), checks that the options suit it, and says which and why. Nothing is started.
 */
export async function chooseVmm(
  env: HostEnvironment,
  options: {
    readonly arch: GuestArch;
    readonly accel: Accelerator | undefined;
    readonly backend: BackendName | undefined;
    readonly network: NetworkMode;
    readonly forwards: readonly PortForward[];
    /** What the VM is for: a command (`run`), or the gateway (its kernel needs every option). */
    readonly purpose?: 'command' | 'gateway' | undefined;
    /** A command's prepared rootfs (`run --rootfs`): only on a backend with a read-only lower layer. */
    readonly rootfs?: string | undefined;
  },
  reporter: ProgressSink,
): Promise<{ backend: VmmBackend; accel: AccelChoice }> {
  const facts = await readHostAccelFacts();
  const events: ProcessEvents = processEventsTo(reporter);
  let runtime: RuntimeBundle | undefined;
  let runtimeProblem: { why: string; hint?: string | undefined } = { why: 'not looked for' };
  try {
    runtime = await discoverRuntime(env);
  } catch (err) {
    // A runtime the user pointed at must be valid; one that is merely absent means QEMU.
    if (!(err instanceof HostError) || env.runtimeBundleDir) throw err;
    runtimeProblem = { why: err.message, hint: err.hint };
  }
  // The gateway on libkrun needs its libkrunfw's kernel to have every option built in: checked
  // before anything starts (koffi, which reads libkrunfw, is loaded only here: not on run's path).
  let gatewayKernel: GatewayKernelFact | undefined;
  const requested = options.backend === undefined ? undefined : backendFeatures()[options.backend];
  if (options.purpose === 'gateway' && runtime && (requested?.guestKernel ?? 'libkrunfw') === 'libkrunfw') {
    const { libkrunfwGatewayRefusal } = await import('../vmm/libkrun/krunfw.ts');
    const refusal = await libkrunfwGatewayRefusal(runtime);
    gatewayKernel = refusal ? { why: refusal.message, hint: refusal.hint } : 'ok';
  }
  const choice = chooseBackend(
    facts,
    runtime ? { found: true, dir: runtime.dir, gatewayKernel } : { found: false, ...runtimeProblem },
    options.backend,
    options.purpose,
  );
  checkOptionsFit(choice.backend, options);
  const backend = createBackend(choice.backend, env, runtime, events);
  await backend.preflight?.(options);
  const accel = chooseBackendAccelerator(backend, options.arch, facts, options.accel);
  if (options.purpose !== 'gateway') refuseWritableRunRoot(backend, options.rootfs);
  if (options.network === 'gvproxy') await findGvproxy(env);
  reporter.progress(`backend: ${choice.backend} (${choice.reason})`);
  if (choice.warning) reporter.warn(choice.warning);
  for (const line of backend.describe?.() ?? []) reporter.progress(line);
  reporter.progress(`accelerator: ${accel.accel} (${accel.reason})`);
  if (accel.warning) reporter.warn(accel.warning);

  return { backend, accel };
}

/** What each network is, for a refusal that names it. */
const NETWORK_TITLES: Readonly<Record<NetworkMode, string>> = {
  gvproxy: 'the gvproxy user-mode network',
  user: "QEMU's own network",
  tsi: "libkrun's network (transparent socket impersonation)",
  none: 'no network',
};

/** "use --backend qemu" for the backends that have it, if any. */
function otherBackends(name: BackendName, has: (f: BackendFeatures) => boolean): string {
  const others = backendsWith(has).filter((b) => b !== name);
  return others.length ? `use --backend ${others.join(' or ')}` : '';
}

/**
 * Refuses options the chosen backend cannot honour, from its features: the guest architecture,
 * a forced accelerator, the network (and TSI's port maps, which have no host address).
 */
export function checkOptionsFit(
  name: BackendName,
  options: {
    readonly arch: GuestArch;
    readonly accel: Accelerator | undefined;
    readonly network: NetworkMode;
    readonly forwards: readonly PortForward[];
  },
  features: BackendFeatures = backendFeatures()[name],
): void {
  if (!features.guestArches.includes(options.arch)) {
    const which =
      features.guestArches.length === 1 && features.guestArches[0] === hostArch()
        ? `the host's architecture only (${features.guestArches[0]})`
        : `${features.guestArches.join(', ') || 'no architecture'} only`;
    throw new UsageError(`--arch ${options.arch}: ${name} runs guests of ${which}`, {
      hint: otherBackends(name, (f) => f.guestArches.includes(options.arch)) || undefined,
    });
  }
  if (options.accel && !features.accelerators.includes(options.accel)) {
    const missing = options.accel === 'tcg' ? 'software emulation' : options.accel;
    throw new UsageError(
      `--accel ${options.accel}: ${name} has no ${missing} (it uses ${features.accelerators.join(', ')})`,
      {
        hint: otherBackends(name, (f) => f.accelerators.includes(options.accel as Accelerator)) || undefined,
      },
    );
  }
  if (!features.networks.includes(options.network)) {
    const alternatives = [
      `use --net ${features.networks.join('/')}`,
      otherBackends(name, (f) => f.networks.includes(options.network)),
    ].filter(Boolean);
    throw new UsageError(
      `--net ${options.network} is ${NETWORK_TITLES[options.network]}; the ${name} backend has ${features.networks.join(', ')}`,
      { hint: alternatives.join(', or ') },
    );
  }
  if (options.network === 'tsi' && options.forwards.some((f) => f.hostAddress !== '127.0.0.1')) {
    throw new UsageError('-p ADDR:...: TSI port maps have no host address', {
      hint: 'use -p HOST:GUEST with --net tsi',
    });
  }
}

/**
 * The accelerator on `backend`: one that can fall back to software emulation (tcg among its
 * accelerators) probes the host for what works; one that cannot runs on its hypervisor (its
 * first), which chooseBackend already warned about if it looks unusable here.
 */
function chooseBackendAccelerator(
  backend: VmmBackend,
  arch: GuestArch,
  facts: HostAccelFacts,
  requested: Accelerator | undefined,
): AccelChoice {
  const { accelerators } = backend.features;
  if (accelerators.includes('tcg')) return chooseAccelerator(arch, facts, requested);
  const accel = requested ?? (accelerators[0] as Accelerator);
  return requested
    ? { accel, reason: `requested with --accel ${requested}`, forced: true }
    : { accel, reason: `${backend.name} runs on ${accel} only`, forced: false };
}
