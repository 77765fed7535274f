import { randomBytes } from 'node:crypto';
import { createReadStream, constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { dirInRoot, freshPathInRoot, inRoot, resolveInRoot } from '../archive/root-path.ts';
import { extractTar } from '../archive/tar-extract.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, OvmError, UsageError, VmError } from '../errors.ts';
import { ensureAgent, installAgent } from '../guest/agent-build.ts';
import type { GuestArch } from '../host/arch.ts';
import { lexists, pathExists, replaceDirectory } from '../host/fs.ts';
import { loadGuestInputs } from '../host/toolchain.ts';
import { takeInstanceLock } from '../instance/lock.ts';
import { ensureInstanceDir, instanceDir } from '../instance/runs.ts';
import { loadImageArchive } from '../oci/archive.ts';
import { BlobStore } from '../oci/blob-store.ts';
import { readDockerCredentials } from '../oci/credentials.ts';
import { type ImageHandle, type ProgressFn, platformFor, pullImage } from '../oci/image.ts';
import { formatReference, parseImageReference } from '../oci/reference.ts';
import { RegistryClient } from '../oci/registry.ts';
import { unpackImage } from '../oci/unpack.ts';
import { isAlive } from '../supervisor/identity.ts';
import { packageVersion } from '../version.ts';
import {
  AGENT_SANDBOX_FILE,
  agentSandboxInput,
  agentSandboxManifest,
  resolveAgentSandbox,
} from './agent-sandbox.ts';
import { ensureDebianBase, GATEWAY_PACKAGES, hashFile, installedPackages } from './base-debian.ts';
import type { BuilderVmRunner } from './base-vm.ts';
import {
  type ChartSpec,
  checkChartValues,
  type PackagedChart,
  packageChartDir,
  pullChart,
  readChartTgz,
} from './chart.ts';
import {
  type BuilderImage,
  type DebianBuilderKind,
  missingNetworkTools,
  missingToolsError,
  resolveExtraPackages,
} from './debian-builder.ts';
import { resolveDefaultImages, resolveGatewayImages } from './default-images.ts';
import { installRecordedGuestScripts } from './guest-scripts.ts';
import {
  defaultGatewayValues,
  type GatewayValues,
  HELMCHART_TEMPLATE,
  writeGatewayManifest,
} from './helmchart.ts';
import { describeK3s, ensureK3s } from './k3s.ts';
import { installKernelModules } from './kernel-modules.ts';
import { cleanRootfsKineDatastore } from './kine.ts';
import { ROOTFS_PATHS, rootfsDir } from './layout.ts';
import { gatherImages, type ImageSpec, writeImages } from './preload-images.ts';
import {
  type PreinitRecord,
  RECORD_FORMAT,
  type RootfsInput,
  type RootfsRecord,
  readRootfsRecord,
} from './record.ts';

export type BaseSpec =
  | {
      readonly kind: 'debian';
      readonly release: string;
      readonly mirror?: string | undefined;
      /** Who runs mmdebstrap: host, vm (a microVM) or auto (host when it has mmdebstrap). */
      readonly builder?: DebianBuilderKind | 'auto' | undefined;
      readonly builderImage?: BuilderImage | undefined;
    }
  | { readonly kind: 'oci'; readonly ref: string }
  | { readonly kind: 'archive'; readonly path: string };

export type { ImageSpec };

export interface PrepareRequest {
  readonly instance: string;
  readonly arch: GuestArch;
  readonly force: boolean;
  readonly base: BaseSpec;
  readonly k3s: { readonly path?: string | undefined; readonly sha256?: string | undefined };
  readonly chart: ChartSpec;
  /** Images to pre-load besides the gateway's own (the CLI's --image). */
  readonly images: readonly ImageSpec[];
  /**
   * Pre-load the images the gateway runs (its chart's gateway, supervisor and sandbox images, with
   * `gateway`'s overrides, and the agent-sandbox controller's when it is shipped), pulled and
   * verified before the rootfs is started: default true; the CLI's --no-images makes it false.
   * An image also given in `images` (an archive holding it under its name, or oci:REF) is not pulled.
   */
  readonly defaultImages?: boolean | undefined;
  readonly manifests: readonly string[];
  /**
   * Ship the agent-sandbox controller (its CRD, RBAC and StatefulSet), which OpenShell's sandboxes
   * need: default true; the CLI's --no-agent-sandbox makes it false.
   */
  readonly agentSandbox?: boolean | undefined;
  /**
   * Extra Debian packages for the base (the CLI's repeatable --package): names only, checked
   * against Debian's rule; a --base debian build only. Part of the base's cache key and recorded.
   */
  readonly packages?: readonly string[] | undefined;
  readonly gateway?: Partial<Pick<GatewayValues, 'image' | 'sandboxImage'>> | undefined;
}

export interface PrepareResult {
  readonly rootfs: string;
  readonly record: RootfsRecord;
  /** false: a complete rootfs was already there and --force was not given. */
  readonly built: boolean;
}

export interface BuildHooks {
  readonly progress?: ProgressFn | undefined;
  readonly warn?: ((message: string) => void) | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Boots the Debian vm builder's microVM (--debian-builder vm); the CLI passes one. */
  readonly runBuilderVm?: BuilderVmRunner | undefined;
  /**
   * prepare-rootfs --preinit: boots the complete rootfs (its record written, not yet in place)
   * once as a gateway; what it did goes into the record. A failure keeps the previous rootfs.
   */
  readonly preinit?: ((rootfs: string) => Promise<PreinitRecord>) | undefined;
}

const TMP_PREFIX = 'rootfs.tmp-';
const OLD_PREFIX = 'rootfs.old-';

/** Applets the guest init runs that a Debian base lacks (no init system, no DHCP client). */
const BUSYBOX_APPLETS = ['udhcpc', 'reboot', 'poweroff', 'halt'] as const;
/** Commands the guest init cannot do without. */
const REQUIRED_COMMANDS = ['sh', 'mount', 'ip', 'modprobe'] as const;

/**
 * Builds the gateway rootfs of `request.instance`: base system, k3s, guest scripts, kernel
 * modules, chart, manifests, images, then the build record. Everything is built in a temporary
 * sibling directory and renamed into place only when complete, so a failed or interrupted build
 * (even kill -9) never leaves a half rootfs where a good one was; leftovers of killed builds are
 * removed by the next one. Inputs are checked before the slow steps start.
 */
export async function prepareRootfs(
  env: HostEnvironment,
  request: PrepareRequest,
  hooks: BuildHooks = {},
): Promise<PrepareResult> {
  const t0 = performance.now();
  const progress = hooks.progress ?? (() => undefined);
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    hooks.warn?.(m);
  };
  const signal = hooks.signal;
  // Checked before anything else, an already prepared rootfs included: a bad name is never ignored.
  const extraPackages = resolveExtraPackages(request);
  const dir = instanceDir(env, request.instance);
  const dest = rootfsDir(env, request.instance);
  const createdDir = !(await lexists(dir));
  await ensureInstanceDir(env, request.instance, warn);
  await sweepStaleBuilds(dir, progress);

  if (!request.force && (await pathExists(dest))) {
    try {
      return { rootfs: dest, record: await readRootfsRecord(dest), built: false };
    } catch (err) {
      throw new UsageError(`${dest} exists but is not a complete rootfs: ${(err as Error).message}`, {
        hint: `rebuild it with --force: openshell-vm prepare-rootfs --name ${request.instance} --force`,
      });
    }
  }
  const release = await takeInstanceLock(dir, request.instance, 'preparing its rootfs');
  const tmp = path.join(dir, `${TMP_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    // Fast checks first: a bad input costs nothing.
    for (const image of request.images) {
      if (image.kind === 'archive' && !(await pathExists(image.path))) {
        throw new UsageError(`--image: ${image.path} does not exist`, {
          hint: 'give a .tar or .tar.zst image archive, or oci:REF',
        });
      }
      if (image.kind === 'oci') parseImageReference(image.ref);
    }
    for (const m of request.manifests) {
      if (!/\.ya?ml$/.test(m) || !(await pathExists(m))) {
        throw new UsageError(`--manifest: ${m} is not an existing .yaml file`, {
          hint: 'give Kubernetes manifests as .yaml files',
        });
      }
    }
    const agentSandbox = resolveAgentSandbox(request);
    const preloadDefaults = resolveDefaultImages(request);
    // The QEMU backend's kernel (cached by provisioning) needs its modules in the rootfs; a host
    // without it (macOS, libkrun only) builds without them, and a QEMU boot then refuses the rootfs.
    const guest = await loadGuestInputs(env, request.arch).catch((err: unknown) => {
      if (!(err instanceof HostError)) throw err;
      warn(
        `no QEMU guest kernel for ${request.arch} (${err.message}): kernel modules not installed; fine for libkrun, not for QEMU`,
      );
      return undefined;
    });
    const k3s = await ensureK3s(
      env,
      { arch: request.arch, localPath: request.k3s.path, expectedSha256: request.k3s.sha256 },
      { progress, warn, signal },
    );
    const store = new BlobStore(path.join(env.cacheDir, 'oci', 'blobs'));
    const clients = new Map<string, RegistryClient>();
    const client = async (registry: string) => {
      let c = clients.get(registry);
      if (!c) {
        c = new RegistryClient(registry, {
          insecure: env.insecureRegistries,
          credentials: await readDockerCredentials(env.dockerConfigPath, registry),
          signal,
        });
        clients.set(registry, c);
      }
      return c;
    };
    const chart = await resolveChart(request.chart, store, client, progress);
    const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
    checkChartValues(chart, template);
    // What the chart runs, resolved once for the HelmChart's values and the pre-loaded images;
    // pulled now (into the blob cache), so a registry out of reach fails the build before the slow
    // steps, and written into the rootfs below.
    const gatewayImages = resolveGatewayImages(chart, request.gateway ?? {}, { agentSandbox });
    const gathered = await gatherImages(request.images, preloadDefaults ? gatewayImages.images : [], {
      client,
      store,
      platform: platformFor(request.arch),
      progress,
      signal,
    });

    await fs.mkdir(tmp, { mode: 0o755 });
    const owners = process.getuid?.() === 0;
    if (!owners)
      warn('not running as root: files in the rootfs belong to this user, not to their owners in the base');
    const inputs: RootfsInput[] = [];
    let packages: Record<string, string> = {};

    // 1. Base system.
    const base = request.base;
    let baseSource: string;
    if (base.kind === 'debian') {
      const built = await ensureDebianBase(
        env,
        {
          release: base.release,
          arch: request.arch,
          packages: [...GATEWAY_PACKAGES, ...extraPackages],
          mirror: base.mirror,
          builder: base.builder,
          builderImage: base.builderImage,
        },
        { progress, signal, runVm: hooks.runBuilderVm },
      );
      progress(
        `unpacking the Debian ${base.release} base${built.built ? ` (built in ${(built.buildMs / 1000).toFixed(1)} s)` : ' (cached)'}`,
      );
      await extractTar(createReadStream(built.tarball), { root: tmp, owners, label: 'Debian base', signal });
      packages = await installedPackages(tmp);
      baseSource = `debian:${base.release}`;
      inputs.push({
        kind: 'base',
        source: `mmdebstrap ${base.release} by ${built.builder}${extraPackages.length ? `, with --package ${extraPackages.join(' ')}` : ''} (${built.sources.join('; ')})`,
        version: base.release,
        sha256: built.sha256,
      });
    } else {
      const platform = platformFor(request.arch);
      let image: ImageHandle;
      if (base.kind === 'oci') {
        const ref = parseImageReference(base.ref);
        image = await pullImage(await client(ref.registry), ref, platform, store, progress);
        baseSource = `oci:${formatReference(ref)}`;
      } else {
        image = await loadImageArchive(base.path, store, platform, progress);
        baseSource = `archive:${path.resolve(base.path)}`;
      }
      await unpackImage(image, store, tmp, { owners, signal, progress });
      // The gateway's network needs these; a base without them is refused here, not warned about.
      const missing = await missingNetworkTools(tmp);
      if (missing.length) throw missingToolsError(baseSource, missing);
      packages = await installedPackages(tmp);
      inputs.push({
        kind: 'base',
        source: image.source,
        version: image.manifest.digest,
        sha256: image.manifest.digest.slice(7),
      });
    }
    signal?.throwIfAborted();

    // 2. k3s and its multi-call links.
    progress(`installing k3s (${describeK3s(k3s)})`);
    const k3sDest = await freshPathInRoot(tmp, ROOTFS_PATHS.k3sBinary);
    await fs.copyFile(k3s.path, k3sDest, fsConstants.COPYFILE_EXCL);
    await fs.chmod(k3sDest, 0o755);
    for (const link of ['kubectl', 'crictl', 'ctr']) {
      await fs.symlink('k3s', await freshPathInRoot(tmp, `usr/local/bin/${link}`));
    }
    inputs.push({
      kind: 'k3s',
      source: k3s.source,
      version: k3s.version,
      sha256: k3s.sha256,
      path: ROOTFS_PATHS.k3sBinary,
      verification: k3s.verification,
    });

    // 3. Guest scripts (from this package, as they are) and the busybox applets they need.
    inputs.push(...(await installRecordedGuestScripts(tmp)));
    await installAgent(tmp, await ensureAgent(env, request.arch));
    await linkBusyboxApplets(tmp, warn);
    for (const d of [
      'proc',
      'sys',
      'dev',
      'run',
      'tmp',
      'etc/rancher/k3s',
      ROOTFS_PATHS.k3sManifests,
      ROOTFS_PATHS.k3sCharts,
      ROOTFS_PATHS.k3sImages,
      ROOTFS_PATHS.stagedManifests,
    ]) {
      await dirInRoot(tmp, d);
    }
    await fs.chmod(await dirInRoot(tmp, 'tmp'), 0o1777);

    // 4. Kernel modules of the QEMU backend's guest kernel.
    let kernelRelease: string | undefined;
    if (guest) {
      progress(`installing kernel modules for ${guest.kernel.release}`);
      const modules = await installKernelModules(guest, tmp);
      kernelRelease = modules.release;
      inputs.push({
        kind: 'kernel-modules',
        source: guest.kernel.package,
        version: guest.kernel.version,
        sha256: guest.kernel.modulesDepSha256,
        path: `${ROOTFS_PATHS.kernelModules}/${modules.release}`,
      });
      progress(`${modules.count} kernel modules (${(modules.bytes / 1048576).toFixed(1)} MiB)`);
    }

    // 5. Chart, HelmChart and manifests.
    await fs.writeFile(await freshPathInRoot(tmp, `${ROOTFS_PATHS.k3sCharts}/${chart.fileName}`), chart.tgz, {
      flag: 'wx',
    });
    inputs.push({
      kind: 'chart',
      source: chart.source,
      version: `${chart.name}-${chart.version}`,
      sha256: chart.sha256,
      path: `${ROOTFS_PATHS.k3sCharts}/${chart.fileName}`,
    });
    await fs.writeFile(await freshPathInRoot(tmp, ROOTFS_PATHS.stagedHelmChart), template, { flag: 'wx' });
    // The images as the chart resolves them: the gateway's tag defaults to the chart's appVersion,
    // the supervisor's follows the gateway's (--gateway-image R:v1 runs supervisor:v1 with it).
    const values: GatewayValues = {
      ...defaultGatewayValues(chart.fileName, chart.sha256),
      ...gatewayImages.values,
    };
    await fs.writeFile(
      await freshPathInRoot(tmp, ROOTFS_PATHS.gatewayValues),
      `${JSON.stringify(values, null, 2)}\n`,
      { flag: 'wx' },
    );
    await writeGatewayManifest(tmp);
    if (agentSandbox) {
      // Staged, and deployed now as gateway-init deploys staged manifests (a cold boot copies it again).
      const text = await agentSandboxManifest();
      for (const dir of [ROOTFS_PATHS.stagedManifests, ROOTFS_PATHS.k3sManifests]) {
        await fs.writeFile(await freshPathInRoot(tmp, `${dir}/${AGENT_SANDBOX_FILE}`), text, { flag: 'wx' });
      }
      inputs.push(agentSandboxInput(text));
    }
    for (const m of request.manifests) {
      const name = path.basename(m);
      const excl = fsConstants.COPYFILE_EXCL;
      await fs.copyFile(m, await freshPathInRoot(tmp, `${ROOTFS_PATHS.stagedManifests}/${name}`), excl);
      await fs.copyFile(m, await freshPathInRoot(tmp, `${ROOTFS_PATHS.k3sManifests}/${name}`), excl);
      inputs.push({
        kind: 'manifest',
        source: path.resolve(m),
        version: '',
        sha256: await hashFile(m),
        path: `${ROOTFS_PATHS.k3sManifests}/${name}`,
      });
    }

    // 6. Pre-loaded images (gathered above) into k3s's agent/images directory.
    const preloaded = await writeImages(gathered, tmp, store);
    inputs.push(...preloaded.inputs);

    // 7. Datastore hygiene (a no-op on a rootfs that never ran k3s) and the record.
    await cleanRootfsKineDatastore(tmp);
    let record: RootfsRecord = {
      format: RECORD_FORMAT,
      tool: { name: 'openshell-vm', version: packageVersion() },
      builtAt: new Date().toISOString(),
      buildMs: Math.round(performance.now() - t0),
      arch: request.arch,
      instance: request.instance,
      base: { kind: base.kind, source: baseSource },
      owners: owners ? 'preserved' : 'current-user',
      kernelRelease,
      inputs,
      packages,
      ...(extraPackages.length ? { extraPackages } : {}),
      images: preloaded.images,
      warnings,
    };
    const writeRecord = async () =>
      fs.writeFile(await freshPathInRoot(tmp, ROOTFS_PATHS.record), `${JSON.stringify(record, null, 2)}\n`, {
        flag: 'wx',
      });
    await writeRecord();
    signal?.throwIfAborted();

    // 7b. --preinit: one boot of the finished tree; the guest had it, so the record is written anew.
    if (hooks.preinit) {
      let preinit: PreinitRecord;
      try {
        preinit = await hooks.preinit(tmp);
      } catch (err) {
        if (signal?.aborted) throw err;
        throw preinitFailed(err, await pathExists(dest));
      }
      record = { ...record, buildMs: Math.round(performance.now() - t0), preinit };
      await writeRecord();
      signal?.throwIfAborted();
    }

    // 8. Swap in: the old rootfs goes aside first, so there is always a complete one to find.
    const old = path.join(dir, `${OLD_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
    await replaceDirectory(tmp, dest, old);
    progress(`rootfs ready at ${dest}`);
    return { rootfs: dest, record, built: true };
  } finally {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    await release();
    // A first build that failed leaves no empty instance directory behind.
    if (createdDir) await fs.rmdir(dir).catch(() => undefined);
  }
}

/** A failed --preinit, said as such (its error's class kept), with what is left where the rootfs goes. */
function preinitFailed(err: unknown, previousKept: boolean): OvmError {
  const e = err instanceof OvmError ? err : undefined;
  const left = previousKept ? 'the previous rootfs is kept' : 'no rootfs was left';
  const message = `--preinit failed: ${(err as Error).message}`;
  const options = { hint: e?.hint ? `${e.hint}; ${left}` : left, cause: err };
  if (e instanceof UsageError) return new UsageError(message, options);
  if (e instanceof HostError) return new HostError(message, options);
  return new VmError(message, options);
}

async function resolveChart(
  spec: ChartSpec,
  store: BlobStore,
  client: (registry: string) => Promise<RegistryClient>,
  progress: ProgressFn,
): Promise<PackagedChart> {
  if (spec.kind === 'dir') {
    progress(`packaging the chart in ${spec.path}`);
    return packageChartDir(spec.path);
  }
  if (spec.kind === 'tgz') return readChartTgz(await fs.readFile(spec.path), spec.path, 'tgz');
  const ref = parseImageReference(spec.ref);
  return pullChart(await client(ref.registry), spec.ref, store, progress);
}

async function linkBusyboxApplets(root: string, warn: (m: string) => void): Promise<void> {
  const dirs = ['usr/local/sbin', 'usr/local/bin', 'usr/sbin', 'usr/bin', 'sbin', 'bin'];
  // Look inside the root as the guest will: /sbin may be an absolute link to /usr/sbin.
  const has = async (cmd: string, where: readonly string[] = dirs) => {
    for (const d of where) {
      const dir = await resolveInRoot(root, d.split('/'), { create: false }).catch(() => undefined);
      if (dir && (await lexists(path.join(dir, cmd)))) return true;
    }
    return false;
  };
  const busybox = await has('busybox', ['bin', 'usr/bin']);
  for (const applet of BUSYBOX_APPLETS) {
    if (await has(applet)) continue;
    if (!busybox) {
      warn(`the base has neither ${applet} nor busybox: the guest init cannot use ${applet}`);
      continue;
    }
    await fs.symlink('/bin/busybox', await inRoot(root, `${ROOTFS_PATHS.appletDir}/${applet}`));
  }
  for (const cmd of REQUIRED_COMMANDS) {
    if (!(await has(cmd))) warn(`the base has no ${cmd}: the gateway's guest init needs it`);
  }
}

/** Removes what builds killed with SIGKILL left: temporary trees of dead builders, aside-moved old trees. */
async function sweepStaleBuilds(dir: string, progress: ProgressFn): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    const m = new RegExp(`^(?:${TMP_PREFIX}|${OLD_PREFIX})(\\d+)-`).exec(name);
    if (!m || isAlive(Number(m[1]))) continue;
    if (name.startsWith(OLD_PREFIX) && !(await pathExists(path.join(dir, 'rootfs')))) {
      // Killed between the two renames: the old tree is the only complete one.
      await fs.rename(path.join(dir, name), path.join(dir, 'rootfs'));
      progress(`restored the rootfs a killed build had moved aside`);
      continue;
    }
    progress(`removing ${name}, left by a build that was killed`);
    await fs.rm(path.join(dir, name), { recursive: true, force: true });
  }
}
