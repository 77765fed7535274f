import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import {
  mergedEntry,
  mergeKubeconfig,
  readMergeRecord,
  rewriteKubeconfig,
  unmergeKubeconfig,
  writeKubeconfig,
  writeMergeRecord,
} from './kubeconfig.ts';

// What k3s writes to /etc/rancher/k3s/k3s.yaml (data shortened).
const K3S_YAML = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EK
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVAo=
    client-key-data: S0VZCg==
`;

const EXISTING = `apiVersion: v1
kind: Config
clusters:
- name: work
  cluster: { server: https://work.example:6443 }
users:
- name: work
  user: { token: abc }
contexts:
- name: work
  context: { cluster: work, user: work }
current-context: work
`;

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-kube-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

test("k3s's kubeconfig is rewritten to the forwarded port and named for the instance", () => {
  const doc = YAML.parse(rewriteKubeconfig(K3S_YAML, { name: 'openshell-vm-default', port: 41234 }));
  assert.equal(doc.clusters[0].cluster.server, 'https://127.0.0.1:41234');
  assert.equal(doc.clusters[0].cluster['certificate-authority-data'], 'Q0EK');
  assert.deepEqual(doc.contexts, [
    {
      name: 'openshell-vm-default',
      context: { cluster: 'openshell-vm-default', user: 'openshell-vm-default' },
    },
  ]);
  assert.equal(doc.users[0].user['client-key-data'], 'S0VZCg==');
  assert.equal(doc['current-context'], 'openshell-vm-default');
});

test('the kubeconfig file is 0600', async (t) => {
  const dir = await tmp(t);
  const file = await writeKubeconfig(path.join(dir, '.kube'), 'gw', 'x: 1\n');
  assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
});

test('--merge-kubeconfig keeps other contexts and current-context, backs the file up, and replaces its own entry', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  await fs.writeFile(target, EXISTING);
  const entry = rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 40000 });
  const backup = await mergeKubeconfig(target, entry, { now: new Date('2026-11-25T10:00:00Z') });
  assert.equal(backup, `${target}.bak-2026-11-25T10-00-00-000Z`);
  assert.equal(await fs.readFile(backup as string, 'utf8'), EXISTING);
  let doc = YAML.parse(await fs.readFile(target, 'utf8'));
  assert.deepEqual(
    doc.contexts.map((c: { name: string }) => c.name),
    ['work', 'gw'],
  );
  assert.equal(doc['current-context'], 'work', 'not switched unless asked');
  // Again, on another port and asked to switch: one gw entry, now current.
  await mergeKubeconfig(target, rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 40001 }), {
    setCurrent: true,
  });
  doc = YAML.parse(await fs.readFile(target, 'utf8'));
  assert.deepEqual(
    doc.clusters.map((c: { name: string }) => c.name),
    ['work', 'gw'],
  );
  assert.equal(doc.clusters[1].cluster.server, 'https://127.0.0.1:40001');
  assert.equal(doc['current-context'], 'gw');
  assert.equal((await fs.stat(target)).mode & 0o777, 0o600);
});

test('a kubeconfig that does not parse is refused and left as it is', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  for (const bad of ['clusters: [unclosed\n', 'kind: Pod\n', '- a list\n']) {
    await fs.writeFile(target, bad);
    await assert.rejects(
      mergeKubeconfig(target, rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 1 })),
      /not valid YAML|is not a kubeconfig/,
    );
    assert.equal(await fs.readFile(target, 'utf8'), bad);
  }
  assert.deepEqual((await fs.readdir(dir)).sort(), ['config'], 'no backup, no temporary file');
});

test('unmerge takes out what the merge added, keeps the rest, and clears current-context only if it was ours', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  await fs.writeFile(target, EXISTING);
  const entry = rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 40000 });
  await mergeKubeconfig(target, entry, { setCurrent: true });
  // A later boot merged on another port: same CA and client certificate, same record.
  await mergeKubeconfig(target, rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 40002 }), {
    setCurrent: true,
  });
  await writeMergeRecord(dir, mergedEntry(target, entry));
  const record = await readMergeRecord(dir);
  assert.ok(record);
  const before = await fs.readFile(target, 'utf8');
  const out = await unmergeKubeconfig(record, { now: new Date('2026-12-01T10:00:00Z') });
  assert.deepEqual(out.removed, ['cluster', 'user', 'context']);
  assert.deepEqual(out.kept, []);
  assert.equal(out.backup, `${target}.bak-2026-12-01T10-00-00-000Z`);
  assert.equal(await fs.readFile(out.backup as string, 'utf8'), before);
  const doc = YAML.parse(await fs.readFile(target, 'utf8'));
  assert.deepEqual(
    [doc.clusters, doc.users, doc.contexts].map((l: { name: string }[]) => l.map((x) => x.name)),
    [['work'], ['work'], ['work']],
  );
  assert.equal(doc['current-context'], '', 'it named the removed context');
  assert.equal(doc.users[0].user.token, 'abc', 'other entries untouched');
  // Nothing of ours is left: a second unmerge changes nothing and makes no backup.
  const again = await unmergeKubeconfig(record);
  assert.deepEqual([again.removed, again.kept, again.backup], [[], [], undefined]);
});

test('unmerge keeps an entry of the same name that is not the merged one, and a missing file is fine', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  const entry = rewriteKubeconfig(K3S_YAML, { name: 'work', port: 40000 });
  // The user's own "work" entries, never merged by openshell-vm, with current-context work.
  await fs.writeFile(target, EXISTING);
  const out = await unmergeKubeconfig(mergedEntry(target, entry));
  assert.deepEqual(out.removed, []);
  assert.deepEqual(out.kept, ['cluster', 'user', 'context']);
  assert.equal(await fs.readFile(target, 'utf8'), EXISTING);
  assert.deepEqual(await fs.readdir(dir), ['config'], 'no backup');
  // Merged, then the user pointed the context at their own user: the user 'gw' goes; the cluster
  // stays, since the context that stays still names it.
  await mergeKubeconfig(target, rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 1 }), { setCurrent: true });
  const doc = YAML.parse(await fs.readFile(target, 'utf8'));
  doc.contexts[1].context.user = 'work';
  await fs.writeFile(target, YAML.stringify(doc));
  const partly = await unmergeKubeconfig(
    mergedEntry(target, rewriteKubeconfig(K3S_YAML, { name: 'gw', port: 2 })),
  );
  assert.deepEqual(partly.removed, ['user']);
  assert.deepEqual(partly.kept, ['cluster', 'context']);
  const after = YAML.parse(await fs.readFile(target, 'utf8'));
  assert.deepEqual(
    after.clusters.map((c: { name: string }) => c.name),
    ['work', 'gw'],
  );
  assert.equal(after['current-context'], 'gw');
  await fs.rm(target);
  assert.deepEqual((await unmergeKubeconfig(mergedEntry(target, entry))).removed, []);
  assert.equal(await readMergeRecord(path.join(dir, 'none')), undefined);
});
