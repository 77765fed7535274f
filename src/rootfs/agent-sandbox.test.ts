import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { test } from 'node:test';
import YAML from 'yaml';
import { UsageError } from '../errors.ts';
import {
  AGENT_SANDBOX_FILE,
  AGENT_SANDBOX_IMAGE,
  AGENT_SANDBOX_MANIFEST,
  agentSandboxInput,
  agentSandboxManifest,
  patchAgentSandboxForVm,
  resolveAgentSandbox,
} from './agent-sandbox.ts';

type Doc = {
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: Record<string, unknown>;
  rules?: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
};
const docs = async () => YAML.parseAllDocuments(await agentSandboxManifest()).map((d) => d.toJS() as Doc);

test("the staged manifest has upstream's names, image, CRD and RBAC, and no host networking", async () => {
  const all = await docs();
  const byKind = (kind: string) => all.filter((d) => d.kind === kind);
  assert.deepEqual(
    all.map((d) => `${d.kind}/${d.metadata.namespace ?? ''}/${d.metadata.name}`),
    [
      'Namespace//agent-sandbox-system',
      'CustomResourceDefinition//sandboxes.agents.x-k8s.io',
      'ServiceAccount/agent-sandbox-system/agent-sandbox-controller',
      'ClusterRole//agent-sandbox-controller',
      'ClusterRoleBinding//agent-sandbox-controller',
      'Service/agent-sandbox-system/agent-sandbox-controller',
      'StatefulSet/agent-sandbox-system/agent-sandbox-controller',
    ],
  );
  const crd = byKind('CustomResourceDefinition')[0]?.spec as {
    group: string;
    scope: string;
    names: { kind: string; plural: string };
    versions: { name: string; served: boolean; storage: boolean; subresources: Record<string, unknown> }[];
  };
  assert.deepEqual(
    [crd.group, crd.scope, crd.names.kind, crd.names.plural],
    ['agents.x-k8s.io', 'Namespaced', 'Sandbox', 'sandboxes'],
  );
  // The API the chart's preflight asks for (agents.x-k8s.io/v1alpha1), with status and scale.
  assert.deepEqual(
    crd.versions.map((v) => [v.name, v.served, v.storage, Object.keys(v.subresources).sort()]),
    [['v1alpha1', true, true, ['scale', 'status']]],
  );
  const sts = byKind('StatefulSet')[0];
  assert.ok(sts);
  const pod = (sts.spec as { template: { spec: Record<string, unknown> } }).template.spec;
  assert.equal(pod.serviceAccountName, 'agent-sandbox-controller');
  assert.deepEqual(
    (pod.containers as { image: string }[]).map((c) => c.image),
    [AGENT_SANDBOX_IMAGE],
  );
  assert.equal(pod.hostNetwork, undefined);
  assert.equal(pod.dnsPolicy, undefined);
  const rules = byKind('ClusterRole')[0]?.rules ?? [];
  assert.ok(
    rules.some((r) => r.resources.includes('sandboxes/finalizers') && r.verbs.includes('update')),
    'the finalizer rule upstream added (#1203)',
  );
  assert.ok(rules.some((r) => r.resources.includes('pods') && r.verbs.includes('create')));
});

test("the VM patch drops host networking as the original's did, and changes nothing else", async () => {
  const ours = await fs.readFile(AGENT_SANDBOX_MANIFEST, 'utf8');
  assert.equal(patchAgentSandboxForVm(ours), ours, 'our copy needs no patch');
  const hostNet = ours.replace(
    '      serviceAccountName: agent-sandbox-controller\n',
    '      serviceAccountName: agent-sandbox-controller\n      hostNetwork: true\n      dnsPolicy: ClusterFirstWithHostNet\n',
  );
  assert.notEqual(hostNet, ours);
  assert.equal(patchAgentSandboxForVm(hostNet), ours);
});

test('the record entry names the controller and hashes the staged bytes', async () => {
  const text = await agentSandboxManifest();
  const input = agentSandboxInput(text);
  assert.equal(input.kind, 'manifest');
  assert.equal(input.version, 'v0.1.0');
  assert.equal(input.path, `var/lib/rancher/k3s/server/manifests/${AGENT_SANDBOX_FILE}`);
  assert.equal(input.sha256, createHash('sha256').update(text).digest('hex'));
  assert.match(input.source, /agent-sandbox-controller:v0\.1\.0/);
});

test('agentSandbox: on by default, off when false; anything else, or a --manifest of the same name, is refused', () => {
  assert.equal(resolveAgentSandbox({ manifests: [] }), true);
  assert.equal(resolveAgentSandbox({ agentSandbox: false, manifests: [] }), false);
  assert.throws(
    () => resolveAgentSandbox({ agentSandbox: 'no', manifests: [] }),
    (e: unknown) => e instanceof UsageError && /expected true or false, got "no"/.test(e.message),
  );
  assert.throws(
    () => resolveAgentSandbox({ manifests: ['/x/agent-sandbox.yaml'] }),
    (e: unknown) =>
      e instanceof UsageError &&
      /--manifest \/x\/agent-sandbox\.yaml/.test(e.message) &&
      /--no-agent-sandbox/.test(e.hint ?? ''),
  );
  assert.equal(resolveAgentSandbox({ agentSandbox: false, manifests: ['/x/agent-sandbox.yaml'] }), false);
});
