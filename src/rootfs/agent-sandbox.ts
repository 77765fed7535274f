import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.ts';
import { ROOTFS_PATHS } from './layout.ts';
import type { RootfsInput } from './record.ts';

/**
 * The agent-sandbox controller prepare-rootfs ships by default (src/rootfs/manifests/agent-sandbox.yaml):
 * the Sandbox CRD, its RBAC and the controller's StatefulSet. The file name is the original's, so
 * gateway-init's rules for staged `agent-*.yaml` manifests (deploy, remove when no longer staged,
 * drop host networking) apply to it.
 */
export const AGENT_SANDBOX_FILE = 'agent-sandbox.yaml';
export const AGENT_SANDBOX_MANIFEST = new URL(`./manifests/${AGENT_SANDBOX_FILE}`, import.meta.url);
/** The controller image OpenShell pinned (deploy/kube/manifests/agent-sandbox.yaml at 909e9034a). */
export const AGENT_SANDBOX_IMAGE = 'registry.k8s.io/agent-sandbox/agent-sandbox-controller:v0.1.0';

/**
 * The VM's patch, as the original applied it: the controller keeps pod networking, so lines that
 * would put it on the host's network (`hostNetwork: true`, `dnsPolicy: ClusterFirstWithHostNet`)
 * are dropped. Our own copy has neither; the patch guards against one that gains them.
 */
export function patchAgentSandboxForVm(text: string): string {
  return text
    .split('\n')
    .filter((line) => !/hostNetwork:\s*true|dnsPolicy:\s*ClusterFirstWithHostNet/.test(line))
    .join('\n');
}

/** The manifest as prepare-rootfs stages it: our copy, patched for the VM. */
export async function agentSandboxManifest(): Promise<string> {
  return patchAgentSandboxForVm(await fs.readFile(AGENT_SANDBOX_MANIFEST, 'utf8'));
}

/** The build record's entry for the staged manifest: its presence says the controller is in. */
export function agentSandboxInput(text: string): RootfsInput {
  return {
    kind: 'manifest',
    source: `openshell-vm: agent-sandbox controller (${AGENT_SANDBOX_IMAGE})`,
    version: AGENT_SANDBOX_IMAGE.slice(AGENT_SANDBOX_IMAGE.lastIndexOf(':') + 1),
    sha256: createHash('sha256').update(text).digest('hex'),
    path: `${ROOTFS_PATHS.k3sManifests}/${AGENT_SANDBOX_FILE}`,
  };
}

/**
 * Whether a build ships the controller: `agentSandbox` of the request (default true). The one
 * check of the option, for the CLI (which passes --no-agent-sandbox as false) and library callers
 * alike: a non-boolean is refused, and so is a --manifest of the same file name, which would
 * replace ours without a word.
 */
export function resolveAgentSandbox(request: {
  readonly agentSandbox?: unknown;
  readonly manifests: readonly string[];
}): boolean {
  const value = request.agentSandbox ?? true;
  if (typeof value !== 'boolean') {
    throw new UsageError(`agentSandbox: expected true or false, got ${JSON.stringify(value)}`, {
      hint: 'leave it out to ship the agent-sandbox controller, or set false (the CLI: --no-agent-sandbox)',
    });
  }
  const clash = request.manifests.find((m) => path.basename(m) === AGENT_SANDBOX_FILE);
  if (value && clash !== undefined) {
    throw new UsageError(
      `--manifest ${clash}: ${AGENT_SANDBOX_FILE} is the name of the agent-sandbox controller prepare-rootfs ships`,
      { hint: `to deploy your own instead, add --no-agent-sandbox; otherwise rename the file` },
    );
  }
  return value;
}
