import fs from 'node:fs/promises';
import type { GuestArch } from '../host/arch.ts';
import { requestSha256 } from './cache.ts';
import type { ConfigFragment } from './config-builder.ts';

/**
 * What the `qemu` target asks of kconfig: `make allnoconfig` as the base, then the QEMU guest's
 * fragment, its architecture's additions and the gateway's options (openshell.kconfig), all built
 * in. Pure data plus the files beside this module; `requestSha256` identifies it, so a boot can
 * tell whether a cached build still matches this package's fragments without building anything.
 */
export const BASE_RECIPE = 'allnoconfig';

const FRAGMENT_FILES = (arch: GuestArch) => [
  'qemu-guest.kconfig',
  `qemu-guest-${arch}.kconfig`,
  'openshell.kconfig',
];

export interface KernelRecipe {
  readonly base: typeof BASE_RECIPE;
  readonly fragments: readonly ConfigFragment[];
  readonly requestSha256: string;
}

export async function qemuRecipe(
  arch: GuestArch,
  extra: readonly ConfigFragment[] = [],
): Promise<KernelRecipe> {
  const fragments = await Promise.all(
    FRAGMENT_FILES(arch).map(async (name) => ({
      source: name,
      text: await fs.readFile(new URL(`./${name}`, import.meta.url), 'utf8'),
    })),
  );
  const all = [...fragments, ...extra];
  return { base: BASE_RECIPE, fragments: all, requestSha256: requestSha256(BASE_RECIPE, all) };
}

/** The make variables for a guest architecture: ARCH (the kernel's name) and CROSS_COMPILE. */
export function makeArch(arch: GuestArch): string {
  return arch === 'x86_64' ? 'x86_64' : 'arm64';
}

/** Where `make` leaves the boot image, relative to the object tree. */
export function builtImagePath(arch: GuestArch): string {
  return arch === 'x86_64' ? 'arch/x86/boot/bzImage' : 'arch/arm64/boot/Image';
}
