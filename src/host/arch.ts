import os from 'node:os';
import { UsageError } from '../errors.ts';

/** Guest architectures openshell-vm can boot. Names follow `uname -m`. */
export const GUEST_ARCHES = ['x86_64', 'aarch64'] as const;
export type GuestArch = (typeof GUEST_ARCHES)[number];

/** Debian's name for each architecture (package suffixes, cache directories). */
export const DEB_ARCH: Readonly<Record<GuestArch, string>> = { x86_64: 'amd64', aarch64: 'arm64' };

export function hostArch(): GuestArch | undefined {
  switch (os.arch()) {
    case 'x64':
      return 'x86_64';
    case 'arm64':
      return 'aarch64';
    default:
      return undefined;
  }
}

export function parseGuestArch(value: string): GuestArch {
  const normalized = value === 'amd64' || value === 'x64' ? 'x86_64' : value === 'arm64' ? 'aarch64' : value;
  if ((GUEST_ARCHES as readonly string[]).includes(normalized)) return normalized as GuestArch;
  throw new UsageError(`--arch: unknown architecture '${value}'`, {
    hint: `use one of: ${GUEST_ARCHES.join(', ')}`,
  });
}

export function defaultGuestArch(): GuestArch {
  const arch = hostArch();
  if (!arch) {
    throw new UsageError(`this host's architecture (${os.arch()}) has no default guest architecture`, {
      hint: `pass --arch ${GUEST_ARCHES.join('|')}`,
    });
  }
  return arch;
}
