import { type AccelChoice, type Accelerator, chooseAccelerator, readHostAccelFacts } from '../accel/probe.ts';
import type { HostEnvironment } from '../config/environment.ts';
import type { NetworkMode } from '../config/exec-options.ts';
import { HostError, UsageError } from '../errors.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';
import { refuseWritableRunRoot } from '../instance/root-location.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import type { PortForward } from '../net/ports.ts';
import type { ProcessEvents, VmmBackend } from '../vmm/backend.ts';
import { LibkrunBackend } from '../vmm/libkrun/backend.ts';
import { describeRuntime, discoverRuntime, type RuntimeBundle } from '../vmm/libkrun/runtime.ts';
import { QemuBackend } from '../vmm/qemu/backend.ts';
import { type BackendName, chooseBackend } from '../vmm/select.ts';
import type { Reporter } from './reporter.ts';

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
    /** What the VM is for: a command (`run`), or the gateway (QEMU only). */
    readonly purpose?: 'command' | 'gateway' | undefined;
    /** A command's prepared rootfs (`run --rootfs`): only on a backend with a read-only lower layer. */
    readonly rootfs?: string | undefined;
  },
  reporter: Reporter,
): Promise<{ backend: VmmBackend; accel: AccelChoice }> {
  const facts = await readHostAccelFacts();
  const events: ProcessEvents = {
    onProcess: (e) =>
      reporter.event({
        type: 'process',
        action: e.action,
        process: e.record,
        exit: e.exit,
        elapsedMs: Math.round(performance.now()),
      }),
  };
  let runtime: RuntimeBundle | undefined;
  let runtimeProblem: { why: string; hint?: string | undefined } = { why: 'not looked for' };
  try {
    runtime = await discoverRuntime(env);
  } catch (err) {
    // A runtime the user pointed at must be valid; one that is merely absent means QEMU.
    if (!(err instanceof HostError) || env.runtimeBundleDir) throw err;
    runtimeProblem = { why: err.message, hint: err.hint };
  }
  const choice = chooseBackend(
    facts,
    runtime ? { found: true, dir: runtime.dir } : { found: false, ...runtimeProblem },
    options.backend,
    options.purpose,
  );
  let backend: VmmBackend;
  let accel: AccelChoice;
  if (choice.backend === 'libkrun' && runtime) {
    if (options.arch !== hostArch()) {
      throw new UsageError(`--arch ${options.arch}: libkrun runs guests of the host's architecture only`, {
        hint: 'use --backend qemu',
      });
    }
    if (options.accel === 'tcg')
      throw new UsageError('--accel tcg: libkrun has no software emulation', { hint: 'use --backend qemu' });
    if (options.network === 'user')
      throw new UsageError("--net user is QEMU's own network", { hint: 'use --net gvproxy with libkrun' });
    if (options.network === 'tsi' && options.forwards.some((f) => f.hostAddress !== '127.0.0.1')) {
      throw new UsageError('-p ADDR:...: TSI port maps have no host address', {
        hint: 'use -p HOST:GUEST with --net tsi',
      });
    }
    backend = new LibkrunBackend(env, runtime, events);
    accel = { accel: process.platform === 'darwin' ? 'hvf' : 'kvm', reason: 'libkrun', forced: false };
  } else {
    if (options.network === 'tsi') {
      throw new UsageError("--net tsi is libkrun's network", {
        hint: 'use --backend libkrun, or --net gvproxy/user',
      });
    }
    const qemu = new QemuBackend(env, events);
    await qemu.preflight(options);
    backend = qemu;
    accel = chooseAccelerator(options.arch, facts, options.accel);
  }
  if (options.purpose !== 'gateway') refuseWritableRunRoot(backend, options.rootfs);
  if (options.network === 'gvproxy') await findGvproxy(env);
  reporter.progress(`backend: ${choice.backend} (${choice.reason})`);
  if (choice.warning) reporter.warn(choice.warning);
  if (runtime && choice.backend === 'libkrun')
    for (const line of describeRuntime(runtime)) reporter.progress(line);
  reporter.progress(`accelerator: ${accel.accel} (${accel.reason})`);
  if (accel.warning) reporter.warn(accel.warning);

  return { backend, accel };
}
