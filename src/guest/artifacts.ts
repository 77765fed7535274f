import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno } from '../errors.ts';
import { DEB_ARCH, type GuestArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { ensureAgent } from './agent-build.ts';
import { writeDefaultRootfs } from './default-rootfs.ts';
import { buildInitramfs, INITRAMFS_MODULES, loadInitramfsInputs } from './initramfs.ts';
import { readModuleIndex, resolveLoadOrder } from './modules.ts';

/** Bump when the layout of built artifacts changes in a way their inputs do not show. */
const ARTIFACT_FORMAT = 1;

export interface GuestArtifacts {
  readonly arch: GuestArch;
  readonly key: string;
  readonly kernel: string;
  readonly kernelRelease: string;
  readonly initramfs: string;
  /** The embedded default rootfs (shared read-only; runs write to an overlay over it). */
  readonly rootfs: string;
  readonly built: boolean;
}

export interface GuestScripts {
  readonly initramfsInit: string;
  readonly ovmInit: string;
}

export async function readGuestScripts(): Promise<GuestScripts> {
  const read = (name: string) => fs.readFile(new URL(`./scripts/${name}`, import.meta.url), 'utf8');
  const [initramfsInit, ovmInit] = await Promise.all([read('initramfs-init.sh'), read('ovm-init.sh')]);
  return { initramfsInit, ovmInit };
}

/** The content key: every input that changes the bytes of the artifacts. */
export function artifactKey(guest: GuestInputs, scripts: GuestScripts, agentSha256: string): string {
  const identity = {
    agent: agentSha256,
    format: ARTIFACT_FORMAT,
    busybox: guest.busybox.binarySha256,
    vmlinuz: guest.kernel.vmlinuzSha256,
    modulesDep: guest.kernel.modulesDepSha256,
    modules: INITRAMFS_MODULES,
    scripts: [scripts.initramfsInit, scripts.ovmInit].map((s) =>
      createHash('sha256').update(s).digest('hex'),
    ),
  };
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 20);
}

/**
 * The initramfs and default rootfs for `guest`, from the cache when their inputs are unchanged,
 * else built into a temporary directory and renamed into place (safe against concurrent builds).
 */
export async function ensureGuestArtifacts(
  env: HostEnvironment,
  guest: GuestInputs,
): Promise<GuestArtifacts> {
  const scripts = await readGuestScripts();
  const agent = await ensureAgent(env, guest.arch);
  const key = artifactKey(guest, scripts, agent.sha256);
  const dir = path.join(env.cacheDir, 'artifacts', DEB_ARCH[guest.arch], key);
  const result = (built: boolean): GuestArtifacts => ({
    arch: guest.arch,
    key,
    kernel: guest.kernel.vmlinuz,
    kernelRelease: guest.kernel.release,
    initramfs: path.join(dir, 'initramfs.cpio.gz'),
    rootfs: path.join(dir, 'rootfs'),
    built,
  });
  if (await isComplete(dir)) return result(false);

  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.mkdir(tmp, { recursive: true });
  try {
    const index = await readModuleIndex(guest.kernel.modulesDir);
    const order = resolveLoadOrder(index, INITRAMFS_MODULES, guest.kernel.release);
    const inputs = await loadInitramfsInputs(guest, scripts.initramfsInit, order);
    await fs.writeFile(path.join(tmp, 'initramfs.cpio.gz'), buildInitramfs(inputs));
    await writeDefaultRootfs(path.join(tmp, 'rootfs'), inputs.busybox, scripts.ovmInit, agent.bytes);
    await fs.writeFile(
      path.join(tmp, 'complete'),
      `${JSON.stringify({ key, modules: order.map((m) => m.name) })}\n`,
    );
    try {
      await fs.rename(tmp, dir);
    } catch (err) {
      // Another process finished the same build first: use theirs.
      if (!(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST')) || !(await isComplete(dir))) throw err;
      await fs.rm(tmp, { recursive: true, force: true });
    }
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return result(true);
}

function isComplete(dir: string): Promise<boolean> {
  return pathExists(path.join(dir, 'complete'));
}
