import * as v from 'valibot';
import YAML from 'yaml';
import { HostError } from '../errors.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { describeIssues, exactObject } from '../instance/schema.ts';
import { ROOTFS_PATHS } from './layout.ts';

/** Everything the HelmChart manifest depends on; stored in the rootfs so boots re-render the same. */
export interface GatewayValues {
  readonly chartFile: string;
  readonly chartSha256: string;
  readonly image: { readonly repository: string; readonly tag: string };
  /** The supervisor image the gateway copies into sandbox pods (the chart's supervisor.image). */
  readonly supervisorImage: { readonly repository: string; readonly tag: string };
  readonly sandboxImage: string;
  /**
   * For the gateway, supervisor and sandbox images alike. The pre-loaded images make IfNotPresent
   * right; Always would need the network at every start.
   */
  readonly pullPolicy: 'IfNotPresent' | 'Always' | 'Never';
  readonly dbUrl: string;
  readonly hostGatewayIp: string;
  readonly disableTls: boolean;
}

/** OpenShell's published images (the chart's own default registry). */
export const DEFAULT_GATEWAY_IMAGE = {
  repository: 'ghcr.io/nvidia/openshell/gateway',
  tag: 'latest',
} as const;
/** Same tag as the gateway's, as the chart keeps them (its supervisor tag defaults to the gateway's). */
export const DEFAULT_SUPERVISOR_IMAGE = {
  repository: 'ghcr.io/nvidia/openshell/supervisor',
  tag: 'latest',
} as const;
export const DEFAULT_SANDBOX_IMAGE = 'ghcr.io/nvidia/openshell-community/sandboxes/base:latest';

export function defaultGatewayValues(chartFile: string, chartSha256: string): GatewayValues {
  return {
    chartFile,
    chartSha256,
    image: DEFAULT_GATEWAY_IMAGE,
    supervisorImage: DEFAULT_SUPERVISOR_IMAGE,
    sandboxImage: DEFAULT_SANDBOX_IMAGE,
    pullPolicy: 'IfNotPresent',
    // As the original: the chart's default (sqlite:/var/openshell/openshell.db) is on the pod's
    // PersistentVolumeClaim, and PVCs on the virtio-fs root were unreliable; the database lives in
    // the pod's /tmp, so it is per pod, not persisted.
    dbUrl: 'sqlite:/tmp/openshell.db',
    hostGatewayIp: '',
    disableTls: false,
  };
}

/**
 * Values the HelmChart sets that are not the chart's: only these may be missing from its
 * values.yaml. chartChecksum is ours: the chart renders nothing from it (Helm passes unknown
 * values through), but it changes valuesContent whenever the packaged chart's bytes change, so k3s's
 * Helm controller installs a new chart under the same file name.
 */
export const OWN_VALUE_KEYS: readonly string[] = ['chartChecksum'];

/**
 * What the original openshell-vm set and this HelmChart does not, and why (keys as in values.yaml;
 * "909e9034a" is the last OpenShell commit with crates/openshell-vm, "3be2cd8a2" the chart the
 * fixture follows, the nearest to the default chart):
 */
export const VALUES_NOT_SET: Readonly<Record<string, string>> = {
  'server.sshHandshakeSecretName':
    'the chart at 909e9034a creates the Secret itself under its default name (a pre-install hook, sshHandshake.hook.enabled); charts from v0.0.111 on (the default among them) have no such key, so setting it would make prepare-rootfs refuse the default chart',
  'server.sshGatewayHost':
    'the original set "" and the chart at 909e9034a defaults to ""; later charts have no such key',
  'server.sshGatewayPort':
    'the original set 0 and the chart at 909e9034a defaults to 0; later charts have no such key',
  'server.disableGatewayAuth':
    'the original set false, the chart at 909e9034a defaults to false; later charts have no such key',
  'server.supervisorImage':
    'the original set it, but no chart has that key (it was silently dropped): the chart reads supervisor.image, which is set',
  'server.oidc.*': 'the original filled them with the chart defaults (no OIDC)',
  hostNetwork:
    'a value of the chart patch in the original pull request, never merged: no chart has it, and the chart runs the gateway with pod networking (what the original chose)',
  automountServiceAccountToken:
    'same: no chart has it; the chart mounts the service-account token, the original chose true',
  'kubeconfig.hostPath': 'same: no chart has it (only used with the token mount off)',
  'persistence.enabled':
    'same: no chart has it, the chart always claims a volume for /var/openshell; the database is kept off it by server.dbUrl (in /tmp, as the original)',
};

/** The value keys (dotted paths to leaves) a HelmChart manifest sets in its valuesContent. */
export function helmChartValueKeys(manifest: string): string[] {
  const doc = YAML.parse(manifest) as { spec?: { valuesContent?: unknown } } | null;
  const content = doc?.spec?.valuesContent;
  if (typeof content !== 'string') {
    throw new HostError('the HelmChart has no spec.valuesContent', {
      hint: 'this is a bug in openshell-vm: src/rootfs/manifests/openshell-helmchart.yaml is malformed',
    });
  }
  return leafKeys(YAML.parse(content));
}

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function leafKeys(value: unknown, prefix = ''): string[] {
  if (!isMap(value) || Object.keys(value).length === 0) return prefix ? [prefix] : [];
  return Object.entries(value).flatMap(([k, v]) => leafKeys(v, prefix ? `${prefix}.${k}` : k));
}

/**
 * The keys of `keys` a chart's values (its parsed values.yaml) does not have, besides
 * OWN_VALUE_KEYS. A key is there when its path resolves, or when the path reaches an empty map
 * below the top first (a free-form map such as podAnnotations: {}).
 */
export function missingValueKeys(chartValues: unknown, keys: readonly string[]): string[] {
  return keys.filter((key) => {
    if (OWN_VALUE_KEYS.includes(key)) return false;
    let node: unknown = chartValues;
    for (const [depth, part] of key.split('.').entries()) {
      if (!isMap(node)) return true;
      // An empty map inside the values is free-form; empty values as a whole are not.
      if (depth > 0 && Object.keys(node).length === 0) return false;
      if (!Object.hasOwn(node, part)) return true;
      node = node[part];
    }
    return false;
  });
}

const bounded = (maxChars: number) => v.pipe(v.string(), v.maxLength(maxChars));
const imageName = exactObject({ repository: bounded(512), tag: bounded(128) });
/** gateway-values.json as written by prepare-rootfs; the guest can edit it, so it is checked. */
const gatewayValuesSchema = exactObject({
  chartFile: bounded(256),
  chartSha256: bounded(64),
  image: imageName,
  supervisorImage: imageName,
  sandboxImage: bounded(640),
  pullPolicy: v.picklist(['IfNotPresent', 'Always', 'Never']),
  dbUrl: bounded(1024),
  hostGatewayIp: bounded(64),
  disableTls: v.boolean(),
});

export const HELMCHART_TEMPLATE = new URL('./manifests/openshell-helmchart.yaml', import.meta.url);

/**
 * Fills every placeholder of the HelmChart template. Strings are written as JSON strings (valid
 * YAML scalars, so no value can break the document); a placeholder left unfilled is an error, never
 * a manifest with `__NAME__` in it.
 */
export function renderHelmChart(template: string, values: GatewayValues): string {
  const str = (s: string) => JSON.stringify(s);
  const map: Record<string, string> = {
    CHART_FILE: values.chartFile,
    CHART_CHECKSUM: str(values.chartSha256),
    IMAGE_REPOSITORY: str(values.image.repository),
    IMAGE_TAG: str(values.image.tag),
    IMAGE_PULL_POLICY: values.pullPolicy,
    SUPERVISOR_REPOSITORY: str(values.supervisorImage.repository),
    SUPERVISOR_TAG: str(values.supervisorImage.tag),
    SANDBOX_IMAGE: str(values.sandboxImage),
    DB_URL: str(values.dbUrl),
    HOST_GATEWAY_IP: str(values.hostGatewayIp),
    DISABLE_TLS: String(values.disableTls),
  };
  if (!/^[\w.+-]+\.tgz$/.test(values.chartFile)) {
    throw new HostError(`chart file name '${values.chartFile}' is not NAME-VERSION.tgz`);
  }
  const out = template.replace(/__([A-Z_]+)__/g, (whole, name: string) => map[name] ?? whole);
  const left = out.match(/__[A-Z_]+__/g);
  if (left) {
    throw new HostError(
      `the HelmChart template has placeholders no value fills: ${[...new Set(left)].join(', ')}`,
      {
        hint: 'this is a bug in openshell-vm: the template and renderHelmChart disagree',
      },
    );
  }
  return out;
}

/**
 * Renders the staged HelmChart template with the staged values into k3s's auto-deploy
 * directory, both taken from `rootfs`. The build calls it, and so does every boot: the file is
 * only rewritten when its bytes would change. Returns true when it wrote. Every access goes
 * through GuestRoot: the guest owns this tree, and a symlink it planted (the template pointing at
 * a host secret, the manifest at a host file) is refused.
 */
export async function writeGatewayManifest(rootfs: string): Promise<boolean> {
  const root = new GuestRoot(rootfs);
  const staged = async (rel: string) => {
    const text = await root.readText(rel);
    if (text !== undefined) return text;
    throw new HostError(`${rootfs} has no staged HelmChart (${root.hostPath(rel)})`, {
      hint: 'rebuild the rootfs: openshell-vm prepare-rootfs --force',
    });
  };
  const template = await staged(ROOTFS_PATHS.stagedHelmChart);
  const valuesText = await staged(ROOTFS_PATHS.gatewayValues);
  let json: unknown;
  try {
    json = JSON.parse(valuesText);
  } catch (err) {
    throw new HostError(`${root.hostPath(ROOTFS_PATHS.gatewayValues)} is not JSON`, {
      hint: 'rebuild the rootfs: openshell-vm prepare-rootfs --force',
      cause: err,
    });
  }
  const parsed = v.safeParse(gatewayValuesSchema, json);
  if (!parsed.success) {
    // A rootfs built by an older openshell-vm (other fields), or edited from the guest.
    throw new HostError(
      terminalSafeLine(
        `${root.hostPath(ROOTFS_PATHS.gatewayValues)} does not match its schema (${describeIssues(parsed.issues)})`,
        { maxChars: 600 },
      ),
      { hint: 'rebuild the rootfs: openshell-vm prepare-rootfs --force' },
    );
  }
  const values: GatewayValues = parsed.output;
  const rendered = renderHelmChart(template, values);
  return root.writeFileIfChanged(`${ROOTFS_PATHS.k3sManifests}/openshell-helmchart.yaml`, rendered);
}
