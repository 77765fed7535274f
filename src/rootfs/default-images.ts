import YAML from 'yaml';
import { HostError, UsageError } from '../errors.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { formatReference, parseImageReference } from '../oci/reference.ts';
import { AGENT_SANDBOX_IMAGE } from './agent-sandbox.ts';
import type { PackagedChart } from './chart.ts';
import type { GatewayValues } from './helmchart.ts';
import type { ImageRole } from './record.ts';

/**
 * The images a gateway runs, as its chart will run them: the gateway, the supervisor the gateway
 * copies into sandbox pods, the sandboxes' default image and (when shipped) the agent-sandbox
 * controller. prepare-rootfs pre-loads them by default into k3s's airgap directory, as the
 * original openshell-vm did (crates/openshell-vm/scripts/build-rootfs.sh at 909e9034a pre-loaded
 * the gateway, the agent-sandbox controller and the community sandbox image), so a first boot
 * needs no registry. The names are resolved here, once, for both the HelmChart's values and the
 * pulls: what is pre-loaded is what the chart runs.
 */

export type { ImageRole };
/** default: the chart's (or openshell-vm's pin); given: from the user (--gateway-image, --sandbox-image, --image). */
export type ImageOrigin = 'default' | 'given';

/**
 * The chart's built-in supervisor repository (its `openshell.defaultSupervisorRepository` helper,
 * deploy/helm/openshell/templates/_helpers.tpl), used when supervisor.image.repository is empty.
 */
export const CHART_SUPERVISOR_REPOSITORY = 'ghcr.io/nvidia/openshell/supervisor';

/**
 * The digest of AGENT_SANDBOX_IMAGE (its multi-platform index) as OpenShell pinned it
 * (crates/openshell-driver-vm/runtime/pins.env at 909e9034a: "Tag: ...agent-sandbox-controller:v0.1.0").
 * The pull is refused if the tag now names other content.
 */
export const AGENT_SANDBOX_IMAGE_DIGEST =
  'sha256:ba71ea40ae0872791197badf2ab84f3f482df3902f1fce7ca9e076b1de9b57f6';

export interface GatewayImage {
  readonly role: ImageRole;
  /** The full name the guest asks for, as containerd writes it (docker.io/library/x:1): the archive's name. */
  readonly reference: string;
  /** The digest the pulled image (its index or manifest) must have; undefined: by tag, blobs verified. */
  readonly pinned: string | undefined;
  readonly source: ImageOrigin;
  /** Where the name comes from, for messages. */
  readonly from: string;
}

export interface GatewayImages {
  /** What the HelmChart sets (gateway-values.json). */
  readonly values: Pick<GatewayValues, 'image' | 'supervisorImage' | 'sandboxImage'>;
  /** Every image the gateway runs, in the order above. */
  readonly images: readonly GatewayImage[];
}

export interface ImageOverrides {
  /** --gateway-image R:T */
  readonly image?: { readonly repository: string; readonly tag: string } | undefined;
  /** --sandbox-image REF */
  readonly sandboxImage?: string | undefined;
}

type ChartImageSource = Pick<PackagedChart, 'name' | 'version' | 'appVersion' | 'valuesYaml' | 'source'>;

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** A value of the chart's values.yaml at a dotted path, as Helm's templates see it ('' when unset or null). */
function chartValue(values: unknown, key: string, chart: string): string {
  let node: unknown = values;
  for (const part of key.split('.')) node = isMap(node) ? node[part] : undefined;
  if (node === undefined || node === null) return '';
  if (typeof node === 'string') return node.trim();
  if (typeof node === 'number') return String(node);
  throw new UsageError(`chart ${chart}: ${key} in its values.yaml is not a string`, {
    hint: 'use a chart whose image values are strings, or give the image: --gateway-image R:T, --sandbox-image REF',
  });
}

/** The canonical reference of `text`, or a UsageError naming where the name came from. */
function canonical(text: string, from: string): { reference: string; digest: string | undefined } {
  try {
    const ref = parseImageReference(text);
    return { reference: formatReference(ref), digest: ref.digest };
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    throw new UsageError(`${from}: ${err.message}`, { hint: err.hint, cause: err });
  }
}

/**
 * The images `chart` runs with the overrides applied, resolved as the chart's templates resolve
 * them (_helpers.tpl): the gateway is image.repository:(image.tag or appVersion); the supervisor
 * supervisor.image.repository (or the chart's default repository):(supervisor.image.tag or the
 * gateway's tag, which the HelmChart sets); the sandboxes' image server.sandboxImage. The
 * agent-sandbox controller is openshell-vm's pin, when it is shipped.
 */
export function resolveGatewayImages(
  chart: ChartImageSource,
  overrides: ImageOverrides,
  options: { readonly agentSandbox: boolean },
): GatewayImages {
  const label = `${chart.name}-${chart.version} (${chart.source})`;
  let values: unknown = {};
  try {
    values = chart.valuesYaml === undefined ? {} : (YAML.parse(chart.valuesYaml) ?? {});
  } catch (err) {
    // checkChartValues said why first; this is for a caller that did not check.
    throw new UsageError(`chart ${label}: values.yaml is not valid YAML`, { cause: err });
  }
  const value = (key: string) => chartValue(values, key, label);
  const images: GatewayImage[] = [];
  const add = (role: ImageRole, name: string, source: ImageOrigin, from: string, pin?: string) => {
    const { reference, digest } = canonical(name, from);
    images.push({ role, reference, pinned: pin ?? digest, source, from });
  };

  let image: { repository: string; tag: string };
  if (overrides.image) {
    image = { repository: overrides.image.repository, tag: overrides.image.tag };
    add('gateway', `${image.repository}:${image.tag}`, 'given', '--gateway-image');
  } else {
    const repository = value('image.repository');
    const tag = value('image.tag') || chart.appVersion || '';
    if (!repository || !tag) {
      throw new UsageError(
        `chart ${label} names no gateway image: ${repository ? 'image.tag is empty and Chart.yaml has no appVersion' : 'image.repository is empty'}`,
        { hint: 'give the gateway image: --gateway-image REPOSITORY:TAG' },
      );
    }
    image = { repository, tag };
    const from = value('image.tag')
      ? "the chart's image.repository and image.tag"
      : "the chart's image.repository, tagged with its appVersion";
    add('gateway', `${repository}:${tag}`, 'default', from);
  }

  const chartSupervisorTag = value('supervisor.image.tag');
  const supervisorImage = {
    repository: value('supervisor.image.repository') || CHART_SUPERVISOR_REPOSITORY,
    tag: chartSupervisorTag || image.tag,
  };
  const followsGiven = !chartSupervisorTag && overrides.image !== undefined;
  add(
    'supervisor',
    `${supervisorImage.repository}:${supervisorImage.tag}`,
    followsGiven ? 'given' : 'default',
    followsGiven
      ? "the chart's supervisor.image.repository, with --gateway-image's tag (as the chart pairs them)"
      : `the chart's supervisor.image.repository and ${chartSupervisorTag ? 'supervisor.image.tag' : "the gateway's tag"}`,
  );

  let sandboxImage: string;
  if (overrides.sandboxImage) {
    sandboxImage = overrides.sandboxImage;
    add('sandbox', sandboxImage, 'given', '--sandbox-image');
  } else {
    sandboxImage = value('server.sandboxImage');
    if (!sandboxImage) {
      throw new UsageError(`chart ${label} names no sandbox image: server.sandboxImage is empty`, {
        hint: 'give the sandbox image: --sandbox-image REF',
      });
    }
    add('sandbox', sandboxImage, 'default', "the chart's server.sandboxImage");
  }

  if (options.agentSandbox) {
    add(
      'agent-sandbox',
      AGENT_SANDBOX_IMAGE,
      'default',
      "the agent-sandbox controller's manifest",
      AGENT_SANDBOX_IMAGE_DIGEST,
    );
  }
  return { values: { image, supervisorImage, sandboxImage }, images };
}

/**
 * Whether a build pre-loads the gateway's images (`defaultImages` of the request, default true;
 * the CLI's --no-images makes it false). The one check of the option, for the CLI and library
 * callers alike.
 */
export function resolveDefaultImages(request: { readonly defaultImages?: unknown }): boolean {
  const value = request.defaultImages ?? true;
  if (typeof value !== 'boolean') {
    throw new UsageError(`defaultImages: expected true or false, got ${JSON.stringify(value)}`, {
      hint: 'leave it out to pre-load the images the chart runs, or set false (the CLI: --no-images)',
    });
  }
  return value;
}

export interface ImageFailure {
  readonly image: GatewayImage;
  readonly error: Error;
}

/**
 * The error for images that could not be pulled: each named with its role and why (the registry's
 * words are not ours: made safe for a terminal), and the ways round it.
 */
export function imagesUnavailableError(failures: readonly ImageFailure[]): HostError {
  const lines = failures.map(({ image, error }) =>
    terminalSafeLine(`  ${image.role} image ${image.reference} (${image.from}): ${error.message}`, {
      maxChars: 600,
    }),
  );
  const n = failures.length;
  return new HostError(
    `${n === 1 ? 'an image' : `${n} images`} the gateway runs could not be pulled to pre-load ${n === 1 ? 'it' : 'them'}:\n${lines.join('\n')}`,
    {
      hint: `check the network and proxy settings; offline, give ${n === 1 ? 'it' : 'each'} as an archive file: --image FILE.tar (made where the registry can be reached, e.g. docker save REF -o FILE.tar; an archive holding the image under that name replaces its pull), or build without pre-loaded images: --no-images (k3s then pulls them at the gateway's first start)`,
      cause: failures[0]?.error,
    },
  );
}
