import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import type { GuestInputs } from '../host/toolchain.ts';
import { type CpioEntry, writeCpio } from './cpio.ts';
import { INITRAMFS_MODULES, type ModuleFile, plainModulePath, readModule } from './modules.ts';

/** The busybox applets the initramfs init uses (as /bin/<name> symlinks). */
const INITRAMFS_APPLETS = [
  'sh',
  'mount',
  'umount',
  'mkdir',
  'insmod',
  'switch_root',
  'cat',
  'sleep',
  'poweroff',
  'reboot',
  'cp',
];

export interface InitramfsInputs {
  readonly busybox: Uint8Array;
  readonly initScript: string;
  readonly release: string;
  /** Modules in load order with their (decompressed) bytes. */
  readonly modules: readonly (ModuleFile & { readonly data: Uint8Array })[];
}

/** The initramfs as cpio entries; pure, so it is testable without a kernel. */
export function initramfsEntries(inputs: InitramfsInputs): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const dir = (p: string) => {
    const parts = p.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      if (!dirs.has(sub)) {
        dirs.add(sub);
        entries.push({ type: 'dir', path: sub });
      }
    }
  };
  for (const d of ['bin', 'dev', 'etc', 'proc', 'sys', 'newroot', 'mnt/host', 'mnt/lower', 'mnt/rw']) dir(d);
  entries.push({ type: 'chardev', path: 'dev/console', major: 5, minor: 1 });
  entries.push({ type: 'file', path: 'bin/busybox', data: inputs.busybox, mode: 0o755 });
  for (const applet of INITRAMFS_APPLETS)
    entries.push({ type: 'symlink', path: `bin/${applet}`, target: 'busybox' });
  entries.push({ type: 'file', path: 'init', data: Buffer.from(inputs.initScript, 'utf8'), mode: 0o755 });
  const order: string[] = [];
  for (const module of inputs.modules) {
    const rel = `${inputs.release}/${plainModulePath(module.relPath)}`;
    dir(path.posix.dirname(`lib/modules/${rel}`));
    entries.push({ type: 'file', path: `lib/modules/${rel}`, data: module.data });
    order.push(rel);
  }
  entries.push({ type: 'file', path: 'etc/ovm-modules', data: Buffer.from(`${order.join('\n')}\n`, 'utf8') });
  return entries;
}

/** gzip of the cpio archive. zlib writes a zero mtime, so equal inputs give equal bytes. */
export function buildInitramfs(inputs: InitramfsInputs): Buffer {
  return zlib.gzipSync(writeCpio(initramfsEntries(inputs)), { level: 9 });
}

export async function loadInitramfsInputs(
  guest: GuestInputs,
  initScript: string,
  order: readonly ModuleFile[],
): Promise<InitramfsInputs> {
  const modules = await Promise.all(
    order.map(async (m) => ({ ...m, data: await readModule(guest.kernel.modulesDir, m.relPath) })),
  );
  return {
    busybox: await fs.readFile(guest.busybox.binary),
    initScript,
    release: guest.kernel.release,
    modules,
  };
}

export { INITRAMFS_MODULES };
