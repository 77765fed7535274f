import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { instanceDir } from '../instance/runs.ts';

/**
 * Every path openshell-vm writes inside a gateway rootfs (relative to its root), named once.
 * The guest scripts use the same paths.
 */
export const ROOTFS_PATHS = {
  /** The build record: every input with its source, version and SHA-256. */
  record: 'opt/openshell/rootfs.json',
  /** Values the HelmChart is rendered with (build time and every boot). */
  gatewayValues: 'opt/openshell/gateway-values.json',
  stagedManifests: 'opt/openshell/manifests',
  stagedHelmChart: 'opt/openshell/manifests/openshell-helmchart.yaml',
  k3sBinary: 'usr/local/bin/k3s',
  kubectl: 'usr/local/bin/kubectl',
  k3sData: 'var/lib/rancher/k3s',
  k3sManifests: 'var/lib/rancher/k3s/server/manifests',
  k3sCharts: 'var/lib/rancher/k3s/server/static/charts',
  k3sImages: 'var/lib/rancher/k3s/agent/images',
  kineDb: 'var/lib/rancher/k3s/server/db/state.db',
  kernelModules: 'lib/modules',
  /** Busybox applets the guest init needs that a Debian base does not provide. */
  appletDir: 'usr/local/sbin',
} as const;

/**
 * The instance's rootfs directory. Here, not in build.ts, so that a command that only needs the
 * path (booting a gateway, `rootfs info`) does not load the build and with it the OCI stack.
 */
export function rootfsDir(env: HostEnvironment, instance: string): string {
  return path.join(instanceDir(env, instance), 'rootfs');
}
