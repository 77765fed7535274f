import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { dirInRoot, inRoot } from '../archive/root-path.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { ensureAgent, installAgent } from '../guest/agent-build.ts';
import type { GuestArch } from '../host/arch.ts';
import { lexists, pathExists } from '../host/fs.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { loadGuestInputs } from '../host/toolchain.ts';
import { ensureInstanceDir } from '../instance/runs.ts';
import { loadImageArchive } from '../oci/archive.ts';
import { BlobStore } from '../oci/blob-store.ts';
import { readDockerCredentials } from '../oci/credentials.ts';
import { type ImageHandle, type ProgressFn, platformFor, pullImage } from '../oci/image.ts';
import { parseImageReference } from '../oci/reference.ts';
import { RegistryClient } from '../oci/registry.ts';
import { unpackImage } from '../oci/unpack.ts';
import { packageVersion } from '../version.ts';
import {
  aptMissingPackage,
  type BuilderImage,
  type InVmBuild,
  inVmBuildCommand,
  missingPackageError,
  rootHasCommand,
} from './debian-builder.ts';
import { installRecordedGuestScripts } from './guest-scripts.ts';
import { installKernelModules } from './kernel-modules.ts';
import { ROOTFS_PATHS, rootfsDir } from './layout.ts';
import { RECORD_FORMAT, type RootfsInput, type RootfsRecord, verifyRootfsForBoot } from './record.ts';

/** The instance the builder VM runs as (`list` shows it while it builds). */
export const BUILDER_INSTANCE = 'debian-builder';
/** The builder VM's memory: mmdebstrap's chroot lives in the guest's tmpfs. */
const BUILDER_MEMORY_MIB = 3072;
/** Busybox applets the guest init needs that a Debian image may lack (iproute2, a DHCP client; mount, not essential). */
const BUILDER_APPLETS = [
  'mount',
  'umount',
  'hostname',
  'ip',
  'udhcpc',
  'modprobe',
  'reboot',
  'poweroff',
  'halt',
] as const;
const STDERR_TAIL_LINES = 20;
/** How much of one line of the builder's stderr is kept. */
const STDERR_LINE_MAX_CHARS = 4096;

/** What the builder VM runs: a `run`-style microVM on `rootfs`, with gvproxy networking. */
export interface BuilderVmRequest {
  readonly instance: string;
  readonly rootfs: string;
  readonly arch: GuestArch;
  readonly memoryMib: number;
  readonly command: readonly string[];
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly signal?: AbortSignal | undefined;
  readonly progress: ProgressFn;
}

/**
 * Boots the builder VM and runs its command to the end: the command's exit code. The layer above
 * supplies it (the CLI: the library's run(), src/api/run.ts), since src/rootfs/ sits below the
 * lifecycle and may not import it.
 */
export type BuilderVmRunner = (request: BuilderVmRequest) => Promise<number>;

export interface VmBuildResult {
  readonly sha256: string;
  /** What built it, for the build record: the image's source and digest. */
  readonly builder: string;
}

/**
 * Builds a Debian base tar into `tarball` inside a microVM: the builder image's root (made
 * bootable and cached as the `debian-builder` instance's rootfs) boots on the run lifecycle
 * (src/api/run.ts) with gvproxy networking, runs inVmBuildCommand, and the tar mmdebstrap writes to
 * its stdout comes through the guest agent straight into `tarball`, hashed as it streams (never
 * held whole). The tar is the guest's output: nothing reads it but the safe extractor.
 */
export async function buildBaseInVm(
  env: HostEnvironment,
  build: InVmBuild & { readonly arch: GuestArch; readonly image: BuilderImage },
  tarball: string,
  options: {
    readonly progress?: ProgressFn | undefined;
    readonly signal?: AbortSignal | undefined;
    readonly runVm?: BuilderVmRunner | undefined;
  },
): Promise<VmBuildResult> {
  const runVm = options.runVm;
  if (!runVm) {
    throw new HostError('building a Debian base in a microVM needs a VM runner, and none was given', {
      hint: 'use the openshell-vm prepare-rootfs command, or --debian-builder host where mmdebstrap is installed',
    });
  }
  const progress = options.progress ?? (() => undefined);
  const { root, source } = await ensureBuilderRoot(env, build.arch, build.image, progress, options.signal);
  const hash = createHash('sha256');
  const file = createWriteStream(tarball, { flags: 'wx', mode: 0o644 });
  const out = new Writable({
    write(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      file.write(chunk, done);
    },
    final(done) {
      file.end(done);
    },
  });
  const tail: string[] = [];
  let partial = '';
  const err = new Writable({
    write(chunk: Buffer, _encoding, done) {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      // The guest's stderr: a line without an end is cut (memory bounded), every line made safe.
      if (partial.length > STDERR_LINE_MAX_CHARS) {
        lines.push(partial);
        partial = '';
      }
      for (const raw of lines) {
        const line = terminalSafeLine(raw, { maxChars: STDERR_LINE_MAX_CHARS });
        tail.push(line);
        if (tail.length > STDERR_TAIL_LINES) tail.shift();
        if (/^[IEW]: /.test(line)) progress(`builder: ${line.slice(3)}`);
      }
      done();
    },
  });
  const command = inVmBuildCommand(build);
  progress(`booting the builder microVM (${source})`);
  let exitCode: number;
  try {
    exitCode = await runVm({
      instance: BUILDER_INSTANCE,
      rootfs: root,
      arch: build.arch,
      memoryMib: BUILDER_MEMORY_MIB,
      command,
      stdout: out,
      stderr: err,
      signal: options.signal,
      progress,
    });
  } finally {
    out.end();
    await finished(out).catch(() => undefined);
    await finished(file).catch(() => undefined);
  }
  if (exitCode !== 0) {
    const missing = aptMissingPackage(tail, build.packages);
    if (missing) throw missingPackageError(missing, build.release, tail);
    throw new HostError(
      `building the Debian ${build.release} base in the builder microVM failed: mmdebstrap exited with ${exitCode}\n${tail.join('\n')}`,
      {
        hint: 'see the lines above; check that this host reaches the Debian mirror (the guest goes through gvproxy)',
      },
    );
  }
  return { sha256: hash.digest('hex'), builder: source };
}

/**
 * The builder VM's root: the builder image unpacked, with this tool's guest init, agent, busybox
 * applets and (QEMU) kernel modules, and a build record, so that the run lifecycle boots it like
 * any prepared rootfs (under a throwaway overlay: the builder's root never changes). Cached as the
 * `debian-builder` instance's rootfs and rebuilt when the image or this tool's guest files change.
 */
async function ensureBuilderRoot(
  env: HostEnvironment,
  arch: GuestArch,
  spec: BuilderImage,
  progress: ProgressFn,
  signal: AbortSignal | undefined,
): Promise<{ readonly root: string; readonly source: string }> {
  const store = new BlobStore(path.join(env.cacheDir, 'oci', 'blobs'));
  const platform = platformFor(arch);
  let image: ImageHandle;
  if (spec.kind === 'oci') {
    const ref = parseImageReference(spec.ref);
    const client = new RegistryClient(ref.registry, {
      insecure: env.insecureRegistries,
      credentials: await readDockerCredentials(env.dockerConfigPath, ref.registry),
      signal,
    });
    image = await pullImage(client, ref, platform, store, progress);
  } else {
    image = await loadImageArchive(spec.path, store, platform, progress);
  }
  const source = `${image.source} (${image.manifest.digest})`;
  const guest = await loadGuestInputs(env, arch);
  const root = rootfsDir(env, BUILDER_INSTANCE);
  if (await pathExists(root)) {
    const record = await verifyRootfsForBoot(root, { kernelRelease: guest.kernel.release }).catch(
      () => undefined,
    );
    const base = record?.inputs.find((i) => i.kind === 'base');
    if (record && record.arch === arch && base?.version === image.manifest.digest) {
      await installAgent(root, await ensureAgent(env, arch));
      return { root, source };
    }
  }
  const dir = path.dirname(root);
  await ensureInstanceDir(env, BUILDER_INSTANCE, progress);
  const tmp = path.join(dir, `rootfs.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const t0 = performance.now();
  progress(`making the builder root from ${image.source}`);
  try {
    await fs.mkdir(tmp, { mode: 0o755 });
    const owners = process.getuid?.() === 0;
    await unpackImage(image, store, tmp, { owners, signal, progress });
    const inputs: RootfsInput[] = [
      {
        kind: 'base',
        source: image.source,
        version: image.manifest.digest,
        sha256: image.manifest.digest.slice(7),
      },
    ];
    inputs.push(...(await installRecordedGuestScripts(tmp)));
    await installAgent(tmp, await ensureAgent(env, arch));
    await installBusybox(tmp, guest.busybox.binary);
    // Mount points the init uses (an image made with mmdebstrap --skip=output/dev has no /dev).
    for (const d of ['proc', 'sys', 'dev', 'run', 'tmp']) await dirInRoot(tmp, d);
    const modules = await installKernelModules(guest, tmp);
    inputs.push({
      kind: 'kernel-modules',
      source: guest.kernel.package,
      version: guest.kernel.version,
      sha256: guest.kernel.modulesDepSha256,
      path: `${ROOTFS_PATHS.kernelModules}/${modules.release}`,
    });
    const record: RootfsRecord = {
      format: RECORD_FORMAT,
      tool: { name: 'openshell-vm', version: packageVersion() },
      builtAt: new Date().toISOString(),
      buildMs: Math.round(performance.now() - t0),
      arch,
      instance: BUILDER_INSTANCE,
      base: { kind: spec.kind, source: image.source },
      owners: owners ? 'preserved' : 'current-user',
      kernelRelease: modules.release,
      inputs,
      packages: {},
      warnings: [],
    };
    await fs.mkdir(await inRoot(tmp, 'opt/openshell'), { recursive: true });
    await fs.writeFile(await inRoot(tmp, ROOTFS_PATHS.record), `${JSON.stringify(record, null, 2)}\n`, {
      flag: 'wx',
    });
    signal?.throwIfAborted();
    await fs.rm(root, { recursive: true, force: true });
    await fs.rename(tmp, root);
    return { root, source };
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** This package's busybox in the root, and the applets the init needs that the image lacks. */
async function installBusybox(root: string, binary: string): Promise<void> {
  const busybox = `/${ROOTFS_PATHS.appletDir}/busybox`;
  const dest = await inRoot(root, busybox.slice(1));
  if (!(await lexists(dest))) {
    await fs.copyFile(binary, dest, fsConstants.COPYFILE_EXCL);
    await fs.chmod(dest, 0o755);
  }
  for (const applet of BUILDER_APPLETS) {
    if (await rootHasCommand(root, applet)) continue;
    await fs.symlink(busybox, await inRoot(root, `${ROOTFS_PATHS.appletDir}/${applet}`));
  }
}
