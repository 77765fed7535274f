import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  gatewayDir,
  readMtlsBundle,
  setActiveGateway,
  writeGatewayMetadata,
  writeMtlsBundle,
} from './client-config.ts';

const pem = (what: string) => `-----BEGIN ${what}-----\nAAAA\n-----END ${what}-----\n`;
const BUNDLE = { caCert: pem('CERTIFICATE'), clientCert: pem('CERTIFICATE'), clientKey: pem('PRIVATE KEY') };

async function configDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-cfg-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return path.join(dir, 'openshell');
}

const mode = async (p: string) => (await fs.stat(p)).mode & 0o777;

test("metadata, mTLS files and the active gateway are written in the OpenShell CLI's layout and modes", async (t) => {
  const cfg = await configDir(t);
  const meta = await writeGatewayMetadata(cfg, 'openshell-vm-default', 30052);
  assert.deepEqual(meta, {
    name: 'openshell-vm-default',
    gateway_endpoint: 'https://127.0.0.1:30052',
    is_remote: false,
    gateway_port: 30052,
  });
  const dir = gatewayDir(cfg, 'openshell-vm-default');
  assert.deepEqual(JSON.parse(await fs.readFile(path.join(dir, 'metadata.json'), 'utf8')), meta);
  const live = await writeMtlsBundle(cfg, 'openshell-vm-default', BUNDLE);
  assert.deepEqual((await fs.readdir(live)).sort(), ['ca.crt', 'tls.crt', 'tls.key']);
  assert.equal(await mode(live), 0o700);
  assert.equal(await mode(dir), 0o700);
  for (const f of ['ca.crt', 'tls.crt', 'tls.key', '../metadata.json'])
    assert.equal(await mode(path.join(live, f)), 0o600, f);
  await setActiveGateway(cfg, 'openshell-vm-default');
  assert.equal(await fs.readFile(path.join(cfg, 'active_gateway'), 'utf8'), 'openshell-vm-default');
  assert.deepEqual(await readMtlsBundle(cfg, 'openshell-vm-default'), BUNDLE);
  assert.deepEqual((await fs.readdir(dir)).sort(), ['metadata.json', 'mtls']);
});

test('a crash between the bundle renames leaves the old bundle usable, and the next write completes', async (t) => {
  const cfg = await configDir(t);
  await writeMtlsBundle(cfg, 'gw', BUNDLE);
  const dir = gatewayDir(cfg, 'gw');
  // The state a crash after "mtls -> mtls.bak" and before "tmp -> mtls" leaves.
  await fs.rename(path.join(dir, 'mtls'), path.join(dir, 'mtls.bak'));
  await fs.mkdir(path.join(dir, 'mtls.tmp-99999'));
  assert.deepEqual(await readMtlsBundle(cfg, 'gw'), BUNDLE, 'the reader restores the old bundle');
  const next = { ...BUNDLE, caCert: pem('CERTIFICATE').replace('AAAA', 'BBBB') };
  await writeMtlsBundle(cfg, 'gw', next);
  assert.deepEqual(await readMtlsBundle(cfg, 'gw'), next);
  assert.ok(!(await fs.readdir(dir)).includes('mtls.bak'));
});

test('an incomplete or empty bundle reads as absent; non-PEM input is refused', async (t) => {
  const cfg = await configDir(t);
  assert.equal(await readMtlsBundle(cfg, 'none'), undefined);
  const live = await writeMtlsBundle(cfg, 'gw', BUNDLE);
  await fs.writeFile(path.join(live, 'tls.key'), '');
  assert.equal(await readMtlsBundle(cfg, 'gw'), undefined);
  await assert.rejects(writeMtlsBundle(cfg, 'gw', { ...BUNDLE, clientKey: 'nope' }), /clientKey is not PEM/);
});
