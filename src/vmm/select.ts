import type { HostAccelFacts } from '../accel/probe.ts';
import { HostError, UsageError } from '../errors.ts';

export const BACKENDS = ['qemu', 'libkrun'] as const;
export type BackendName = (typeof BACKENDS)[number];

export interface BackendChoice {
  readonly backend: BackendName;
  readonly reason: string;
  readonly warning?: string | undefined;
}

export function parseBackend(value: string): BackendName {
  if ((BACKENDS as readonly string[]).includes(value)) return value as BackendName;
  throw new UsageError(`--backend: unknown backend '${value}'`, {
    hint: `use one of: ${BACKENDS.join(', ')}`,
  });
}

/**
 * libkrun when a runtime is found and its hypervisor works here (KVM on Linux, HVF on macOS),
 * QEMU otherwise; `requested` forces one (libkrun without a runtime is an error with the install
 * hint; libkrun without a working hypervisor runs with a warning). The gateway runs on QEMU only:
 * it needs openshell-vm's guest init as PID 1 and its kernel's modules, which libkrun (its own
 * init, libkrunfw's kernel) does not boot.
 */
export function chooseBackend(
  facts: HostAccelFacts,
  runtime: { found: true; dir: string } | { found: false; why: string; hint?: string | undefined },
  requested?: BackendName,
  purpose: 'command' | 'gateway' = 'command',
): BackendChoice {
  if (purpose === 'gateway') {
    if (requested === 'libkrun') {
      throw new UsageError(
        "--backend libkrun: the gateway does not run on libkrun yet (it needs openshell-vm's guest init and kernel, which only QEMU boots)",
        { hint: 'leave out --backend, or use --backend qemu; libkrun runs `openshell-vm run` commands' },
      );
    }
    return {
      backend: 'qemu',
      reason: requested === 'qemu' ? 'requested with --backend qemu' : 'the gateway runs on QEMU',
    };
  }
  const hypervisor =
    facts.platform === 'darwin'
      ? facts.hvfSupported
        ? undefined
        : 'this Mac reports no hypervisor support'
      : facts.kvmIsPvm
        ? '/dev/kvm is kvm-pvm, which cannot boot libkrunfw'
        : facts.kvmDevice !== 'ok'
          ? '/dev/kvm is missing or not accessible'
          : undefined;
  if (requested === 'qemu') return { backend: 'qemu', reason: 'requested with --backend qemu' };
  if (requested === 'libkrun') {
    if (!runtime.found) throw new HostError(`--backend libkrun: ${runtime.why}`, { hint: runtime.hint });
    return {
      backend: 'libkrun',
      reason: `requested with --backend libkrun (runtime ${runtime.dir})`,
      warning: hypervisor ? `${hypervisor}: libkrun will probably fail to start the VM` : undefined,
    };
  }
  if (!runtime.found) return { backend: 'qemu', reason: runtime.why };
  if (hypervisor) return { backend: 'qemu', reason: `libkrun runtime at ${runtime.dir}, but ${hypervisor}` };
  return { backend: 'libkrun', reason: `libkrun runtime at ${runtime.dir}` };
}
