// Hostile guest → host through symlinks in the gateway rootfs (issue 13, item 2). The guest owns
// its root (virtio-fs, read-write), so whatever it plants there the host meets on the next boot's
// preparation (prepareRootfsForBoot), in the bootstrap that runs while it boots (bootstrapGateway)
// and in --reset (resetGateway). Planting from the host here is what a guest writes through
// virtio-fs. Each attack must be refused or come to nothing, and the host's decoy stay untouched.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { test } from 'node:test';
import { bootstrapGateway } from '../../src/gateway/bootstrap.ts';
import { generatePki } from '../../src/gateway/pki.ts';
import { resetGateway } from '../../src/presets/gateway-cleanup.ts';
import { prepareRootfsForBoot } from '../../src/rootfs/boot-prep.ts';
import { ROOTFS_PATHS } from '../../src/rootfs/layout.ts';
import { testEnvironment } from '../fixtures/env.ts';
import { writeGatewayRootfs } from '../fixtures/gateway-rootfs.ts';
import { KINE_SCHEMA } from '../fixtures/kine.ts';

const DECOY = "ssh-ed25519 AAAA the host user's own key\n";
const MANIFESTS = ROOTFS_PATHS.k3sManifests;

interface World {
  readonly base: string;
  readonly rootfs: string;
  /** A host directory outside the rootfs with files the attack aims at. */
  readonly host: string;
  readonly decoy: string;
  readonly env: ReturnType<typeof testEnvironment>;
  /** Everything under `host`, path → content ('<dir>' for directories). */
  snapshot(): Promise<Record<string, string>>;
}

async function world(t: { after: (fn: () => Promise<void>) => void }): Promise<World> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-hostile-root-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const env = testEnvironment(path.join(base, 'data'));
  const rootfs = path.join(env.dataDir, 'instances', 'gw', 'rootfs');
  const host = path.join(base, 'host');
  await fs.mkdir(host, { recursive: true });
  await fs.mkdir(path.dirname(rootfs), { recursive: true, mode: 0o700 });
  const decoy = path.join(host, 'authorized_keys');
  await fs.writeFile(decoy, DECOY, { mode: 0o600 });
  await gatewayRootfs(rootfs);
  const snapshot = async () => {
    const out: Record<string, string> = {};
    for (const rel of await fs.readdir(host, { recursive: true })) {
      const p = path.join(host, rel);
      out[rel] = (await fs.lstat(p)).isDirectory() ? '<dir>' : await fs.readFile(p, 'latin1');
    }
    return out;
  };
  return { base, rootfs, host, decoy, env, snapshot };
}

/** A gateway rootfs as the build leaves it (record, guest scripts, staged HelmChart and values). */
async function gatewayRootfs(root: string): Promise<void> {
  await writeGatewayRootfs(root, { instance: 'gw', kernelRelease: '6.1.0-test' });
  await fs.mkdir(path.join(root, MANIFESTS), { recursive: true });
}

/** The guest plants `rel` in its root as a symlink to `target`. */
async function plant(w: World, rel: string, target: string): Promise<void> {
  const p = path.join(w.rootfs, rel);
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.rm(p, { recursive: true, force: true });
  await fs.symlink(target, p);
}

/** Runs `step`: it may refuse (a HostError naming the planted path) or succeed, never touch the host. */
async function refusedOrHarmless(step: Promise<unknown>, planted: RegExp): Promise<'refused' | 'done'> {
  try {
    await step;
    return 'done';
  } catch (err) {
    assert.equal((err as Error).name, 'HostError', String(err));
    assert.match((err as Error).message, planted);
    assert.match((err as Error).message, /the guest may have planted it/);
    return 'refused';
  }
}

const prep = (w: World) => prepareRootfsForBoot(w.rootfs, { kernelRelease: '6.1.0-test' });
const bootstrap = (w: World) =>
  bootstrapGateway({ rootfs: w.rootfs, configDir: w.env.openshellConfigDir, name: 'gw', port: 30051 });

test('the HelmChart temporary FILE.tmp planted as a symlink to a host file: the next boot does not write through it', async (t) => {
  const w = await world(t);
  const before = await w.snapshot();
  await plant(w, `${MANIFESTS}/openshell-helmchart.yaml.tmp`, w.decoy);
  await prep(w);
  assert.deepEqual(await w.snapshot(), before, 'the host file is untouched');
  assert.match(
    await fs.readFile(path.join(w.rootfs, MANIFESTS, 'openshell-helmchart.yaml'), 'utf8'),
    /kind: HelmChart/,
  );
});

test('the staged HelmChart template as a symlink to a host secret: refused, the secret never reaches the guest', async (t) => {
  const w = await world(t);
  const secret = path.join(w.host, 'secret');
  await fs.writeFile(secret, 'HOST-SECRET-TOKEN\n', { mode: 0o600 });
  const before = await w.snapshot();
  await plant(w, ROOTFS_PATHS.stagedHelmChart, secret);
  const how = await refusedOrHarmless(prep(w), /openshell-helmchart\.yaml is a symlink/);
  const rendered = await fs
    .readFile(path.join(w.rootfs, MANIFESTS, 'openshell-helmchart.yaml'), 'utf8')
    .catch(() => '');
  assert.doesNotMatch(rendered, /HOST-SECRET-TOKEN/);
  assert.deepEqual(await w.snapshot(), before);
  assert.equal(how, 'refused', 'refused, naming the planted path');
});

test('the TLS Secrets manifest temporary planted as a symlink to a host file: the keys are not written through it', async (t) => {
  const w = await world(t);
  const before = await w.snapshot();
  await plant(w, `${MANIFESTS}/openshell-tls-secrets.yaml.tmp`, w.decoy);
  await bootstrap(w);
  assert.deepEqual(await w.snapshot(), before, 'the host file does not receive the private keys');
  assert.match(
    await fs.readFile(path.join(w.rootfs, MANIFESTS, 'openshell-tls-secrets.yaml'), 'utf8'),
    /openshell-client-tls/,
  );
});

test('the TLS Secrets manifest itself as a symlink to a host file: refused, the host file keeps its bytes', async (t) => {
  const w = await world(t);
  const before = await w.snapshot();
  await plant(w, `${MANIFESTS}/openshell-tls-secrets.yaml`, w.decoy);
  const how = await refusedOrHarmless(bootstrap(w), /openshell-tls-secrets\.yaml is a symlink/);
  assert.deepEqual(await w.snapshot(), before);
  assert.equal(how, 'refused', 'refused, naming the planted path');
});

test('opt/openshell/pki as a symlink to a host directory of keys: its keys are not copied into the guest', async (t) => {
  const w = await world(t);
  const pki = await generatePki();
  const keys = path.join(w.host, 'pki');
  await fs.mkdir(keys);
  const files = {
    'ca.crt': pki.caCert,
    'ca.key': pki.caKey,
    'server.crt': pki.serverCert,
    'server.key': pki.serverKey,
    'client.crt': pki.clientCert,
    'client.key': pki.clientKey,
  };
  for (const [f, v] of Object.entries(files)) await fs.writeFile(path.join(keys, f), v, { mode: 0o600 });
  const before = await w.snapshot();
  await plant(w, 'opt/openshell/pki', keys);
  const how = await refusedOrHarmless(bootstrap(w), /opt\/openshell\/pki is a symlink/);
  const manifest = await fs
    .readFile(path.join(w.rootfs, MANIFESTS, 'openshell-tls-secrets.yaml'), 'utf8')
    .catch(() => '');
  // Past the PEM header (45 bytes = 60 base64 characters, aligned): the key's own bytes.
  const keyPart = (pem: string) => Buffer.from(pem).toString('base64').slice(60, 120);
  assert.doesNotMatch(manifest, new RegExp(keyPart(pki.caKey).replace(/[+/]/g, '\\$&')));
  assert.doesNotMatch(manifest, new RegExp(keyPart(pki.serverKey).replace(/[+/]/g, '\\$&')));
  assert.deepEqual(await w.snapshot(), before);
  // Refused, or (as the guest sees it) resolved inside the rootfs, where there are no keys.
  assert.ok(['refused', 'done'].includes(how));
});

test('the kine datastore as a symlink to a host SQLite database: the next boot refuses, the host database keeps its rows', async (t) => {
  const w = await world(t);
  const hostDb = path.join(w.host, 'app.db');
  const sqlite = new DatabaseSync(hostDb);
  sqlite.exec(KINE_SCHEMA);
  sqlite
    .prepare(
      'INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 1, 0, 0, ?, NULL)',
    )
    .run('/registry/pods/host/precious', Buffer.from('host data'));
  sqlite.close();
  const before = await w.snapshot();
  await plant(w, ROOTFS_PATHS.kineDb, hostDb);
  const how = await refusedOrHarmless(prep(w), /state\.db is not a regular file but a symlink/);
  assert.deepEqual(await w.snapshot(), before, 'the host database is not cleaned or vacuumed');
  assert.equal(how, 'refused', 'refused, naming the planted path');
});

test('--reset with var as a symlink to a host directory: nothing outside the rootfs is deleted', async (t) => {
  const w = await world(t);
  // What `var -> /` would expose: the host's /run, /lib/cni and the like.
  for (const d of ['run/user', 'lib/cni/networks', 'lib/kubelet/pods/p1']) {
    await fs.mkdir(path.join(w.host, d), { recursive: true });
  }
  await fs.writeFile(path.join(w.host, 'run/user/socket-of-the-host'), 'x');
  const before = await w.snapshot();
  await fs.rm(path.join(w.rootfs, 'var'), { recursive: true, force: true });
  await plant(w, 'var', w.host);
  await refusedOrHarmless(resetGateway(w.env, 'gw', w.rootfs), /var is a symlink/);
  // Refused, or resolved inside the rootfs as the guest sees it: either way the host keeps it all.
  assert.deepEqual(await w.snapshot(), before);
});

test('--reset with etc/rancher/k3s as a symlink to a host directory: the host k3s.yaml stays', async (t) => {
  const w = await world(t);
  const etc = path.join(w.host, 'etc-k3s');
  await fs.mkdir(etc);
  await fs.writeFile(path.join(etc, 'k3s.yaml'), 'the host cluster\n');
  const before = await w.snapshot();
  await plant(w, 'etc/rancher/k3s', etc);
  await refusedOrHarmless(resetGateway(w.env, 'gw', w.rootfs), /etc\/rancher\/k3s is a symlink/);
  assert.deepEqual(await w.snapshot(), before);
});
