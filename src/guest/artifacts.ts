import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno } from '../errors.ts';
import { DEB_ARCH, type GuestArch } from '../host/arch.ts';
import { ensureTrustedCacheDir } from '../host/dir-trust.ts';
import { pathExists } from '../host/fs.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import type { KernelProvenance } from '../kernel/provenance.ts';
import {
  type BootKernel,
  type KernelChoice,
  kernelChoiceFromEnvironment,
  resolveBootKernel,
} from '../kernel/selection.ts';
import { ensureAgent } from './agent-build.ts';
import type { BusyboxBinary } from './busybox-source.ts';
import { defaultRootfsEntries } from './default-rootfs.ts';
import { buildInitramfs, INITRAMFS_MODULES, loadInitramfsInputs } from './initramfs.ts';
import { readModuleIndex, resolveLoadOrder } from './modules.ts';
import { type TreeEntry, treeDifferences, writeTree } from './tree.ts';

/** Bump when the layout of built artifacts changes in a way their inputs do not show. */
const ARTIFACT_FORMAT = 2;

export interface GuestArtifacts {
  readonly arch: GuestArch;
  readonly key: string;
  /** The kernel image to boot. */
  readonly kernel: string;
  readonly kernelRelease: string;
  /**
   * Which kernel: Debian's (modules loaded by the initramfs), the built one, a given file, or
   * (libkrun) the one in the runtime's libkrunfw, when there is no kernel or initramfs here at all.
   */
  readonly kernelKind: BootKernel['kind'] | 'libkrunfw';
  /** One line naming the kernel and its provenance, for progress output and doctor. */
  readonly kernelDescription: string;
  readonly kernelProvenance: KernelProvenance | undefined;
  /** Set when `auto` found a built kernel it could not use (stale or damaged): why. */
  readonly kernelNote: string | undefined;
  /**
   * The release whose modules a prepared rootfs must carry for this boot (the gateway's modprobe
   * loads them), or undefined when the kernel has everything built in and loads none.
   */
  readonly modulesRelease: string | undefined;
  /** The initramfs ('' for libkrunfw: libkrun boots no initramfs). */
  readonly initramfs: string;
  /** The embedded default rootfs (shared read-only; runs write to an overlay over it). */
  readonly rootfs: string;
  readonly built: boolean;
  /** Set when a cached build failed its integrity check and was built again: why. */
  readonly rebuiltBecause?: string | undefined;
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

/**
 * The content key: every input that changes the bytes of the artifacts. `boot` is the kernel to
 * boot (default: Debian's, whose modules the initramfs loads); a kernel with everything built in
 * gets an initramfs without modules.
 */
export function artifactKey(
  guest: GuestInputs,
  scripts: GuestScripts,
  agentSha256: string,
  boot: Pick<BootKernel, 'sha256' | 'modules'> = { sha256: guest.kernel.vmlinuzSha256, modules: 'loadable' },
): string {
  const loadable = boot.modules === 'loadable';
  const identity = {
    agent: agentSha256,
    format: ARTIFACT_FORMAT,
    busybox: guest.busybox.binarySha256,
    vmlinuz: boot.sha256,
    modulesDep: loadable ? guest.kernel.modulesDepSha256 : undefined,
    modules: loadable ? INITRAMFS_MODULES : [],
    scripts: [scripts.initramfsInit, scripts.ovmInit].map((s) =>
      createHash('sha256').update(s).digest('hex'),
    ),
  };
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 20);
}

/** What `complete` records about a finished build (besides the key that names its directory). */
interface BuildRecord {
  readonly key: string;
  readonly modules: readonly string[];
  /** Unset in a root-only build (libkrunfw), which has no initramfs. */
  readonly initramfsSha256?: string | undefined;
}

/**
 * The initramfs and default rootfs for `guest`, from the cache when their inputs are unchanged,
 * else built into a temporary directory and renamed into place (safe against concurrent builds).
 * A cached build is checked before it is used: the rootfs must be exactly the tree its inputs
 * describe (no file changed, none added, no other mode or owner: a setuid file planted in it would
 * run as its owner on the host too) and the initramfs must have the digest recorded at build time.
 * One that fails is removed and built again; `rebuiltBecause` says why.
 */
export async function ensureGuestArtifacts(
  env: HostEnvironment,
  guest: GuestInputs,
  options: { readonly kernel?: KernelChoice | undefined } = {},
): Promise<GuestArtifacts> {
  const boot = await resolveBootKernel(env, guest, options.kernel ?? kernelChoiceFromEnvironment());
  const scripts = await readGuestScripts();
  const agent = await ensureAgent(env, guest.arch);
  const key = artifactKey(guest, scripts, agent.sha256, boot);
  const parent = path.join(env.cacheDir, 'artifacts', DEB_ARCH[guest.arch]);
  const dir = path.join(parent, key);
  const result = (built: boolean, rebuiltBecause?: string): GuestArtifacts => ({
    arch: guest.arch,
    key,
    kernel: boot.image,
    kernelRelease: boot.release,
    kernelKind: boot.kind,
    kernelDescription: boot.description,
    kernelProvenance: boot.provenance,
    kernelNote: boot.note,
    modulesRelease: boot.modules === 'loadable' ? boot.release : undefined,
    initramfs: path.join(dir, INITRAMFS_FILE),
    rootfs: path.join(dir, ROOTFS_DIR),
    built,
    rebuiltBecause,
  });
  const busybox = await fs.readFile(guest.busybox.binary);
  const rootfs = defaultRootfsEntries(busybox, scripts.ovmInit, agent.bytes);
  const outcome = await buildOrReuse(env, guest.arch, key, rootfs, async () => {
    // A kernel with everything built in loads nothing: its initramfs only mounts the root.
    const order =
      boot.modules === 'loadable'
        ? resolveLoadOrder(
            await readModuleIndex(guest.kernel.modulesDir),
            INITRAMFS_MODULES,
            guest.kernel.release,
          )
        : [];
    const inputs = await loadInitramfsInputs(guest, scripts.initramfsInit, order);
    return { bytes: buildInitramfs(inputs), modules: order.map((m) => m.name) };
  });
  return result(outcome.built, outcome.rebuiltBecause);
}

/**
 * The default rootfs alone, for a backend whose kernel is libkrunfw's (libkrun): no kernel, no
 * initramfs, no modules, so nothing of the Linux host's provisioning is needed. Its busybox is the
 * package's (findBusybox). Cached and checked before use exactly as ensureGuestArtifacts does.
 */
export async function ensureRootArtifacts(
  env: HostEnvironment,
  busybox: BusyboxBinary,
): Promise<GuestArtifacts> {
  const scripts = await readGuestScripts();
  const agent = await ensureAgent(env, busybox.arch);
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        rootOnly: true,
        format: ARTIFACT_FORMAT,
        agent: agent.sha256,
        busybox: busybox.sha256,
        ovmInit: createHash('sha256').update(scripts.ovmInit).digest('hex'),
      }),
    )
    .digest('hex')
    .slice(0, 20);
  const rootfs = defaultRootfsEntries(busybox.bytes, scripts.ovmInit, agent.bytes);
  const outcome = await buildOrReuse(env, busybox.arch, key, rootfs, undefined);
  const dir = path.join(env.cacheDir, 'artifacts', DEB_ARCH[busybox.arch], key);
  return {
    arch: busybox.arch,
    key,
    kernel: '',
    kernelRelease: '',
    kernelKind: 'libkrunfw',
    kernelDescription: `the runtime's libkrunfw (busybox ${busybox.version} from the ${busybox.origin === 'package' ? 'package' : 'host cache'})`,
    kernelProvenance: undefined,
    kernelNote: undefined,
    modulesRelease: undefined,
    initramfs: '',
    rootfs: path.join(dir, ROOTFS_DIR),
    built: outcome.built,
    rebuiltBecause: outcome.rebuiltBecause,
  };
}

/**
 * The build named `key` in the artifact cache: reused when complete and intact, else (or when it
 * failed its check: rebuiltBecause) built into a temporary directory and renamed into place (safe
 * against concurrent builds). `initramfs` undefined: a root-only build, which has none.
 */
async function buildOrReuse(
  env: HostEnvironment,
  arch: GuestArch,
  key: string,
  rootfs: readonly TreeEntry[],
  initramfs: (() => Promise<{ bytes: Uint8Array; modules: string[] }>) | undefined,
): Promise<{ built: boolean; rebuiltBecause: string | undefined }> {
  const parent = path.join(env.cacheDir, 'artifacts', DEB_ARCH[arch]);
  const dir = path.join(parent, key);
  // Another user who can write the directory that holds the builds could swap a build for one of
  // their own between the check and the boot: every directory from <cache>/artifacts down is ours.
  await ensureTrustedCacheDir(path.join(env.cacheDir, 'artifacts'), parent);

  let rebuiltBecause: string | undefined;
  if (await isComplete(dir)) {
    const problems = await artifactProblems(dir, key, rootfs, { initramfs: initramfs !== undefined });
    if (problems.length === 0) return { built: false, rebuiltBecause: undefined };
    rebuiltBecause = `the cached guest artifacts in ${dir} failed their integrity check (${problems.join('; ')})`;
    await discard(dir);
  }

  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.mkdir(tmp, { mode: 0o755 });
  try {
    await fs.chmod(tmp, 0o755);
    let record: BuildRecord = { key, modules: [] };
    if (initramfs) {
      const built = await initramfs();
      await fs.writeFile(path.join(tmp, INITRAMFS_FILE), built.bytes, { mode: 0o644, flag: 'wx' });
      await fs.chmod(path.join(tmp, INITRAMFS_FILE), 0o644);
      record = { key, modules: built.modules, initramfsSha256: sha256(built.bytes) };
    }
    await writeTree(path.join(tmp, ROOTFS_DIR), rootfs);
    await fs.writeFile(path.join(tmp, COMPLETE_FILE), `${JSON.stringify(record)}\n`, { mode: 0o644 });
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
  return { built: true, rebuiltBecause };
}

/** File names in one build's directory. */
const INITRAMFS_FILE = 'initramfs.cpio.gz';
const ROOTFS_DIR = 'rootfs';
const COMPLETE_FILE = 'complete';

/** Why the build in `dir` must not be used; empty when it is exactly what `key` built. */
export async function artifactProblems(
  dir: string,
  key: string,
  rootfs: readonly TreeEntry[],
  expect: { readonly initramfs: boolean } = { initramfs: true },
): Promise<string[]> {
  const uid = process.getuid?.() ?? 0;
  const problems: string[] = [];
  const top = await fs.lstat(dir);
  if (!top.isDirectory() || top.uid !== uid || (top.mode & 0o7777) !== 0o755) {
    problems.push(`${dir} is not a 0755 directory owned by uid ${uid}`);
  }
  let record: Partial<BuildRecord> = {};
  try {
    const text = await readSmallFile(path.join(dir, COMPLETE_FILE), 64 * 1024);
    record = JSON.parse(text.toString('utf8')) as Partial<BuildRecord>;
  } catch {
    problems.push(`${COMPLETE_FILE} is unreadable`);
  }
  if (record.key !== key) problems.push(`${COMPLETE_FILE} names another build`);
  if (!expect.initramfs) {
    // A root-only build has none: one that appeared there was not put there by this build.
    if (await pathExists(path.join(dir, INITRAMFS_FILE)))
      problems.push(`${INITRAMFS_FILE} should not be there`);
  } else
    try {
      const initramfs = path.join(dir, INITRAMFS_FILE);
      const st = await fs.lstat(initramfs);
      if (!st.isFile() || st.uid !== uid || (st.mode & 0o7777) !== 0o644 || st.nlink !== 1) {
        problems.push(`${INITRAMFS_FILE} is not a 0644 file owned by uid ${uid}`);
      } else if (sha256(await readSmallFile(initramfs, 512 * 1024 * 1024)) !== record.initramfsSha256) {
        problems.push(`${INITRAMFS_FILE} has changed`);
      }
    } catch {
      problems.push(`${INITRAMFS_FILE} is unreadable`);
    }
  for (const p of await treeDifferences(path.join(dir, ROOTFS_DIR), rootfs, uid))
    problems.push(`rootfs: ${p}`);
  return problems;
}

/** Moves a failed build aside (so no new run boots it) and removes it. */
async function discard(dir: string): Promise<void> {
  const aside = `${dir}.bad-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await fs.rename(dir, aside);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return; // another process discarded it first
    throw err;
  }
  await fs.rm(aside, { recursive: true, force: true });
}

async function readSmallFile(file: string, maxBytes: number): Promise<Buffer> {
  const handle = await fs.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > maxBytes)
      throw new Error(`${file}: not a regular file of at most ${maxBytes} bytes`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function isComplete(dir: string): Promise<boolean> {
  return pathExists(path.join(dir, COMPLETE_FILE));
}
