import fs from 'node:fs/promises';
import path from 'node:path';
import { dirInRoot, inRoot } from '../archive/root-path.ts';
import { readModuleIndex } from '../guest/modules.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { ROOTFS_PATHS } from './layout.ts';

/**
 * Parts of the guest kernel's module tree that k3s and its CNI need (bridge, veth, br_netfilter,
 * nf_tables, nf_conntrack, nf_nat, xt_*, IPVS, vxlan, overlay...), as paths under
 * /lib/modules/RELEASE/. Their dependencies elsewhere in the tree are added by modules.dep.
 */
export const GATEWAY_MODULE_PATHS = [
  'kernel/net/',
  'kernel/fs/overlayfs/',
  'kernel/drivers/net/veth.ko',
  'kernel/drivers/net/dummy.ko',
  'kernel/drivers/net/tun.ko',
  'kernel/drivers/net/macvlan.ko',
  'kernel/drivers/net/ipvlan/',
  'kernel/drivers/net/vxlan/',
  'kernel/drivers/net/geneve.ko',
] as const;

/** Same-named module index files that modprobe reads. */
const INDEX_FILES = /^modules\./;

export interface InstalledModules {
  readonly release: string;
  readonly count: number;
  readonly bytes: number;
}

/**
 * Copies the gateway's kernel modules (with their dependency closure) and the kernel's module
 * indexes into `root`/lib/modules/RELEASE, so the guest's modprobe finds them. For the QEMU
 * backend's Debian kernel. The built kernel (`openshell-vm kernel build`) and a libkrunfw kernel
 * have these built in and no module support: the same rootfs boots them, and the guest's
 * capability checker then loads nothing.
 */
export async function installKernelModules(guest: GuestInputs, root: string): Promise<InstalledModules> {
  const index = await readModuleIndex(guest.kernel.modulesDir);
  const wanted = new Set<string>();
  const add = (name: string) => {
    const mod = index.modules.get(name);
    if (!mod || wanted.has(mod.relPath)) return;
    wanted.add(mod.relPath);
    for (const dep of mod.deps) add(dep);
  };
  for (const [name, mod] of index.modules) {
    if (GATEWAY_MODULE_PATHS.some((p) => (p.endsWith('/') ? mod.relPath.startsWith(p) : mod.relPath === p)))
      add(name);
  }
  const dest = await dirInRoot(root, `${ROOTFS_PATHS.kernelModules}/${guest.kernel.release}`);
  let bytes = 0;
  for (const relPath of [...wanted].sort()) {
    const target = await inRoot(dest, relPath);
    await fs.copyFile(path.join(guest.kernel.modulesDir, relPath), target);
    bytes += (await fs.stat(target)).size;
  }
  for (const name of await fs.readdir(guest.kernel.modulesDir)) {
    if (INDEX_FILES.test(name))
      await fs.copyFile(path.join(guest.kernel.modulesDir, name), path.join(dest, name));
  }
  return { release: guest.kernel.release, count: wanted.size, bytes };
}
