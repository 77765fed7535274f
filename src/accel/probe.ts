import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { HostError, UsageError } from '../errors.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';

export const ACCELERATORS = ['kvm', 'hvf', 'tcg'] as const;
export type Accelerator = (typeof ACCELERATORS)[number];

export function parseAccelerator(value: string): Accelerator {
  if ((ACCELERATORS as readonly string[]).includes(value)) return value as Accelerator;
  throw new UsageError(`--accel: unknown accelerator '${value}'`, {
    hint: `use one of: ${ACCELERATORS.join(', ')}`,
  });
}

/** What the host offers, gathered without starting a VM. */
export interface HostAccelFacts {
  readonly platform: NodeJS.Platform;
  readonly hostArch: GuestArch | undefined;
  /** /dev/kvm: missing, present but not openable read-write by us, or usable. */
  readonly kvmDevice: 'absent' | 'no-access' | 'ok';
  /** The host's KVM is kvm-pvm, which only runs guest kernels built for PVM. */
  readonly kvmIsPvm: boolean;
  /** macOS: sysctl kern.hv_support is 1. */
  readonly hvfSupported: boolean;
}

export interface AccelChoice {
  readonly accel: Accelerator;
  /** One line saying why, for the start-up message. */
  readonly reason: string;
  readonly forced: boolean;
  /** Set when the user forced an accelerator that is likely not to work. */
  readonly warning?: string | undefined;
}

const execFileAsync = promisify(execFile);

export async function readHostAccelFacts(): Promise<HostAccelFacts> {
  let kvmDevice: HostAccelFacts['kvmDevice'] = 'absent';
  let kvmIsPvm = false;
  let hvfSupported = false;
  if (process.platform === 'linux') {
    try {
      await fs.access('/dev/kvm', constants.F_OK);
      try {
        await fs.access('/dev/kvm', constants.R_OK | constants.W_OK);
        kvmDevice = 'ok';
      } catch {
        kvmDevice = 'no-access';
      }
    } catch {
      kvmDevice = 'absent';
    }
    kvmIsPvm = await fs.access('/sys/module/kvm_pvm').then(
      () => true,
      () => false,
    );
  } else if (process.platform === 'darwin') {
    try {
      const { stdout } = await execFileAsync('sysctl', ['-n', 'kern.hv_support']);
      hvfSupported = stdout.trim() === '1';
    } catch {
      hvfSupported = false;
    }
  }
  return { platform: process.platform, hostArch: hostArch(), kvmDevice, kvmIsPvm, hvfSupported };
}

const PVM_REASON =
  '/dev/kvm is kvm-pvm, which only boots guest kernels built for PVM (a stock kernel hangs under it)';

/**
 * Picks the accelerator for a guest of `arch`: hardware acceleration when it really works here,
 * else TCG (software emulation), with the reason. `requested` forces one; forcing an accelerator
 * that cannot exist here is an error, forcing KVM on kvm-pvm is allowed with a warning.
 */
export function chooseAccelerator(
  arch: GuestArch,
  facts: HostAccelFacts,
  requested?: Accelerator,
): AccelChoice {
  const crossArch = facts.hostArch !== arch;
  if (requested === 'tcg') return { accel: 'tcg', reason: 'requested with --accel tcg', forced: true };
  if (requested === 'kvm') {
    if (facts.platform !== 'linux') {
      throw new HostError('--accel kvm: KVM exists only on Linux hosts', {
        hint: 'use --accel hvf on macOS, or tcg',
      });
    }
    if (crossArch) {
      throw new HostError(`--accel kvm: KVM cannot run an ${arch} guest on an ${facts.hostArch} host`, {
        hint: `drop --accel (TCG is used across architectures) or use --arch ${facts.hostArch}`,
      });
    }
    if (facts.kvmDevice === 'absent') {
      throw new HostError('--accel kvm: /dev/kvm does not exist', {
        hint: 'load the kvm module (modprobe kvm_intel or kvm_amd), or use --accel tcg',
      });
    }
    if (facts.kvmDevice === 'no-access') {
      throw new HostError('--accel kvm: /dev/kvm is not readable and writable by this user', {
        hint: 'add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again), or use --accel tcg',
      });
    }
    return {
      accel: 'kvm',
      reason: 'requested with --accel kvm',
      forced: true,
      warning: facts.kvmIsPvm ? `${PVM_REASON}; the VM will probably hang` : undefined,
    };
  }
  if (requested === 'hvf') {
    if (facts.platform !== 'darwin') {
      throw new HostError('--accel hvf: Hypervisor.framework exists only on macOS', {
        hint: 'use --accel kvm or tcg',
      });
    }
    if (crossArch) {
      throw new HostError(`--accel hvf: HVF cannot run an ${arch} guest on an ${facts.hostArch} host`, {
        hint: 'drop --accel to use TCG',
      });
    }
    if (!facts.hvfSupported) {
      throw new HostError('--accel hvf: this Mac reports no hypervisor support (kern.hv_support=0)', {
        hint: 'use --accel tcg',
      });
    }
    return { accel: 'hvf', reason: 'requested with --accel hvf', forced: true };
  }

  if (crossArch) {
    return {
      accel: 'tcg',
      reason: `${arch} guest on an ${facts.hostArch ?? 'unknown'} host: no hardware acceleration across architectures`,
      forced: false,
    };
  }
  if (facts.platform === 'darwin') {
    return facts.hvfSupported
      ? { accel: 'hvf', reason: 'Hypervisor.framework available', forced: false }
      : { accel: 'tcg', reason: 'this Mac reports no hypervisor support (kern.hv_support=0)', forced: false };
  }
  if (facts.platform !== 'linux') {
    return { accel: 'tcg', reason: `no hardware accelerator supported on ${facts.platform}`, forced: false };
  }
  if (facts.kvmIsPvm) return { accel: 'tcg', reason: PVM_REASON, forced: false };
  if (facts.kvmDevice === 'absent') return { accel: 'tcg', reason: '/dev/kvm does not exist', forced: false };
  if (facts.kvmDevice === 'no-access') {
    return {
      accel: 'tcg',
      reason: '/dev/kvm is not readable and writable by this user (join the kvm group to use KVM)',
      forced: false,
    };
  }
  return { accel: 'kvm', reason: '/dev/kvm usable', forced: false };
}
