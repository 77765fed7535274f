import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startGrpcGateway } from '../../test/fixtures/grpc-gateway.ts';
import { callHealth, GatewayHealthError, readHealthResponse } from './health.ts';
import { generatePki, type PkiBundle } from './pki.ts';
import { GatewayTlsError, mtlsHandshake, waitForGateway } from './readiness.ts';

const pki = await generatePki();
const other = await generatePki();
const bundle = (p: PkiBundle) => ({ caCert: p.caCert, clientCert: p.clientCert, clientKey: p.clientKey });
const gateway = (
  answers: Parameters<typeof startGrpcGateway>[1],
  options: { readonly pki?: PkiBundle; readonly implement?: boolean } = {},
) => startGrpcGateway(options.pki ?? pki, answers, options);

test('Health HEALTHY: one call answers with the status and version', async (t) => {
  const gw = await gateway([{ status: 1, version: '0.3.1' }]);
  t.after(gw.stop);
  assert.deepEqual(await callHealth(gw.port, bundle(pki)), {
    kind: 'answer',
    status: 'HEALTHY',
    version: '0.3.1',
  });
});

test('readiness: DEGRADED keeps it waiting and says so once; ready on HEALTHY, with the version', async (t) => {
  const d = { status: 2, version: '0.3.1' };
  const gw = await gateway([d, d, d, { status: 1, version: '0.3.1' }]);
  t.after(gw.stop);
  const heard: string[] = [];
  const r = await waitForGateway({
    port: gw.port,
    bundle: bundle(pki),
    deadlineMs: 20_000,
    intervalMs: 50,
    onHealth: (p) => heard.push(p.kind === 'answer' ? p.status : p.detail),
  });
  assert.equal(r.version, '0.3.1');
  assert.equal(gw.calls(), 4);
  assert.deepEqual(heard, ['DEGRADED']);
});

test('readiness: DEGRADED until the deadline fails naming DEGRADED and the version', async (t) => {
  const gw = await gateway([{ status: 2, version: '0.3.1' }]);
  t.after(gw.stop);
  await assert.rejects(
    waitForGateway({ port: gw.port, bundle: bundle(pki), deadlineMs: 600, intervalMs: 100 }),
    /answered mTLS but was not HEALTHY within 1 s: Health says DEGRADED \(version 0\.3\.1\)/,
  );
});

test('readiness: UNHEALTHY fails at once with the version', async (t) => {
  const gw = await gateway([{ status: 3, version: '0.3.1' }]);
  t.after(gw.stop);
  const t0 = performance.now();
  await assert.rejects(
    waitForGateway({ port: gw.port, bundle: bundle(pki), deadlineMs: 30_000 }),
    (e: unknown) => {
      assert.ok(e instanceof GatewayHealthError, String(e));
      assert.match(e.message, /reports UNHEALTHY \(version 0\.3\.1\)/);
      return true;
    },
  );
  assert.ok(performance.now() - t0 < 15_000, 'not waited for the deadline');
});

test('readiness: a server without Health (UNIMPLEMENTED) fails at once, naming the RPC and the fix', async (t) => {
  const gw = await gateway([], { implement: false });
  t.after(gw.stop);
  await assert.rejects(
    waitForGateway({ port: gw.port, bundle: bundle(pki), deadlineMs: 30_000 }),
    (e: unknown) => {
      assert.ok(e instanceof GatewayHealthError, String(e));
      assert.match(e.message, /does not implement openshell\.v1\.OpenShell\.Health \(UNIMPLEMENTED/);
      assert.match(e.hint ?? '', /--gateway-image/);
      return true;
    },
  );
});

test('readiness: a gateway certificate from another CA is its own fatal error', async (t) => {
  const gw = await gateway([{ status: 1, version: 'x' }], { pki: other });
  t.after(gw.stop);
  await assert.rejects(
    waitForGateway({ port: gw.port, bundle: bundle(pki), deadlineMs: 30_000 }),
    (e: unknown) => {
      assert.ok(e instanceof GatewayTlsError, String(e));
      assert.match(e.message, /fails mTLS: its certificate is not one the client bundle's CA signed/);
      return true;
    },
  );
});

test('readiness: a client certificate the gateway refuses is its own fatal error (not a timeout)', async (t) => {
  const gw = await gateway([{ status: 1, version: 'x' }]);
  t.after(gw.stop);
  const wrongClient = { ...bundle(pki), clientCert: other.clientCert, clientKey: other.clientKey };
  assert.equal(await mtlsHandshake(gw.port, wrongClient), 'closed');
  await assert.rejects(
    waitForGateway({ port: gw.port, bundle: wrongClient, deadlineMs: 30_000, intervalMs: 50 }),
    (e: unknown) => {
      assert.ok(e instanceof GatewayTlsError, String(e));
      assert.match(e.message, /refuses the client certificate/);
      assert.match(e.hint ?? '', /--reset/);
      return true;
    },
  );
  assert.equal(gw.calls(), 0, 'Health was never answered for a refused client');
});

test("Health's deadline is respected: a server that never answers is no answer (DEADLINE_EXCEEDED)", async (t) => {
  const gw = await gateway([() => undefined]);
  t.after(gw.stop);
  const t0 = performance.now();
  const probe = await callHealth(gw.port, bundle(pki), { timeoutMs: 300 });
  const ms = performance.now() - t0;
  assert.equal(probe.kind, 'no-answer');
  assert.match(probe.kind === 'no-answer' ? probe.detail : '', /^DEADLINE_EXCEEDED/);
  assert.ok(ms < 5_000, `returned after ${Math.round(ms)} ms`);
  await assert.rejects(
    waitForGateway({
      port: gw.port,
      bundle: bundle(pki),
      deadlineMs: 500,
      intervalMs: 50,
      callTimeoutMs: 200,
    }),
    /not HEALTHY within 1 s: Health has no answer \(DEADLINE_EXCEEDED/,
  );
});

test('hostile answers: garbage bytes are no answer; control characters and length in the version are neutralized', async (t) => {
  const gw = await gateway([
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]),
    { status: 1, version: `\x1b]52;c;aGk=\x07${'v'.repeat(1000)}` },
  ]);
  t.after(gw.stop);
  const bad = await callHealth(gw.port, bundle(pki));
  assert.equal(bad.kind, 'no-answer');
  const odd = await callHealth(gw.port, bundle(pki));
  assert.equal(odd.kind, 'answer');
  const version = odd.kind === 'answer' ? odd.version : '';
  assert.ok(![...version].some((c) => c === '\x1b' || c === '\x07'), JSON.stringify(version));
  assert.ok(version.length < 200, `${version.length} characters`);
  assert.deepEqual(readHealthResponse({ status: 7 }), { kind: 'answer', status: 'STATUS_7', version: '' });
});

test('an already aborted signal cancels the call at once (no wait for the deadline)', async (t) => {
  const gw = await gateway([() => undefined]);
  t.after(gw.stop);
  const t0 = performance.now();
  const probe = await callHealth(gw.port, bundle(pki), { timeoutMs: 5_000, signal: AbortSignal.abort() });
  assert.equal(probe.kind, 'no-answer');
  assert.match(probe.kind === 'no-answer' ? probe.detail : '', /^CANCELLED/);
  assert.ok(performance.now() - t0 < 2_000, `returned after ${Math.round(performance.now() - t0)} ms`);
});
