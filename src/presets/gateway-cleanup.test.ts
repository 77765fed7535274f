import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { buildKubeconfig, mergeGatewayKubeconfig, writeKubeconfig } from '../gateway/kubeconfig.ts';
import { generatePki } from '../gateway/pki.ts';
import { type InstanceCleanup, PRESETS_FILE, recordPreset } from '../instance/cleanup.ts';
import { deleteInstance, resetInstance } from '../instance/lifecycle.ts';
import { instanceDir } from '../instance/runs.ts';
import { GATEWAY_PRESET, gatewayCleanup, RESET_PATHS, resetGateway } from './gateway-cleanup.ts';
import { PRESET_CLEANUPS } from './index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'bin', 'openshell-vm');

function env(t: { after: (fn: () => void) => void }): HostEnvironment {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-gw-cleanup-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return testEnvironment(base, {
    dataDir: path.join(base, 'data'),
    openshellConfigDir: path.join(base, 'config', 'openshell'),
    kubeDir: path.join(base, 'home', '.kube'),
  });
}

function instance(e: HostEnvironment, name: string): string {
  const dir = instanceDir(e, name);
  fs.mkdirSync(path.join(dir, 'rootfs'), { recursive: true, mode: 0o700 });
  fs.chmodSync(path.dirname(dir), 0o700);
  return dir;
}

/** What the gateway's bootstrap and readiness leave outside the instance for `name`. */
function gatewayFiles(e: HostEnvironment, name: string): [gatewayDir: string, kubeconfig: string] {
  const gw = path.join(e.openshellConfigDir, 'gateways', name);
  fs.mkdirSync(path.join(gw, 'mtls'), { recursive: true });
  fs.writeFileSync(path.join(gw, 'metadata.json'), '{}');
  fs.writeFileSync(path.join(gw, 'mtls', 'tls.key'), 'key');
  fs.mkdirSync(e.kubeDir, { recursive: true });
  fs.writeFileSync(path.join(e.kubeDir, `${name}.yaml`), 'apiVersion: v1\n');
  return [gw, path.join(e.kubeDir, `${name}.yaml`)];
}

const b64 = (s: string) => Buffer.from(s).toString('base64');
const pki = await generatePki();
const creds = { caData: b64(pki.caCert), certData: b64(pki.clientCert), keyData: b64(pki.clientKey) };

test('delete of a gateway instance: active_gateway naming it, its OpenShell files, its kubeconfig and the merged context go; the rest stays', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, GATEWAY_PRESET);
  const [gwDir, kube] = gatewayFiles(e, 'gw');
  const [otherDir, otherKube] = gatewayFiles(e, 'other');
  fs.writeFileSync(path.join(e.openshellConfigDir, 'active_gateway'), 'gw');
  const config = path.join(e.kubeDir, 'config');
  fs.writeFileSync(config, 'apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n');
  const text = buildKubeconfig({ name: 'gw', port: 6443, credentials: creds });
  await writeKubeconfig(e.kubeDir, 'gw', text);
  await mergeGatewayKubeconfig(dir, config, text, { setCurrent: true });
  assert.equal(YAML.parse(fs.readFileSync(config, 'utf8'))['current-context'], 'openshell-gw');

  const result = await deleteInstance(e, 'gw', { timeoutMs: 1000, cleanups: PRESET_CLEANUPS });
  assert.deepEqual(result.removed.slice(0, 4), [
    dir,
    path.join(e.openshellConfigDir, 'active_gateway'),
    gwDir,
    kube,
  ]);
  assert.match(result.removed[4] ?? '', /config: cluster, user, context 'openshell-gw' \(backup /);
  assert.equal(result.removed.length, 5);
  for (const p of [dir, gwDir, kube, path.join(e.openshellConfigDir, 'active_gateway')]) {
    assert.equal(fs.existsSync(p), false, p);
  }
  const after = YAML.parse(fs.readFileSync(config, 'utf8'));
  assert.deepEqual([after.clusters, after.users, after.contexts, after['current-context']], [[], [], [], '']);
  assert.ok(fs.existsSync(otherDir) && fs.existsSync(otherKube), "another gateway's files stay");
});

test('delete of a gateway instance: active_gateway naming another gateway (or a symlink) is left alone', async (t) => {
  const e = env(t);
  for (const [name, plant] of [
    ['gw1', (f: string) => fs.writeFileSync(f, 'prod\n')],
    ['gw2', (f: string) => fs.symlinkSync(path.join(path.dirname(f), 'elsewhere'), f)],
  ] as const) {
    const dir = instance(e, name);
    await recordPreset(dir, GATEWAY_PRESET);
    const active = path.join(e.openshellConfigDir, 'active_gateway');
    fs.mkdirSync(e.openshellConfigDir, { recursive: true });
    fs.rmSync(active, { force: true });
    fs.writeFileSync(path.join(e.openshellConfigDir, 'elsewhere'), name);
    plant(active);
    const result = await deleteInstance(e, name, { timeoutMs: 1000, cleanups: PRESET_CLEANUPS });
    assert.deepEqual(result.removed, [dir]);
    assert.ok(fs.lstatSync(active), `${name}: active_gateway stays`);
  }
});

test('--reset of the gateway: k3s state and credentials go (through the GuestRoot), images and the build stay; a refusal names prepare-rootfs --name', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  const rootfs = path.join(dir, 'rootfs');
  for (const rel of RESET_PATHS) {
    fs.mkdirSync(path.dirname(path.join(rootfs, rel)), { recursive: true });
    fs.writeFileSync(path.join(rootfs, rel), 'state');
  }
  const kept = path.join(
    rootfs,
    'var/lib/rancher/k3s/agent/containerd/io.containerd.content.v1.content/blob',
  );
  fs.mkdirSync(path.dirname(kept), { recursive: true });
  fs.writeFileSync(kept, 'layer');
  const [gwDir, kube] = gatewayFiles(e, 'gw');
  const out = await resetGateway(e, 'gw', rootfs);
  assert.deepEqual(out.removed, [...RESET_PATHS.map((rel) => path.join(rootfs, rel)), gwDir, kube]);
  assert.deepEqual(out.takenOut, []);
  for (const rel of RESET_PATHS.filter((r) => r !== 'run')) {
    assert.equal(fs.existsSync(path.join(rootfs, rel)), false, rel);
  }
  assert.ok(fs.statSync(path.join(rootfs, 'run')).isDirectory(), 'run/ is there again, empty');
  assert.equal(fs.readFileSync(kept, 'utf8'), 'layer');
  assert.ok(fs.existsSync(dir));

  // A file the guest put where a directory is walked: refused, with the rebuild command for this instance.
  fs.rmSync(path.join(rootfs, 'var'), { recursive: true, force: true });
  fs.writeFileSync(path.join(rootfs, 'var'), 'not a directory');
  await assert.rejects(resetGateway(e, 'gw', rootfs), (err: unknown) => {
    assert.ok(err instanceof HostError, String(err));
    assert.match(err.message, /var is not a directory \(a regular file\); the guest may have planted it/);
    assert.equal(err.hint, 'rebuild the rootfs instead: openshell-vm prepare-rootfs --name gw --force');
    return true;
  });
});

/** The CLI in a sandbox: data, config and home under `base`. */
function cli(base: string, ...argv: string[]): { status: number | null; out: string } {
  const r = spawnSync(CLI, argv, {
    encoding: 'utf8',
    env: {
      ...process.env,
      OPENSHELL_VM_DATA_DIR: path.join(base, 'data'),
      XDG_CONFIG_HOME: path.join(base, 'config'),
      HOME: path.join(base, 'home'),
    },
    timeout: 60_000,
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('--reset removes the saved state and half-made ones inside the locked reset (before the lock is released)', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  const rootfs = path.join(dir, 'rootfs');
  for (const d of ['snapshot', 'snapshot.new-abc123']) {
    fs.mkdirSync(path.join(dir, d));
    fs.writeFileSync(path.join(dir, d, 'state'), 'saved');
  }
  // A cleanup after the gateway's, so still under the reset's lock: the snapshot is gone already.
  let seenDuringReset: string[] | undefined;
  const after: InstanceCleanup = {
    preset: 'probe',
    async onReset() {
      seenDuringReset = fs.readdirSync(dir).filter((n) => n.startsWith('snapshot'));
      return { removed: [], takenOut: [] };
    },
  };
  const out = await resetInstance(e, 'gw', {
    rootfs,
    refusedHint: 'rebuild',
    cleanups: [gatewayCleanup, after],
  });
  assert.deepEqual(seenDuringReset, []);
  assert.deepEqual(out.removed.filter((p) => p.includes('snapshot')).sort(), [
    path.join(dir, 'snapshot'),
    path.join(dir, 'snapshot.new-abc123'),
  ]);
  // resetGateway says so too.
  fs.mkdirSync(path.join(dir, 'snapshot'));
  assert.deepEqual((await resetGateway(e, 'gw', rootfs)).removed.at(-1), path.join(dir, 'snapshot'));
  assert.equal(fs.existsSync(path.join(dir, 'snapshot')), false);
});

test("delete of an instance only `run` used: the user's own ~/.kube/NAME.yaml, OpenShell gateway NAME and active_gateway stay", async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-gw-cleanup-cli-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const e = testEnvironment(base, {
    dataDir: path.join(base, 'data'),
    openshellConfigDir: path.join(base, 'config', 'openshell'),
    kubeDir: path.join(base, 'home', '.kube'),
  });
  // What `openshell-vm run --name web --detach` leaves once stopped: logs, no presets record.
  const dir = instance(e, 'web');
  fs.mkdirSync(path.join(dir, 'logs'));
  fs.writeFileSync(path.join(dir, 'logs', 'console.log'), 'hi\n');
  // The user's own: a kubeconfig and an OpenShell gateway (a remote one) that happen to be called web.
  const theirs = gatewayFiles(e, 'web');
  fs.writeFileSync(path.join(e.openshellConfigDir, 'active_gateway'), 'web');

  const del = cli(base, 'delete', 'web');
  assert.equal(del.status, 0, del.out);
  assert.equal(fs.existsSync(dir), false);
  for (const p of [...theirs, path.join(e.openshellConfigDir, 'active_gateway')]) {
    assert.ok(fs.existsSync(p), `delete web removed ${p}:\n${del.out}`);
  }
  assert.doesNotMatch(del.out, /\.kube|openshell\/gateways|active_gateway/);

  // The same files for a gateway instance (its presets record says so) do go.
  const gw = instance(e, 'gw');
  await recordPreset(gw, GATEWAY_PRESET);
  assert.ok(fs.existsSync(path.join(gw, PRESETS_FILE)));
  const ours = gatewayFiles(e, 'gw');
  const delGw = cli(base, 'delete', 'gw');
  assert.equal(delGw.status, 0, delGw.out);
  for (const p of ours) assert.equal(fs.existsSync(p), false, `${p}:\n${delGw.out}`);
});
