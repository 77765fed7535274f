import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { bootstrapGateway, PREBAKED_PKI_DIR, writePrebakedPki } from './bootstrap.ts';
import { gatewayDir } from './client-config.ts';
import { generatePki } from './pki.ts';
import { TLS_SECRETS_MANIFEST } from './tls-secrets.ts';

async function dirs(t: { after: (fn: () => Promise<void>) => void }) {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-boot-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const rootfs = path.join(base, 'rootfs');
  await fs.mkdir(rootfs);
  return { rootfs, configDir: path.join(base, 'openshell') };
}
const manifestOf = (rootfs: string) =>
  path.join(rootfs, 'var/lib/rancher/k3s/server/manifests', TLS_SECRETS_MANIFEST);
const readJson = async (f: string) => JSON.parse(await fs.readFile(f, 'utf8'));

test('cold, then warm, then cold again when either side changes; the endpoint follows the port', async (t) => {
  const d = await dirs(t);
  const first = await bootstrapGateway({ ...d, name: 'gw', port: 30051 });
  assert.equal(first.path, 'cold');
  assert.match(first.reason, /first boot/);
  const manifest = await fs.readFile(manifestOf(d.rootfs), 'utf8');
  assert.match(manifest, /name: openshell-client-tls/);
  const gw = gatewayDir(d.configDir, 'gw');
  assert.equal(await fs.readFile(path.join(gw, 'mtls/ca.crt'), 'utf8'), first.bundle.caCert);
  assert.equal((await readJson(path.join(gw, 'metadata.json'))).gateway_endpoint, 'https://127.0.0.1:30051');
  assert.equal(await fs.readFile(path.join(d.configDir, 'active_gateway'), 'utf8'), 'gw');

  // Same rootfs, same host files: nothing is issued, but the metadata follows the new port.
  const second = await bootstrapGateway({ ...d, name: 'gw', port: 8443 });
  assert.equal(second.path, 'warm');
  assert.equal(second.bundle.clientCert, first.bundle.clientCert);
  assert.equal(await fs.readFile(manifestOf(d.rootfs), 'utf8'), manifest);
  assert.equal((await readJson(path.join(gw, 'metadata.json'))).gateway_endpoint, 'https://127.0.0.1:8443');
  assert.equal(second.endpoint, 'https://127.0.0.1:8443');

  // Host files deleted: new credentials on both sides (the seed would have left them apart).
  await fs.rm(path.join(gw, 'mtls'), { recursive: true });
  const third = await bootstrapGateway({ ...d, name: 'gw', port: 8443 });
  assert.equal(third.path, 'cold');
  assert.match(third.reason, /no host credentials/);
  assert.notEqual(third.bundle.caCert, first.bundle.caCert);
  assert.match(
    await fs.readFile(manifestOf(d.rootfs), 'utf8'),
    new RegExp(Buffer.from(third.bundle.caCert).toString('base64').slice(0, 40)),
  );

  // A rebuilt rootfs (no Secrets manifest) with the old host files: cold, not warm.
  await fs.rm(manifestOf(d.rootfs));
  const fourth = await bootstrapGateway({ ...d, name: 'gw', port: 8443 });
  assert.equal(fourth.path, 'cold');
  assert.match(fourth.reason, /first boot/);

  // Host files from another CA than the rootfs's Secrets: cold.
  const other = await dirs(t);
  await bootstrapGateway({ rootfs: other.rootfs, configDir: d.configDir, name: 'gw', port: 1 });
  const fifth = await bootstrapGateway({ ...d, name: 'gw', port: 8443 });
  assert.equal(fifth.path, 'cold');
  assert.match(fifth.reason, /do not match/);
});

test('a pre-baked PKI in the rootfs is used as it is, and an incomplete one is refused', async (t) => {
  const d = await dirs(t);
  const pki = await generatePki();
  const dir = path.join(d.rootfs, PREBAKED_PKI_DIR);
  await fs.mkdir(dir, { recursive: true });
  const files = {
    'ca.crt': pki.caCert,
    'ca.key': pki.caKey,
    'server.crt': pki.serverCert,
    'server.key': pki.serverKey,
    'client.crt': pki.clientCert,
    'client.key': pki.clientKey,
  };
  for (const [f, v] of Object.entries(files)) await fs.writeFile(path.join(dir, f), v);
  const result = await bootstrapGateway({ ...d, name: 'gw', port: 30051 });
  assert.equal(result.path, 'pre-baked');
  assert.equal(result.bundle.clientKey, pki.clientKey);
  assert.equal(
    await fs.readFile(path.join(gatewayDir(d.configDir, 'gw'), 'mtls/tls.crt'), 'utf8'),
    pki.clientCert,
  );
  assert.match(await fs.readFile(manifestOf(d.rootfs), 'utf8'), /openshell-server-tls/);

  await fs.rm(path.join(dir, 'server.key'));
  await assert.rejects(
    bootstrapGateway({ ...d, name: 'gw', port: 30051 }),
    (err: Error & { hint?: string }) => {
      assert.match(err.message, /pre-baked PKI is incomplete: cannot read .*server\.key/);
      assert.match(err.hint ?? '', /prepare-rootfs --force/);
      return true;
    },
  );
});

test('writePrebakedPki bakes what the pre-baked path reads (0700 directory, 0600 files); a planted link is not followed', async (t) => {
  const d = await dirs(t);
  const pki = await generatePki();
  await writePrebakedPki(d.rootfs, pki);
  const dir = path.join(d.rootfs, PREBAKED_PKI_DIR);
  assert.equal((await fs.stat(dir)).mode & 0o777, 0o700);
  for (const f of await fs.readdir(dir))
    assert.equal((await fs.stat(path.join(dir, f))).mode & 0o777, 0o600, f);
  const result = await bootstrapGateway({ ...d, name: 'gw', port: 30051 });
  assert.equal(result.path, 'pre-baked');
  assert.equal(result.bundle.caCert, pki.caCert);

  // A rootfs whose pki directory is a link out of it: it is resolved inside the root (as the guest
  // sees it), never followed to the host's directory.
  const other = await dirs(t);
  const outside = path.join(path.dirname(other.rootfs), 'outside');
  await fs.mkdir(outside);
  await fs.mkdir(path.join(other.rootfs, 'opt/openshell'), { recursive: true });
  await fs.symlink(outside, path.join(other.rootfs, PREBAKED_PKI_DIR));
  await writePrebakedPki(other.rootfs, pki).catch(() => undefined);
  assert.deepEqual(await fs.readdir(outside), []);
});
