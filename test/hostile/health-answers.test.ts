// A hostile gateway (what answers on the forwarded port is the guest's): its Health answers are
// bounded, their text made safe for the terminal, and odd fields read as such, never trusted.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { callHealth, HEALTH_MAX_BYTES } from '../../src/gateway/health.ts';
import { generatePki } from '../../src/gateway/pki.ts';
import { startGrpcGateway } from '../fixtures/grpc-gateway.ts';

const pki = await generatePki();
const bundle = { caCert: pki.caCert, clientCert: pki.clientCert, clientKey: pki.clientKey };

test('an answer over the size cap is no answer (never read whole), however HEALTHY it says it is', async (t) => {
  const gw = await startGrpcGateway(pki, [{ status: 1, version: 'v'.repeat(HEALTH_MAX_BYTES * 2) }]);
  t.after(gw.stop);
  const probe = await callHealth(gw.port, bundle);
  assert.equal(probe.kind, 'no-answer', JSON.stringify(probe).slice(0, 200));
  assert.match(probe.kind === 'no-answer' ? probe.detail : '', /^RESOURCE_EXHAUSTED/);
});

test('escape sequences and bidi controls in the version and the error details reach no terminal', async (t) => {
  const gw = await startGrpcGateway(pki, [
    { status: 1, version: '1.0\x1b]52;c;cHduZWQ=\x07\u202e\x1b[2J' },
    (_call, callback) => callback({ code: 14, details: 'down\x1b[31m\r\nforged line' }, null),
  ]);
  t.after(gw.stop);
  const answer = await callHealth(gw.port, bundle);
  const failure = await callHealth(gw.port, bundle);
  for (const text of [JSON.stringify(answer), failure.kind === 'no-answer' ? failure.detail : '']) {
    assert.ok(![...text].some((c) => c === '\x1b' || c === '\x07' || c === '\u202e' || c === '\r'), text);
  }
  assert.equal(answer.kind === 'answer' && answer.status, 'HEALTHY');
  assert.match(
    failure.kind === 'no-answer' ? failure.detail : '',
    /^UNAVAILABLE: down\\x1b\[31m\\x0d\\x0aforged line$/,
  );
});
