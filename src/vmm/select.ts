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

/** Whether a runtime's libkrunfw kernel can boot the gateway (every option it needs built in). */
export type GatewayKernelFact = 'ok' | { readonly why: string; readonly hint?: string | undefined };

/** A libkrun runtime as the choice sees it. */
export type RuntimeFact =
  | {
      readonly found: true;
      readonly dir: string;
      /** Checked for the gateway only (kernel check --builtin of its libkrunfw); unset: not checked. */
      readonly gatewayKernel?: GatewayKernelFact | undefined;
    }
  | { readonly found: false; readonly why: string; readonly hint?: string | undefined };

/**
 * libkrun when a runtime is found and its hypervisor works here (KVM on Linux, HVF on macOS),
 * QEMU otherwise; `requested` forces one (libkrun without a runtime is an error with the install
 * hint; libkrun without a working hypervisor runs with a warning). The gateway also needs the
 * runtime's libkrunfw kernel to have every option it needs built in (libkrunfw loads no modules):
 * a kernel that lacks one (or whose options are unknown) means QEMU, and is refused when libkrun
 * is requested, naming what it lacks and `openshell-vm kernel build` as the fix.
 */
export function chooseBackend(
  facts: HostAccelFacts,
  runtime: RuntimeFact,
  requested?: BackendName,
  purpose: 'command' | 'gateway' = 'command',
): BackendChoice {
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
  // The gateway on libkrun: what its kernel lacks, if anything (undefined: it can).
  const kernel =
    purpose !== 'gateway' || !runtime.found
      ? undefined
      : runtime.gatewayKernel === 'ok'
        ? undefined
        : (runtime.gatewayKernel ?? { why: "its libkrunfw's kernel options were not checked" });
  if (requested === 'qemu') return { backend: 'qemu', reason: 'requested with --backend qemu' };
  if (requested === 'libkrun') {
    if (!runtime.found) throw new HostError(`--backend libkrun: ${runtime.why}`, { hint: runtime.hint });
    if (kernel) {
      throw new UsageError(`--backend libkrun: the gateway cannot run on this runtime: ${kernel.why}`, {
        hint: kernel.hint ?? 'openshell-vm kernel build --target libkrunfw',
      });
    }
    return {
      backend: 'libkrun',
      reason: `requested with --backend libkrun (runtime ${runtime.dir})`,
      warning: hypervisor ? `${hypervisor}: libkrun will probably fail to start the VM` : undefined,
    };
  }
  if (!runtime.found) return { backend: 'qemu', reason: runtime.why };
  if (hypervisor) return { backend: 'qemu', reason: `libkrun runtime at ${runtime.dir}, but ${hypervisor}` };
  if (kernel) {
    return {
      backend: 'qemu',
      reason: `libkrun runtime at ${runtime.dir}, but the gateway cannot run on it: ${kernel.why}`,
    };
  }
  return { backend: 'libkrun', reason: `libkrun runtime at ${runtime.dir}` };
}
