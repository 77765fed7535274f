import { HostError } from '../errors.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { ROOTFS_PATHS } from './layout.ts';

/** Everything the HelmChart manifest depends on; stored in the rootfs so boots re-render the same. */
export interface GatewayValues {
  readonly chartFile: string;
  readonly chartSha256: string;
  readonly image: { readonly repository: string; readonly tag: string };
  readonly sandboxImage: string;
  /** The pre-loaded images make IfNotPresent right; Always would need the network at every start. */
  readonly pullPolicy: 'IfNotPresent' | 'Always' | 'Never';
  readonly dbUrl: string;
  readonly sshGatewayHost: string;
  readonly sshGatewayPort: number;
  readonly hostGatewayIp: string;
  readonly disableGatewayAuth: boolean;
  readonly disableTls: boolean;
}

/** OpenShell's published images (the chart's own default registry). */
export const DEFAULT_GATEWAY_IMAGE = {
  repository: 'ghcr.io/nvidia/openshell/gateway',
  tag: 'latest',
} as const;
export const DEFAULT_SANDBOX_IMAGE = 'ghcr.io/nvidia/openshell-community/sandboxes/base:latest';

export function defaultGatewayValues(chartFile: string, chartSha256: string): GatewayValues {
  return {
    chartFile,
    chartSha256,
    image: DEFAULT_GATEWAY_IMAGE,
    sandboxImage: DEFAULT_SANDBOX_IMAGE,
    pullPolicy: 'IfNotPresent',
    dbUrl: 'sqlite:/tmp/openshell.db',
    sshGatewayHost: '',
    sshGatewayPort: 0,
    hostGatewayIp: '',
    disableGatewayAuth: false,
    disableTls: false,
  };
}

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
    SANDBOX_IMAGE: str(values.sandboxImage),
    DB_URL: str(values.dbUrl),
    SSH_GATEWAY_HOST: str(values.sshGatewayHost),
    SSH_GATEWAY_PORT: String(values.sshGatewayPort),
    HOST_GATEWAY_IP: str(values.hostGatewayIp),
    DISABLE_GATEWAY_AUTH: String(values.disableGatewayAuth),
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
  let values: GatewayValues;
  try {
    values = JSON.parse(valuesText) as GatewayValues;
  } catch (err) {
    throw new HostError(`${root.hostPath(ROOTFS_PATHS.gatewayValues)} is not JSON`, {
      hint: 'rebuild the rootfs: openshell-vm prepare-rootfs --force',
      cause: err,
    });
  }
  const rendered = renderHelmChart(template, values);
  return root.writeFileIfChanged(`${ROOTFS_PATHS.k3sManifests}/openshell-helmchart.yaml`, rendered);
}
