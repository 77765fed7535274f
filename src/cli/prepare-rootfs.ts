import fs from 'node:fs/promises';
import { readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { defaultGuestArch, parseGuestArch } from '../host/arch.ts';
import { parseInstanceName } from '../instance/runs.ts';
import { parseImageReference } from '../oci/reference.ts';
import { integer } from '../options/exec-options.ts';
import type { BuilderVmRunner } from '../rootfs/base-vm.ts';
import { type BaseSpec, type ImageSpec, prepareRootfs } from '../rootfs/build.ts';
import { DEFAULT_CHART, parseChartSpec } from '../rootfs/chart.ts';
import { parseBuilderImage, parseDebianBuilder } from '../rootfs/debian-builder.ts';
import { type OptionSpec, parseArgs, single } from './args.ts';
import { Reporter } from './reporter.ts';
import { withSignals } from './signals.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'name', kind: 'value' },
  { name: 'force', kind: 'flag' },
  { name: 'arch', kind: 'value' },
  { name: 'base', kind: 'value' },
  { name: 'mirror', kind: 'value' },
  { name: 'debian-builder', kind: 'value' },
  { name: 'builder-image', kind: 'value' },
  { name: 'k3s', kind: 'value' },
  { name: 'k3s-sha256', kind: 'value' },
  { name: 'chart', kind: 'value' },
  { name: 'image', kind: 'value', repeatable: true },
  { name: 'no-images', kind: 'flag' },
  { name: 'manifest', kind: 'value', repeatable: true },
  { name: 'no-agent-sandbox', kind: 'flag' },
  { name: 'package', kind: 'value', repeatable: true },
  { name: 'gateway-image', kind: 'value' },
  { name: 'sandbox-image', kind: 'value' },
  { name: 'preinit', kind: 'flag' },
  { name: 'preinit-timeout', kind: 'value' },
  { name: 'json', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'events', kind: 'value' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const PREPARE_HELP = `Usage: openshell-vm prepare-rootfs [OPTIONS]

Builds the gateway root filesystem of an instance (<data>/instances/NAME/rootfs): base system,
k3s, guest scripts, kernel modules, Helm chart, HelmChart manifest (every value it sets must be
in the chart's values.yaml), the agent-sandbox controller, pre-loaded images, and the build
record /opt/openshell/rootfs.json. The build happens beside the old rootfs and replaces it
only when complete: an interrupted or failed build leaves the previous rootfs as it was.

The images the gateway runs are pre-loaded into k3s's airgap directory by default, so a first
start needs no registry: the chart's gateway (image.repository, tagged image.tag or the chart's
appVersion), supervisor (supervisor.image) and sandbox (server.sandboxImage) images, with
--gateway-image and --sandbox-image in their place when given, and the agent-sandbox
controller's (pinned by digest) unless --no-agent-sandbox. Each is pulled for the guest's
platform and verified against its digests before the build starts; the build record lists each
with its name, digest and source (default or given). Offline, give each as an archive with
--image FILE.tar (an archive holding an image under its name replaces that image's pull), or
leave them out with --no-images.

Options:
  --name NAME            instance (default: default)
  --force                rebuild even if the instance already has a complete rootfs
  --arch x86_64|aarch64  guest architecture (default: the host's)
  --base debian[:REL]    Debian via mmdebstrap, from this host's apt sources (default on Debian)
  --base oci:REF         an image pulled from a registry (default elsewhere)
  --base archive:PATH    a docker save or OCI layout tarball (.tar, .tar.gz, .tar.zst)
  --mirror URL           Debian mirror for --base debian (default: this host's sources)
  --debian-builder host|vm|auto
                         who runs mmdebstrap for --base debian: this host, or a microVM that
                         openshell-vm boots (default auto: host when it has mmdebstrap, else vm)
  --builder-image oci:REF|archive:PATH
                         the vm builder's Debian image (default: oci:docker.io/library/debian:REL)
  --k3s PATH             a local k3s binary instead of downloading the pinned release
  --k3s-sha256 HEX       the SHA-256 the --k3s binary must have
  --chart SPEC           chart directory, chart .tgz, or oci:REF (default: ${DEFAULT_CHART})
  --image SPEC           pre-load an image: a .tar/.tar.zst archive or oci:REF (repeatable)
  --no-images            do not pre-load the gateway's images (k3s pulls them when it first
                         runs them); --image images are still pre-loaded
  --manifest FILE        also deploy this Kubernetes manifest (repeatable)
  --package NAME         also install this Debian package in the base (repeatable; --base debian
                         only): a name by Debian's rule (a-z 0-9 + - ., two characters or more,
                         starting with a letter or digit), no =VERSION; a different list is a
                         different cached base, and the build record lists them
  --no-agent-sandbox     leave out the agent-sandbox controller (its Sandbox CRD and StatefulSet,
                         registry.k8s.io/agent-sandbox/agent-sandbox-controller:v0.1.0), which
                         OpenShell's sandboxes need and which is shipped by default
  --gateway-image R:T    the gateway image the chart runs (default: the chart's image.repository,
                         tagged image.tag or its appVersion); the supervisor gets its tag
  --sandbox-image REF    the sandbox image (default: the chart's server.sandboxImage)
  --preinit              boot the built rootfs once as a gateway before it replaces the old one:
                         a new PKI is baked into /opt/openshell/pki, k3s runs until the gateway's
                         Health says HEALTHY (images imported, chart installed), is stopped in
                         order, kine's runtime records are cleaned and /opt/openshell/.initialized
                         is written; every boot then takes the pre-baked path. The boot runs as
                         instance NAME-preinit with throw-away host files; it fails the build if
                         the gateway does not get ready (the previous rootfs is kept)
  --preinit-timeout S    seconds the preinit boot may take to get ready (default 600)
  --json                 print the build record as JSON on stdout
  -q, --quiet            no progress lines
  --events FILE          progress as JSON lines

Environment: OPENSHELL_VM_K3S_BASE_URL (a k3s release mirror), OPENSHELL_VM_INSECURE_REGISTRIES,
DOCKER_CONFIG (registry credentials).
`;

export async function prepareRootfsCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, OPTIONS, false, 'prepare-rootfs');
  if (args.flags.has('help')) {
    process.stdout.write(PREPARE_HELP);
    return 0;
  }
  const instance = parseInstanceName(single(args, 'name'));
  const archText = single(args, 'arch');
  const arch = archText === undefined ? defaultGuestArch() : parseGuestArch(archText);
  const base = await parseBase(single(args, 'base'), single(args, 'mirror'), {
    builder: single(args, 'debian-builder'),
    image: single(args, 'builder-image'),
  });
  const chart = await parseChartSpec(single(args, 'chart') ?? DEFAULT_CHART);
  const images = (args.values.get('image') ?? []).map(parseImageSpec);
  const gatewayImage = single(args, 'gateway-image');
  const sandboxImage = single(args, 'sandbox-image');
  let image: { repository: string; tag: string } | undefined;
  if (gatewayImage) {
    const ref = parseImageReference(gatewayImage);
    const at = gatewayImage.lastIndexOf(':');
    image = {
      repository: gatewayImage.slice(0, at > gatewayImage.lastIndexOf('/') ? at : undefined),
      tag: ref.tag ?? 'latest',
    };
  }
  if (sandboxImage) parseImageReference(sandboxImage);
  const preinit = args.flags.has('preinit');
  const preinitTimeout = single(args, 'preinit-timeout');
  if (preinitTimeout !== undefined && !preinit) {
    throw new UsageError('--preinit-timeout without --preinit', {
      hint: 'add --preinit, or drop --preinit-timeout',
    });
  }
  const preinitTimeoutMs =
    integer('--preinit-timeout', preinitTimeout ?? '600', { min: 1, max: 86_400 }, 'seconds') * 1000;

  const reporter = new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
  const env = readEnvironment();
  // The preinit's boot instance is checked before anything is built.
  if (preinit) await (await import('../api/preinit.ts')).checkPreinitName(instance);
  const result = await withSignals(
    reporter,
    'stopping the build (the previous rootfs stays as it was)',
    (signal) =>
      prepareRootfs(
        env,
        {
          instance,
          arch,
          force: args.flags.has('force'),
          base,
          k3s: { path: single(args, 'k3s'), sha256: single(args, 'k3s-sha256') },
          chart,
          images,
          defaultImages: !args.flags.has('no-images'),
          manifests: args.values.get('manifest') ?? [],
          agentSandbox: !args.flags.has('no-agent-sandbox'),
          packages: args.values.get('package') ?? [],
          gateway: { ...(image ? { image } : {}), ...(sandboxImage ? { sandboxImage } : {}) },
        },
        {
          progress: (m) => reporter.progress(m),
          warn: (m) => reporter.warn(m),
          signal,
          runBuilderVm: runBuilderVm,
          preinit: preinit
            ? async (rootfs) => {
                // The gateway's boot code loads only for a preinit.
                const { preinitRootfs } = await import('../api/preinit.ts');
                return preinitRootfs(rootfs, {
                  instance,
                  arch,
                  readyTimeoutMs: preinitTimeoutMs,
                  signal,
                  progress: (m) => reporter.progress(m),
                  warn: (m) => reporter.warn(m),
                });
              }
            : undefined,
        },
      ),
  );
  if (!result.built) {
    reporter.notice(
      `${result.rootfs} is already prepared (built ${result.record.builtAt}); use --force to rebuild it`,
    );
  } else {
    reporter.notice(`prepared ${result.rootfs} in ${(result.record.buildMs / 1000).toFixed(1)} s`);
  }
  if (args.flags.has('json')) process.stdout.write(`${JSON.stringify(result.record, null, 2)}\n`);
  return 0;
}

async function parseBase(
  text: string | undefined,
  mirror: string | undefined,
  builderArgs: { readonly builder: string | undefined; readonly image: string | undefined },
): Promise<BaseSpec> {
  const value = text ?? (await defaultBase());
  const builder = parseDebianBuilder(builderArgs.builder);
  const builderImage = builderArgs.image === undefined ? undefined : parseBuilderImage(builderArgs.image);
  const isDebian = value === 'debian' || value.startsWith('debian:');
  if (!isDebian && (builderArgs.builder !== undefined || builderImage)) {
    throw new UsageError(
      `--${builderArgs.builder !== undefined ? 'debian-builder' : 'builder-image'} applies to --base debian only`,
      { hint: 'drop it, or use --base debian[:RELEASE]' },
    );
  }
  if (builderImage && builder === 'host') {
    throw new UsageError("--builder-image is the vm builder's image, and --debian-builder is host", {
      hint: 'drop --builder-image, or use --debian-builder vm',
    });
  }
  if (value === 'debian' || value.startsWith('debian:')) {
    const release = value.slice('debian:'.length) || (await hostDebianCodename()) || 'bookworm';
    if (!/^[a-z][a-z0-9-]{1,30}$/.test(release)) {
      throw new UsageError(`--base debian:${release}: not a Debian release name`, {
        hint: 'use a codename such as bookworm or trixie',
      });
    }
    return { kind: 'debian', release, mirror, builder, builderImage };
  }
  if (mirror)
    throw new UsageError('--mirror applies to --base debian only', {
      hint: 'drop --mirror, or use --base debian',
    });
  if (value.startsWith('oci:')) {
    const ref = value.slice(4).replace(/^\/\//, '');
    parseImageReference(ref);
    return { kind: 'oci', ref };
  }
  if (value.startsWith('archive:')) return { kind: 'archive', path: value.slice('archive:'.length) };
  throw new UsageError(`--base: unknown base '${value}'`, {
    hint: 'use debian[:RELEASE], oci:REF or archive:PATH',
  });
}

/** The Debian vm builder's microVM: the library's run(), the same lifecycle as `openshell-vm run`. */
const runBuilderVm: BuilderVmRunner = async (request) => {
  const { run } = await import('../api/run.ts');
  const result = await run({
    command: request.command,
    name: request.instance,
    rootfs: request.rootfs,
    arch: request.arch,
    network: 'gvproxy',
    memory: request.memoryMib,
    stdout: request.stdout,
    stderr: request.stderr,
    signal: request.signal,
    onEvent: (e) => {
      if (e.type === 'stage' || e.type === 'progress') request.progress(`builder VM: ${e.message}`);
      else if (e.type === 'warning') request.progress(`builder VM warning: ${e.message}`);
    },
  });
  return result.exitCode;
};

function parseImageSpec(text: string): ImageSpec {
  if (text.startsWith('oci:')) {
    const ref = text.slice(4).replace(/^\/\//, '');
    parseImageReference(ref);
    return { kind: 'oci', ref };
  }
  if (!/\.tar(\.zst|\.gz)?$/.test(text)) {
    throw new UsageError(
      `--image: '${text}' is neither an image archive (.tar, .tar.zst, .tar.gz) nor oci:REF`,
      {
        hint: 'save an image with docker save, or name one with oci:REF',
      },
    );
  }
  return { kind: 'archive', path: text };
}

/** debian where the host has Debian or Ubuntu package tools; an OCI Debian image elsewhere. */
async function defaultBase(): Promise<string> {
  const os = await fs.readFile('/etc/os-release', 'utf8').catch(() => '');
  return /^ID(_LIKE)?="?[^"\n]*\b(debian|ubuntu)\b/m.test(os)
    ? 'debian'
    : 'oci:docker.io/library/debian:bookworm-slim';
}

async function hostDebianCodename(): Promise<string | undefined> {
  const os = await fs.readFile('/etc/os-release', 'utf8').catch(() => '');
  return /^ID=debian$/m.test(os) ? /^VERSION_CODENAME=(.+)$/m.exec(os)?.[1] : undefined;
}
