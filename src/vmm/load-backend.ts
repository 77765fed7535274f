import type { HostEnvironment } from '../config/environment.ts';
import type { ProcessEvents, VmmBackend } from './backend.ts';
import { BACKENDS, type BackendName } from './select.ts';

/**
 * The backend object for a name chosen earlier by another process (a detached run's starting
 * command chose it with chooseVmm: src/cli/run-supervisor.ts), loading that backend's modules
 * alone. The registry (registry.ts) imports every backend to compare their features; a resident
 * supervisor needs only the one that runs its VM. libkrun's runtime bundle is found again here, as
 * chooseVmm found it (the same environment, the same rules).
 */
export async function loadBackend(
  name: BackendName,
  env: HostEnvironment,
  events: ProcessEvents,
): Promise<VmmBackend> {
  switch (name) {
    case 'qemu': {
      const { QemuBackend } = await import('./qemu/backend.ts');
      return new QemuBackend(env, events);
    }
    case 'libkrun': {
      const [{ LibkrunBackend }, { discoverRuntime }] = await Promise.all([
        import('./libkrun/backend.ts'),
        import('./libkrun/runtime.ts'),
      ]);
      return new LibkrunBackend(env, await discoverRuntime(env), events);
    }
  }
}

/** Whether `value` names a backend (a name read from another process's message). */
export function isBackendName(value: unknown): value is BackendName {
  return typeof value === 'string' && (BACKENDS as readonly string[]).includes(value);
}
