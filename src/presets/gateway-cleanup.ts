import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { clearActiveGateway, removeGatewayFiles } from '../gateway/client-config.ts';
import { forgetMergedKubeconfig, removeKubeconfig } from '../gateway/kubeconfig.ts';
import { TLS_SECRETS_MANIFEST } from '../gateway/tls-secrets.ts';
import type { CleanupContext, CleanupResult, InstanceCleanup, ResetContext } from '../instance/cleanup.ts';
import { type CleanupReport, resetInstance } from '../instance/lifecycle.ts';
import { instanceDir } from '../instance/runs.ts';
import { removeSnapshot } from '../instance/snapshot.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import { rebuildCommand } from '../rootfs/record.ts';

/** The gateway preset's name in an instance's presets record (and its state's mode). */
export const GATEWAY_PRESET = 'gateway';

/** Where k3s writes its kubeconfig (--write-kubeconfig-mode=644), relative to the rootfs. */
export const K3S_KUBECONFIG = 'etc/rancher/k3s/k3s.yaml';

/** What --reset wipes in the gateway's rootfs: k3s's runtime state, its datastore and credentials. */
export const RESET_PATHS = [
  'var/lib/kubelet/pods',
  'var/lib/cni',
  'var/run',
  'run',
  'var/lib/rancher/k3s/server/db',
  'var/lib/rancher/k3s/server/tls',
  'var/lib/rancher/k3s/server/cred',
  'var/lib/rancher/k3s/server/token',
  'var/lib/rancher/k3s/server/node-token',
  'var/lib/rancher/k3s/agent/pod-manifests',
  'var/lib/rancher/k3s/agent/client-ca.crt',
  K3S_KUBECONFIG,
  `${ROOTFS_PATHS.k3sManifests}/${TLS_SECRETS_MANIFEST}`,
] as const;

/** The gateway's files outside the instance: the OpenShell CLI's metadata and mTLS, ~/.kube/NAME.yaml. */
async function removeHostCredentials(env: HostEnvironment, name: string): Promise<string[]> {
  const removed = [
    await removeGatewayFiles(env.openshellConfigDir, name),
    await removeKubeconfig(env.kubeDir, name),
  ];
  return removed.filter((p): p is string => p !== undefined);
}

/**
 * The gateway's cleanup. delete: active_gateway when it names the instance, the OpenShell CLI's
 * gateway directory, ~/.kube/NAME.yaml, and what --merge-kubeconfig added (while still ours).
 * --reset: k3s's datastore, certificates and tokens, kubelet pods, CNI state and run files in the
 * rootfs (through the GuestRoot: a planted symlink is refused or unlinked, never followed), the
 * same credentials and merged entries, and the saved VM state (snapshot/, snapshot.new-*); kept:
 * the base system, k3s, the chart and manifests, and the images (containerd's content store and
 * snapshots). Each removes only what exists.
 */
export const gatewayCleanup: InstanceCleanup = {
  preset: GATEWAY_PRESET,
  async onDelete(ctx: CleanupContext): Promise<CleanupResult> {
    const removed: string[] = [];
    const active = await clearActiveGateway(ctx.env.openshellConfigDir, ctx.name);
    if (active) removed.push(active);
    removed.push(...(await removeHostCredentials(ctx.env, ctx.name)));
    return { removed, takenOut: await forgetMergedKubeconfig(ctx.instanceDir, ctx.warn) };
  },
  async onReset(ctx: ResetContext): Promise<CleanupResult> {
    const removed: string[] = [];
    for (const rel of RESET_PATHS) {
      if (await ctx.root.remove(rel)) removed.push(ctx.root.hostPath(rel));
    }
    removed.push(...(await removeHostCredentials(ctx.env, ctx.name)));
    const takenOut = await forgetMergedKubeconfig(ctx.instanceDir, ctx.warn);
    await ctx.root.mkdirp('run');
    // A saved state holds the cluster (and the credentials) as they were: it goes too, with any
    // half-made one, here where the instance lock is held.
    removed.push(...(await removeSnapshot(ctx.instanceDir)));
    return { removed, takenOut };
  },
};

/**
 * `openshell-vm --reset`: the gateway's reset of instance `name` booted from `rootfs` (the
 * instance must be stopped). A refusal in the rootfs says how to rebuild it: the instance's own
 * with prepare-rootfs, one given with --rootfs by whoever made it.
 */
export async function resetGateway(
  env: HostEnvironment,
  name: string,
  rootfs: string,
  warn?: (message: string) => void,
): Promise<CleanupReport> {
  // The instance's own rootfs (rootfsDir in src/rootfs/layout.ts).
  const dir = instanceDir(env, name);
  const own = path.resolve(rootfs) === path.join(dir, 'rootfs');
  return resetInstance(env, name, {
    rootfs,
    refusedHint: own
      ? `rebuild the rootfs instead: ${rebuildCommand(name)}`
      : `rebuild the rootfs instead (${rootfs}, given with --rootfs)`,
    cleanups: [gatewayCleanup],
    warn,
  });
}
