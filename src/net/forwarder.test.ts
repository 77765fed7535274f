import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { exposeAll, ForwarderClient } from './forwarder.ts';
import { parsePortSpec } from './ports.ts';

/** A stand-in for gvproxy's forwarder API on a Unix socket, with gvproxy's non-idempotent expose. */
async function fakeGvproxy(t: { after: (fn: () => void) => void }, options: { failFirst?: number } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-fwd-'));
  const socket = path.join(dir, 'api.sock');
  const forwards = new Map<string, { local: string; remote: string; protocol: string }>();
  let failures = options.failFirst ?? 0;
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      requests.push(`${req.method} ${req.url} ${body}`);
      if (failures > 0) {
        failures--;
        res.writeHead(503).end('not yet');
        return;
      }
      if (req.url === '/services/forwarder/all') {
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify([...forwards.values()]));
      } else if (req.url === '/services/forwarder/expose') {
        const f = JSON.parse(body);
        if (forwards.has(f.local)) {
          res.writeHead(500).end('proxy already running\n');
          return;
        }
        forwards.set(f.local, f);
        res.writeHead(200).end();
      } else if (req.url === '/services/forwarder/unexpose') {
        forwards.delete(JSON.parse(body).local);
        res.writeHead(200).end();
      } else {
        res.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.after(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { client: new ForwarderClient(socket), forwards, requests };
}

test('expose, list and unexpose speak gvproxy JSON with loopback as the default host address', async (t) => {
  const { client, forwards } = await fakeGvproxy(t);
  await client.expose(parsePortSpec('18080:80'));
  assert.deepEqual(await client.list(), [
    { local: '127.0.0.1:18080', remote: '192.168.127.2:80', protocol: 'tcp' },
  ]);
  await client.unexpose(parsePortSpec('18080:80'));
  assert.equal(forwards.size, 0);
});

test('a repeated expose that finds "proxy already running" to the same place is a success', async (t) => {
  const { client } = await fakeGvproxy(t);
  await client.expose(parsePortSpec('18080:80'));
  await client.expose(parsePortSpec('18080:80'));
  await assert.rejects(
    client.expose(parsePortSpec('18080:81')),
    /already forwards 127.0.0.1:18080 elsewhere \(192.168.127.2:80\)/,
  );
});

test('exposeAll retries with backoff until gvproxy answers, and fails clearly at the deadline', async (t) => {
  const flaky = await fakeGvproxy(t, { failFirst: 2 });
  await exposeAll(flaky.client, [parsePortSpec('18080:80')], { deadlineMs: 5_000 });
  assert.equal(flaky.forwards.size, 1);
  assert.equal(flaky.requests.length, 3);
  const down = await fakeGvproxy(t, { failFirst: 1000 });
  await assert.rejects(
    exposeAll(down.client, [parsePortSpec('18081:81')], { deadlineMs: 400 }),
    /cannot set up forward 127.0.0.1:18081 -> guest:81 within 0.4 s: .*answered 503: not yet/,
  );
});
