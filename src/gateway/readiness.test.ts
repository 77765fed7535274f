import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { generatePki, type PkiBundle } from './pki.ts';
import { mtlsHandshake, probeTcp, waitForGateway } from './readiness.ts';

const pki = await generatePki();
const bundle = (p: PkiBundle) => ({ caCert: p.caCert, clientCert: p.clientCert, clientKey: p.clientKey });

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

function gateway(p: PkiBundle, more: Pick<tls.TlsOptions, 'ALPNProtocols'> = {}): tls.Server {
  const srv = tls.createServer({
    cert: p.serverCert,
    key: p.serverKey,
    ca: p.caCert,
    requestCert: true,
    rejectUnauthorized: true,
    ...more,
  });
  srv.on('secureConnection', (s) => s.on('data', () => undefined));
  srv.on('tlsClientError', () => undefined);
  return srv;
}

test("gvproxy's accept-then-reset (nothing listening in the guest) is not ready; a silent TLS server is", async (t) => {
  const resetter = net.createServer((s) => s.resetAndDestroy());
  const eofer = net.createServer((s) => s.end());
  const talker = net.createServer((s) => s.end('SSH-2.0-x\r\n'));
  const srv = gateway(pki);
  const ports = await Promise.all([resetter, eofer, talker, srv].map(listen));
  t.after(() => {
    for (const s of [resetter, eofer, talker, srv]) s.close();
  });
  assert.deepEqual(await Promise.all(ports.map((p) => probeTcp(p))), [false, false, false, true]);
});

test('the mTLS handshake passes with the right bundle; another CA is a fatal error', async (t) => {
  const srv = gateway(pki);
  const port = await listen(srv);
  t.after(() => srv.close());
  // A TLS server without HTTP/2 in ALPN accepts the credentials but is no gRPC server.
  assert.equal(await mtlsHandshake(port, bundle(pki)), 'no-h2');
  const other = await generatePki();
  await assert.rejects(mtlsHandshake(port, { ...bundle(pki), caCert: other.caCert }), /fails mTLS/);
  // A client certificate from another CA: Node's server closes at once after the handshake.
  assert.equal(
    await mtlsHandshake(port, { ...bundle(pki), clientCert: other.clientCert, clientKey: other.clientKey }),
    'closed',
  );
});

test('waitForGateway: a TLS server that is not gRPC is never ready; nothing listening times out with the console lines', async (t) => {
  const srv = gateway(pki);
  const port = await listen(srv);
  t.after(() => srv.close());
  await assert.rejects(
    waitForGateway({ port, bundle: bundle(pki), deadlineMs: 300, intervalMs: 100, callTimeoutMs: 500 }),
    /answered mTLS but was not HEALTHY within 0 s: it speaks TLS without HTTP\/2 \(ALPN\), so it is no gRPC server/,
  );

  const dead = net.createServer((s) => s.resetAndDestroy());
  const deadPort = await listen(dead);
  t.after(() => dead.close());
  await assert.rejects(
    waitForGateway({
      port: deadPort,
      bundle: bundle(pki),
      deadlineMs: 300,
      intervalMs: 100,
      consoleTail: async () => '[ 3.1] k3s: starting',
    }),
    /did not answer mTLS on 127\.0\.0\.1:\d+ within 0 s; last console lines:\n\[ 3\.1\] k3s: starting/,
  );
});

test('a TLS alert refusing the client certificate is a fatal error naming it', async (t) => {
  // Without a client certificate at all, TLS 1.3 servers that require one send "certificate required".
  const strict = gateway(pki);
  const strictPort = await listen(strict);
  t.after(() => strict.close());
  await assert.rejects(
    mtlsHandshake(strictPort, { ...bundle(pki), clientCert: '', clientKey: '' }),
    /refuses the client certificate \(tlsv13 alert certificate required\)/,
  );
});

test('a TLS server that refuses our ALPN (h2) is no gRPC server, not a refused certificate', async (t) => {
  const h1 = gateway(pki, { ALPNProtocols: ['http/1.1'] });
  const port = await listen(h1);
  t.after(() => h1.close());
  assert.equal(await mtlsHandshake(port, bundle(pki)), 'no-h2');
});
