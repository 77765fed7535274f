import path from 'node:path';
import { resolveInRoot } from '../archive/root-path.ts';
import { UsageError } from '../errors.ts';
import { lexists } from '../host/fs.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { parseImageReference } from '../oci/reference.ts';

/**
 * How a Debian base is built: `host` runs mmdebstrap on this machine; `vm` boots a microVM whose
 * root is a Debian image and runs mmdebstrap there, the base tar streamed out through the guest
 * agent (base-vm.ts). Chosen by data: the request, and whether the host has mmdebstrap.
 */
export type DebianBuilderKind = 'host' | 'vm';
export const DEBIAN_BUILDERS: readonly DebianBuilderKind[] = ['host', 'vm'];

/** The image the `vm` builder boots: a Debian OCI reference or a local image archive. */
export type BuilderImage =
  | { readonly kind: 'oci'; readonly ref: string }
  | { readonly kind: 'archive'; readonly path: string };

/** The default builder image for a release: Debian's own, resolved by the OCI reference parser. */
export function defaultBuilderImage(release: string): BuilderImage {
  const ref = `docker.io/library/debian:${release}`;
  parseImageReference(ref);
  return { kind: 'oci', ref };
}

/** --debian-builder's value, checked. */
export function parseDebianBuilder(text: string | undefined): DebianBuilderKind | 'auto' {
  if (text === undefined || text === 'auto') return 'auto';
  if ((DEBIAN_BUILDERS as readonly string[]).includes(text)) return text as DebianBuilderKind;
  throw new UsageError(`--debian-builder: '${text}' is not host, vm or auto`, {
    hint: 'host runs mmdebstrap here; vm builds the base inside a microVM (no mmdebstrap needed)',
  });
}

/** --builder-image's value: oci:REF or archive:PATH. */
export function parseBuilderImage(text: string): BuilderImage {
  if (text.startsWith('oci:')) {
    const ref = text.slice(4).replace(/^\/\//, '');
    parseImageReference(ref);
    return { kind: 'oci', ref };
  }
  if (text.startsWith('archive:') && text.length > 'archive:'.length) {
    return { kind: 'archive', path: text.slice('archive:'.length) };
  }
  throw new UsageError(`--builder-image: '${text}' is neither oci:REF nor archive:PATH`, {
    hint: 'e.g. --builder-image oci:docker.io/library/debian:bookworm, or archive:debian.tar (docker save)',
  });
}

/**
 * The builder to use: the one asked for, else host where mmdebstrap is installed (never on
 * macOS, which has no mmdebstrap), else vm. Asking for host without mmdebstrap is refused.
 */
export function chooseDebianBuilder(facts: {
  readonly requested: DebianBuilderKind | 'auto';
  readonly platform: NodeJS.Platform;
  readonly hostHasMmdebstrap: boolean;
}): DebianBuilderKind {
  const canHost = facts.platform === 'linux' && facts.hostHasMmdebstrap;
  if (facts.requested === 'host' && !canHost) {
    throw new UsageError(
      facts.platform === 'linux'
        ? '--debian-builder host needs mmdebstrap on this host, and it is not installed'
        : `--debian-builder host needs mmdebstrap, which does not run on ${facts.platform}`,
      { hint: 'use --debian-builder vm (a microVM builds the base), or apt-get install mmdebstrap' },
    );
  }
  if (facts.requested !== 'auto') return facts.requested;
  return canHost ? 'host' : 'vm';
}

/** Whether `mmdebstrap` is on this host's PATH. */
export async function hostHasMmdebstrap(envPath = process.env.PATH ?? ''): Promise<boolean> {
  for (const dir of envPath.split(path.delimiter)) {
    if (dir && (await lexists(path.join(dir, 'mmdebstrap')))) return true;
  }
  return false;
}

/** A word for sh, quoted so that it stays one word whatever it holds. */
export function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

export interface InVmBuild {
  readonly release: string;
  readonly debArch: string;
  readonly packages: readonly string[];
  readonly sources: readonly string[];
  /** apt options (`Name "value"`), as the host's build passes them. */
  readonly aptOptions: readonly string[];
  /** mmdebstrap's options that shape the tar, shared with the host build (mmdebstrapShape). */
  readonly shape: readonly string[];
}

/**
 * The builder VM's command: `sh -c SCRIPT`. apt-get update and install mmdebstrap when the image
 * lacks it (its messages to stderr: stdout carries only the tar), then mmdebstrap with the same
 * options as the host's build, writing the tar to stdout (`-`).
 */
export function inVmBuildCommand(build: InVmBuild): readonly string[] {
  const apt = build.aptOptions.flatMap((o) => ['-o', aptOptionAssignment(o)]);
  const mmdebstrap = [
    'mmdebstrap',
    '--variant=minbase',
    `--architectures=${build.debArch}`,
    `--include=${build.packages.join(',')}`,
    '--format=tar',
    ...build.shape,
    ...build.aptOptions.map((o) => `--aptopt=${o}`),
    build.release,
    '-',
    ...build.sources,
  ];
  const q = (words: readonly string[]) => words.map(shellWord).join(' ');
  const script = [
    'set -eu',
    'export DEBIAN_FRONTEND=noninteractive',
    'if ! command -v mmdebstrap >/dev/null 2>&1; then',
    '  echo "I: installing mmdebstrap in the builder" >&2',
    `  ${q(['apt-get', ...apt, 'update'])} >&2`,
    `  ${q(['apt-get', ...apt, 'install', '-y', '--no-install-recommends', 'mmdebstrap', 'ca-certificates'])} >&2`,
    'fi',
    `exec ${q(mmdebstrap)}`,
  ].join('\n');
  return ['/bin/sh', '-c', script];
}

/** `Acquire::Check-Valid-Until "false"` as apt-get -o takes it: `Acquire::Check-Valid-Until=false`. */
export function aptOptionAssignment(option: string): string {
  const m = /^(\S+) "?(.*?)"?$/.exec(option);
  if (!m)
    throw new UsageError(`apt option '${option}' is not 'Name "value"'`, { hint: 'check apt-config dump' });
  return `${m[1]}=${m[2]}`;
}

/** The commands a gateway base must carry, with the Debian package that has each. */
export const NETWORK_TOOLS = [
  { command: 'ip', package: 'iproute2' },
  { command: 'nft', package: 'nftables' },
  { command: 'iptables', package: 'iptables' },
] as const;

const COMMAND_DIRS = ['usr/local/sbin', 'usr/local/bin', 'usr/sbin', 'usr/bin', 'sbin', 'bin'];

/** Whether `root` has `command` in a PATH directory, looked up inside the root as the guest would. */
export async function rootHasCommand(root: string, command: string): Promise<boolean> {
  for (const d of COMMAND_DIRS) {
    const dir = await resolveInRoot(root, d.split('/'), { create: false }).catch(() => undefined);
    if (dir && (await lexists(path.join(dir, command)))) return true;
  }
  return false;
}

/** NETWORK_TOOLS that `root` lacks. */
export async function missingNetworkTools(root: string): Promise<(typeof NETWORK_TOOLS)[number][]> {
  const out: (typeof NETWORK_TOOLS)[number][] = [];
  for (const tool of NETWORK_TOOLS) if (!(await rootHasCommand(root, tool.command))) out.push(tool);
  return out;
}

/** The refusal of a base without the gateway's network tools: each missing one and the fix. */
export function missingToolsError(
  base: string,
  missing: readonly (typeof NETWORK_TOOLS)[number][],
): UsageError {
  const list = missing.map((t) => `${t.command} (${t.package})`).join(', ');
  return new UsageError(`--base ${base} lacks what the gateway's network needs: ${list}`, {
    hint: `use --base debian (its build includes them), or a base image with ${missing.map((t) => t.package).join(' ')} installed`,
  });
}

/**
 * Debian's rule for a package name (Policy 5.6.1): lowercase letters, digits, `+`, `-` and `.`,
 * at least two characters, starting with a letter or digit. One thing more: no trailing `-`,
 * which apt-get install reads as "remove this package".
 */
export const DEBIAN_PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]*[a-z0-9+.]$/;
const PACKAGE_RULE =
  'a Debian package name: lowercase letters, digits, + - and ., at least two characters, starting with a letter or digit (and not ending in -); names only, no =VERSION or /RELEASE';

/**
 * The extra Debian packages of a build (`packages` of the request; the CLI's repeatable
 * --package): each checked against DEBIAN_PACKAGE_NAME, deduplicated and sorted (the order the
 * base's cache key sees). The one check of the option, for the CLI and library callers alike.
 * Only a Debian base can have them: an oci: or archive: base is unpacked as it is, with no apt.
 */
export function resolveExtraPackages(request: {
  readonly packages?: unknown;
  readonly base: { readonly kind: string };
}): readonly string[] {
  const value = request.packages ?? [];
  if (!Array.isArray(value)) {
    throw new UsageError(`packages: expected a list of package names, got ${JSON.stringify(value)}`, {
      hint: 'give an array of Debian package names (the CLI: --package NAME, repeatable)',
    });
  }
  for (const name of value) {
    if (typeof name !== 'string' || !DEBIAN_PACKAGE_NAME.test(name)) {
      throw new UsageError(`--package ${JSON.stringify(name)}: not ${PACKAGE_RULE}`, {
        hint: 'e.g. --package python3-grpcio; apt-cache search WORD finds a package by what it does',
      });
    }
  }
  const packages = [...new Set(value as string[])].sort();
  if (packages.length && request.base.kind !== 'debian') {
    throw new UsageError(
      `--package ${packages.join(', ')}: a --base ${request.base.kind}: image is unpacked as it is, and nothing installs packages into it`,
      {
        hint: 'use --base debian[:RELEASE] (mmdebstrap installs them), or a base image that already has them',
      },
    );
  }
  return packages;
}

/**
 * The package apt could not find, from mmdebstrap's stderr tail (`E: Unable to locate package
 * NAME`, `E: Package 'NAME' has no installation candidate`), with apt's line; undefined when the
 * failure is something else. Only names of the build's own list count: the tail is the apt
 * world's output, not ours to quote as a name.
 */
export function aptMissingPackage(
  tail: readonly string[],
  packages: readonly string[],
): { readonly name: string; readonly line: string } | undefined {
  const wanted = new Set(packages);
  for (const line of tail) {
    const m =
      /Unable to locate package (\S+)/.exec(line) ??
      /Package '?([^' ]+)'? has no installation candidate/.exec(line);
    const name = m?.[1];
    if (name && wanted.has(name)) return { name, line: line.trim() };
  }
  return undefined;
}

/** The refusal of a build whose package list names a package apt cannot find. */
export function missingPackageError(
  missing: { readonly name: string; readonly line: string },
  release: string,
  tail: readonly string[],
): UsageError {
  // apt's output (from the builder microVM: a guest's) is printed only as safe text.
  const safe = (line: string) => terminalSafeLine(line, { maxChars: 300 });
  return new UsageError(
    `the Debian ${release} sources have no package '${missing.name}' (apt: ${safe(missing.line)})\n${tail
      .slice(-8)
      .map((l) => `    ${safe(l)}`)
      .join('\n')}`,
    {
      hint: `check the name (apt-cache policy ${missing.name} on a ${release} system), or drop --package ${missing.name}; the previous rootfs was left as it was`,
    },
  );
}
