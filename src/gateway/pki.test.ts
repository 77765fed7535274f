import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import tls from 'node:tls';
import { generatePki, type PkiBundle } from './pki.ts';

const pki = await generatePki({ extraSans: ['192.168.127.2', 'gateway.example'] });

function files(bundle: PkiBundle): Record<keyof PkiBundle, string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-pki-'));
  const out = {} as Record<keyof PkiBundle, string>;
  for (const [k, v] of Object.entries(bundle)) {
    out[k as keyof PkiBundle] = path.join(dir, `${k}.pem`);
    fs.writeFileSync(out[k as keyof PkiBundle], v);
  }
  return out;
}

test('openssl verifies the server and client certificates against the CA', () => {
  const f = files(pki);
  for (const cert of [f.serverCert, f.clientCert]) {
    assert.match(
      execFileSync('openssl', ['verify', '-CAfile', f.caCert, cert], { encoding: 'utf8' }),
      /: OK/,
    );
  }
  const client = execFileSync('openssl', ['x509', '-in', f.clientCert, '-noout', '-text'], {
    encoding: 'utf8',
  });
  assert.match(client, /Version: 3 \(0x2\)/);
  assert.match(client, /TLS Web Client Authentication/);
  assert.match(client, /CA:FALSE/);
  assert.match(client, /Subject: CN ?= ?openshell-client/);
  assert.match(
    execFileSync('openssl', ['pkey', '-in', f.clientKey, '-noout', '-text'], { encoding: 'utf8' }),
    /prime256v1|P-256/,
  );
});

test('the server certificate is v3 for serverAuth with the seed SANs plus the extra ones', () => {
  const server = new X509Certificate(pki.serverCert);
  const ca = new X509Certificate(pki.caCert);
  assert.equal(server.checkIssued(ca), true);
  assert.equal(ca.ca, true);
  assert.equal(server.ca, false);
  assert.deepEqual(server.subjectAltName?.split(', ').sort(), [
    'DNS:gateway.example',
    'DNS:host.docker.internal',
    'DNS:localhost',
    'DNS:openshell',
    'DNS:openshell.openshell.svc',
    'DNS:openshell.openshell.svc.cluster.local',
    'IP Address:127.0.0.1',
    'IP Address:192.168.127.2',
  ]);
  assert.deepEqual(server.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  assert.deepEqual(new X509Certificate(pki.clientCert).keyUsage, ['1.3.6.1.5.5.7.3.2']);
  assert.ok(new Date(server.validTo).getTime() > Date.now() + 9 * 365 * 86_400_000);
});

async function handshake(server: PkiBundle, client: PkiBundle): Promise<{ ok: boolean; error?: string }> {
  const srv = tls.createServer({
    cert: server.serverCert,
    key: server.serverKey,
    ca: server.caCert,
    requestCert: true,
    rejectUnauthorized: true,
  });
  srv.on('secureConnection', (s) => s.end('hello'));
  srv.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  try {
    return await new Promise((resolve) => {
      const sock = tls.connect({
        host: '127.0.0.1',
        port,
        servername: 'localhost',
        ca: client.caCert,
        cert: client.clientCert,
        key: client.clientKey,
      });
      sock.on('data', () => resolve({ ok: true }));
      sock.on('error', (e) => resolve({ ok: false, error: e.message }));
      sock.on('close', () => resolve({ ok: false, error: 'closed' }));
    });
  } finally {
    srv.close();
  }
}

test('a Node TLS server and client authenticate each other; another CA is refused both ways', async () => {
  assert.deepEqual(await handshake(pki, pki), { ok: true });
  const other = await generatePki();
  const mixedClient = { ...pki, clientCert: other.clientCert, clientKey: other.clientKey };
  assert.equal(
    (await handshake(pki, mixedClient)).ok,
    false,
    'a client certificate from another CA is refused',
  );
  const wrongCa = { ...pki, caCert: other.caCert };
  const res = await handshake(pki, wrongCa);
  assert.equal(res.ok, false);
  assert.match(res.error ?? '', /self[- ]signed|unable to verify|certificate/i);
});
