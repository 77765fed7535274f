import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { CommandError, HostError, UsageError } from '../errors.ts';
import { DEB_ARCH, type GuestArch, hostArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import type { ProgressFn } from '../oci/image.ts';
import { runCommand } from '../supervisor/command.ts';
import { debianSourcesFor, readHostAptSources } from './apt-sources.ts';
import type { BuilderVmRunner } from './base-vm.ts';
import {
  aptMissingPackage,
  type BuilderImage,
  chooseDebianBuilder,
  type DebianBuilderKind,
  defaultBuilderImage,
  hostHasMmdebstrap,
  missingPackageError,
} from './debian-builder.ts';

/** What the gateway needs in its base system, beyond Debian's required packages. */
export const GATEWAY_PACKAGES = [
  'busybox-static',
  'ca-certificates',
  'conntrack',
  'e2fsprogs',
  'iproute2',
  'iptables',
  'kmod',
  'nftables',
  'openssl',
  'sqlite3',
  'zstd',
] as const;

/** Bump when the mmdebstrap invocation changes in a way the key does not show. */
const BASE_FORMAT = 1;

export interface DebianBaseSpec {
  readonly release: string;
  readonly arch: GuestArch;
  readonly packages: readonly string[];
  /** A Debian mirror URL; default: the host's own Debian apt sources, aimed at `release`. */
  readonly mirror?: string | undefined;
  /** host (mmdebstrap here), vm (mmdebstrap in a microVM) or auto (default: host when it has mmdebstrap). */
  readonly builder?: DebianBuilderKind | 'auto' | undefined;
  /** The vm builder's image (default: Debian's image of the release). */
  readonly builderImage?: BuilderImage | undefined;
}

/** mmdebstrap's options that shape the tar, the same on both builders (so the key holds for both). */
export const MMDEBSTRAP_SHAPE = [
  '--skip=output/dev',
  // Documentation and translations have no use in the guest.
  '--dpkgopt=path-exclude=/usr/share/man/*',
  '--dpkgopt=path-exclude=/usr/share/doc/*',
  '--dpkgopt=path-include=/usr/share/doc/*/copyright',
  '--dpkgopt=path-exclude=/usr/share/locale/*',
  '--dpkgopt=path-exclude=/usr/share/info/*',
] as const;

export interface DebianBase {
  /** A tar of the root filesystem, as mmdebstrap made it. */
  readonly tarball: string;
  readonly key: string;
  readonly sources: readonly string[];
  readonly sha256: string;
  readonly built: boolean;
  readonly buildMs: number;
  /** What made the tar: 'host mmdebstrap', or the builder microVM's image and digest. */
  readonly builder: string;
}

const HOST_BUILDER = 'host mmdebstrap';

const RELEASE = /^[a-z][a-z0-9-]{1,30}$/;

/** The release and Debian sources to use: from the spec, else from the host (a Debian host). */
export async function resolveDebianSources(
  spec: DebianBaseSpec,
  etcDir = '/etc',
): Promise<{ readonly sources: readonly string[]; readonly aptOptions: readonly string[] }> {
  if (!RELEASE.test(spec.release)) {
    throw new UsageError(`--base debian:${spec.release}: not a Debian release name`, {
      hint: 'use a codename such as bookworm or trixie',
    });
  }
  if (spec.mirror) {
    if (!/^https?:\/\/\S+$/.test(spec.mirror)) {
      throw new UsageError(`--mirror: '${spec.mirror}' is not an http(s) URL`, {
        hint: 'give the URL of a Debian mirror',
      });
    }
    return {
      sources: [`deb ${spec.mirror} ${spec.release} main`, `deb ${spec.mirror} ${spec.release}-updates main`],
      aptOptions: [],
    };
  }
  const hostRelease = await hostDebianRelease(etcDir);
  if (!hostRelease) {
    throw new UsageError('--base debian needs Debian package sources, and this host is not Debian', {
      hint: 'give --mirror URL (a Debian mirror), or use --base oci:REF or --base archive:PATH',
    });
  }
  const sources = debianSourcesFor(
    await readHostAptSources(path.join(etcDir, 'apt')),
    hostRelease,
    spec.release,
  );
  if (!sources.length) {
    throw new HostError(`no Debian '${hostRelease}' sources with component main in ${etcDir}/apt`, {
      hint: 'give --mirror URL (a Debian mirror)',
    });
  }
  return { sources, aptOptions: await hostAptOptions() };
}

async function hostDebianRelease(etcDir: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await fs.readFile(path.join(etcDir, 'os-release'), 'utf8');
  } catch {
    return undefined;
  }
  const field = (name: string) => new RegExp(`^${name}="?([^"\\n]*)"?$`, 'm').exec(text)?.[1];
  return field('ID') === 'debian' ? field('VERSION_CODENAME') : undefined;
}

/** The host's apt settings a guest build must share: proxies and snapshot validity. */
async function hostAptOptions(): Promise<string[]> {
  let dump = '';
  try {
    dump = await runCommand(['apt-config', 'dump'], { purpose: 'reading the apt configuration' });
  } catch {
    return [];
  }
  const wanted = /^Acquire::(?:https?::Proxy(?:::[^ ]+)?|Check-Valid-Until|Check-Date) /;
  return dump
    .split('\n')
    .filter((l) => wanted.test(l))
    .map((l) => l.replace(/;$/, ''));
}

/**
 * A Debian root filesystem for the gateway, built with mmdebstrap into a tar in the cache
 * (`$cache/rootfs-bases/`), keyed by everything that changes its content: release, architecture,
 * package list and sources. A cache hit costs nothing; a miss takes about 30 s here.
 */
export async function ensureDebianBase(
  env: HostEnvironment,
  spec: DebianBaseSpec,
  options: {
    readonly progress?: ProgressFn | undefined;
    readonly signal?: AbortSignal | undefined;
    /** Boots the vm builder's microVM (the CLI passes the library's run()). */
    readonly runVm?: BuilderVmRunner | undefined;
  } = {},
): Promise<DebianBase> {
  const { sources, aptOptions } = await resolveDebianSources(spec);
  const packages = [...new Set(spec.packages)].sort();
  const debArch = DEB_ARCH[spec.arch];
  const key = debianBaseKey({ release: spec.release, debArch, packages, sources });
  const dir = path.join(env.cacheDir, 'rootfs-bases');
  const tarball = path.join(dir, `debian-${spec.release}-${debArch}-${key}.tar`);
  const shaFile = `${tarball}.sha256`;
  const builderFile = `${tarball}.builder`;
  if ((await pathExists(tarball)) && (await pathExists(shaFile))) {
    return {
      tarball,
      key,
      sources,
      sha256: (await fs.readFile(shaFile, 'utf8')).trim(),
      built: false,
      buildMs: 0,
      builder: (await fs.readFile(builderFile, 'utf8').catch(() => HOST_BUILDER)).trim(),
    };
  }
  const kind = chooseDebianBuilder({
    requested: spec.builder ?? 'auto',
    platform: process.platform,
    hostHasMmdebstrap: await hostHasMmdebstrap(),
  });
  if (kind === 'vm') {
    await fs.mkdir(dir, { recursive: true });
    const tmp = `${tarball}.tmp-${process.pid}-${randomBytes(4).toString('hex')}.tar`;
    const image = spec.builderImage ?? defaultBuilderImage(spec.release);
    const t0 = performance.now();
    options.progress?.(
      `building the Debian ${spec.release} ${debArch} base in a microVM (${packages.length} extra packages)`,
    );
    try {
      const { buildBaseInVm } = await import('./base-vm.ts');
      const vm = await buildBaseInVm(
        env,
        {
          release: spec.release,
          debArch,
          packages,
          sources,
          aptOptions,
          shape: MMDEBSTRAP_SHAPE,
          arch: spec.arch,
          image,
        },
        tmp,
        options,
      );
      const builder = `microVM from ${vm.builder}`;
      await fs.writeFile(builderFile, `${builder}\n`);
      await fs.writeFile(shaFile, `${vm.sha256}\n`);
      await fs.rename(tmp, tarball);
      return {
        tarball,
        key,
        sources,
        sha256: vm.sha256,
        built: true,
        buildMs: Math.round(performance.now() - t0),
        builder,
      };
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  if (spec.arch !== hostArch() && !(await pathExists(`/proc/sys/fs/binfmt_misc/qemu-${spec.arch}`))) {
    throw new HostError(
      `building a ${spec.arch} Debian base on this ${hostArch()} host needs qemu-user emulation`,
      {
        hint: 'apt-get install qemu-user-static binfmt-support, or use --base oci:REF (no emulation needed)',
      },
    );
  }
  await fs.mkdir(dir, { recursive: true });
  const tmp = `${tarball}.tmp-${process.pid}-${randomBytes(4).toString('hex')}.tar`;
  const argv = hostMmdebstrapArgv({ release: spec.release, debArch, packages, sources, aptOptions }, tmp);
  const t0 = performance.now();
  options.progress?.(
    `building the Debian ${spec.release} ${debArch} base with mmdebstrap (${packages.length} extra packages)`,
  );
  try {
    await runCommand(argv, {
      purpose: `building the Debian ${spec.release} base`,
      installHint: 'apt-get install mmdebstrap (scripts/provision-host.sh installs it)',
      signal: options.signal,
      onStderrLine: (line) => {
        if (/^[IEW]: /.test(line)) options.progress?.(`mmdebstrap: ${line.slice(3)}`);
      },
    }).catch((err: unknown) => {
      if (!(err instanceof CommandError)) throw err;
      const tail = err.failure.stderrTail.split('\n');
      const missing = aptMissingPackage(tail, packages);
      throw missing ? missingPackageError(missing, spec.release, tail) : err;
    });
    const sha256 = await hashFile(tmp);
    await fs.writeFile(builderFile, `${HOST_BUILDER}\n`);
    await fs.writeFile(shaFile, `${sha256}\n`);
    await fs.rename(tmp, tarball);
    return {
      tarball,
      key,
      sources,
      sha256,
      built: true,
      buildMs: Math.round(performance.now() - t0),
      builder: HOST_BUILDER,
    };
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/**
 * The base's cache key: everything that changes its content. The package list is sorted and
 * deduplicated first, so the same set in another order (or with repeats) is the same base, and
 * any other set (an extra --package) is another.
 */
export function debianBaseKey(facts: {
  readonly release: string;
  readonly debArch: string;
  readonly packages: readonly string[];
  readonly sources: readonly string[];
}): string {
  const packages = [...new Set(facts.packages)].sort();
  const { release, debArch, sources } = facts;
  return createHash('sha256')
    .update(JSON.stringify({ format: BASE_FORMAT, release, debArch, packages, sources }))
    .digest('hex')
    .slice(0, 16);
}

/** The host build's mmdebstrap command, writing the tar to `output`. */
export function hostMmdebstrapArgv(
  build: {
    readonly release: string;
    readonly debArch: string;
    readonly packages: readonly string[];
    readonly sources: readonly string[];
    readonly aptOptions: readonly string[];
  },
  output: string,
): readonly string[] {
  return [
    'mmdebstrap',
    '--variant=minbase',
    `--architectures=${build.debArch}`,
    `--include=${build.packages.join(',')}`,
    '--format=tar',
    ...MMDEBSTRAP_SHAPE,
    ...build.aptOptions.map((o) => `--aptopt=${o}`),
    build.release,
    output,
    ...build.sources,
  ];
}

export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await fs.open(file);
  try {
    for await (const chunk of handle.createReadStream()) hash.update(chunk as Buffer);
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** `Package Version` of every installed package, from a root's dpkg status file. */
export async function installedPackages(root: string): Promise<Record<string, string>> {
  let text: string;
  try {
    text = await fs.readFile(path.join(root, 'var/lib/dpkg/status'), 'utf8');
  } catch {
    return {};
  }
  const out: Record<string, string> = {};
  for (const stanza of text.split('\n\n')) {
    const pkg = /^Package: (.+)$/m.exec(stanza)?.[1];
    const version = /^Version: (.+)$/m.exec(stanza)?.[1];
    const status = /^Status: .* installed$/m.test(stanza);
    if (pkg && version && status) out[pkg] = version;
  }
  return out;
}
