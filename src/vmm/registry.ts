import type { HostEnvironment } from '../config/environment.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';
import type { BackendFeatures, ProcessEvents, VmmBackend } from './backend.ts';
import { LibkrunBackend, libkrunFeatures } from './libkrun/backend.ts';
import type { RuntimeBundle } from './libkrun/runtime.ts';
import { QemuBackend, qemuFeatures } from './qemu/backend.ts';
import { BACKENDS, type BackendName } from './select.ts';

/** The host a backend's features are for. */
export interface BackendHost {
  readonly platform: NodeJS.Platform;
  readonly arch: GuestArch | undefined;
}

const THIS_HOST: BackendHost = { platform: process.platform, arch: hostArch() };

/** Every backend's features on `host` (this one by default), by name: the one place a name maps to facts. */
export function backendFeatures(
  host: BackendHost = THIS_HOST,
): Readonly<Record<BackendName, BackendFeatures>> {
  return { qemu: qemuFeatures(), libkrun: libkrunFeatures(host) };
}

/** The features of the backend a record names (a state file's `backend`); an unknown name is an error. */
export function featuresOf(name: string, host: BackendHost = THIS_HOST): BackendFeatures {
  const all = backendFeatures(host);
  if (!Object.hasOwn(all, name)) throw new Error(`unknown VMM backend '${name}'`);
  return all[name as BackendName];
}

/** The backends whose features satisfy `has`, for a hint ("use --backend qemu"). */
export function backendsWith(has: (features: BackendFeatures) => boolean, host?: BackendHost): BackendName[] {
  const all = backendFeatures(host);
  return BACKENDS.filter((name) => has(all[name]));
}

/**
 * The backend object for a chosen name. libkrun needs the runtime bundle that was found for it
 * (chooseBackend chooses libkrun only with one).
 */
export function createBackend(
  name: BackendName,
  env: HostEnvironment,
  runtime: RuntimeBundle | undefined,
  events: ProcessEvents,
): VmmBackend {
  if (name === 'qemu') return new QemuBackend(env, events);
  if (!runtime) throw new Error('the libkrun backend was chosen without a runtime bundle');
  return new LibkrunBackend(env, runtime, events);
}
