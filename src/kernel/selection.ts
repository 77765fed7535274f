import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno, UsageError } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { currentBuild } from './cache.ts';
import type { KernelProvenance } from './provenance.ts';
import { qemuRecipe } from './recipe.ts';

/**
 * Which guest kernel the QEMU backend boots: `auto` (the built kernel when there is a current one
 * for the guest architecture, else Debian's), `debian` (the provisioned cloud kernel, its modules
 * loaded by the initramfs), `built` (`openshell-vm kernel build`'s, or an error saying to run it),
 * or the path of a kernel image (its modules, if any, are not loaded: it must have what the
 * guest needs built in).
 */
export type KernelChoice =
  | { readonly kind: 'auto' }
  | { readonly kind: 'debian' }
  | { readonly kind: 'built' }
  | { readonly kind: 'file'; readonly path: string };

export const KERNEL_CHOICE_VARIABLE = 'OPENSHELL_VM_KERNEL';

export function parseKernelChoice(text: string, origin = KERNEL_CHOICE_VARIABLE): KernelChoice {
  const value = text.trim();
  if (value === '' || value === 'auto') return { kind: 'auto' };
  if (value === 'debian' || value === 'built') return { kind: value };
  if (value.includes('/')) return { kind: 'file', path: path.resolve(value) };
  throw new UsageError(`${origin}: unknown kernel '${text}'`, {
    hint: 'use auto, debian, built, or the path of a kernel image (with a /)',
  });
}

/**
 * The kernel choice from the environment (OPENSHELL_VM_KERNEL). Read here until the resolved
 * configuration carries it (src/config/environment.ts, with the --kernel flag); callers pass a
 * choice explicitly where they have one.
 */
export function kernelChoiceFromEnvironment(env: NodeJS.ProcessEnv = process.env): KernelChoice {
  return parseKernelChoice(env[KERNEL_CHOICE_VARIABLE] ?? 'auto');
}

/** The kernel a boot uses, and what to say about it. */
export interface BootKernel {
  readonly kind: 'debian' | 'built' | 'file';
  readonly image: string;
  readonly sha256: string;
  /** `uname -r` in the guest (the built kernel's from its provenance; a file's is unknown). */
  readonly release: string;
  /** loadable: the initramfs loads the modules of guest.kernel; none: everything is built in. */
  readonly modules: 'loadable' | 'none';
  /** One line for progress output and doctor: which kernel and where it came from. */
  readonly description: string;
  readonly provenance?: KernelProvenance | undefined;
  /** Why `auto` did not take the built kernel (there is one, but it is stale or damaged). */
  readonly note?: string | undefined;
}

const BUILD_HINT = (arch: GuestArch) => `run openshell-vm kernel build --arch ${arch}`;

export async function resolveBootKernel(
  env: HostEnvironment,
  guest: GuestInputs,
  choice: KernelChoice,
): Promise<BootKernel> {
  const debian = (note?: string): BootKernel => ({
    kind: 'debian',
    image: guest.kernel.vmlinuz,
    sha256: guest.kernel.vmlinuzSha256,
    release: guest.kernel.release,
    modules: 'loadable',
    description: `Debian's ${guest.kernel.package} ${guest.kernel.version} (modules loaded at boot)`,
    note,
  });
  if (choice.kind === 'debian') return debian();
  if (choice.kind === 'file') return fileKernel(choice.path);

  const found = await currentBuild(env, guest.arch, 'qemu');
  let problem: string | undefined;
  if (found && 'build' in found) {
    const p = found.build.provenance;
    const wanted = (await qemuRecipe(guest.arch)).requestSha256;
    if (p.request_sha256 === wanted) {
      return {
        kind: 'built',
        image: found.build.image,
        sha256: p.artifact_sha256,
        release: p.version,
        modules: 'none',
        description: `built ${p.version} (${p.kernel_source}, config ${p.kernel_config_sha256.slice(0, 12)}, ${p.build_timestamp}; no modules)`,
        provenance: p,
      };
    }
    problem = `the built kernel ${found.build.image} was configured from other config fragments than this openshell-vm's`;
  } else if (found) {
    problem = found.problem;
  }
  if (choice.kind === 'built') {
    throw new HostError(
      problem
        ? `cannot boot the built kernel: ${problem}`
        : `no built kernel for ${guest.arch} (OPENSHELL_VM_KERNEL=built)`,
      { hint: BUILD_HINT(guest.arch) },
    );
  }
  return debian(problem ? `${problem}: booting Debian's kernel (${BUILD_HINT(guest.arch)})` : undefined);
}

async function fileKernel(file: string): Promise<BootKernel> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'EISDIR'))
      throw new HostError(`${KERNEL_CHOICE_VARIABLE}=${file}: no such kernel image`, {
        hint: 'point it at a bzImage/Image file, or use auto, debian or built',
        cause: err,
      });
    throw err;
  }
  return {
    kind: 'file',
    image: file,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    release: 'unknown',
    modules: 'none',
    description: `${file} (given by ${KERNEL_CHOICE_VARIABLE}; no modules loaded)`,
  };
}
