import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { ensureK3s, K3S_ASSET, K3S_PIN, type K3sPin } from './k3s.ts';

const STAND_IN = new URL('../../test/fixtures/k3s-stand-in.sh', import.meta.url).pathname;
const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

async function tmpEnv(
  t: { after: (fn: () => Promise<void>) => void },
  k3sBaseUrl = 'http://127.0.0.1:9',
): Promise<HostEnvironment> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-k3s-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return testEnvironment(dir, { k3sBaseUrl });
}

test('the pin has a SHA-256 for each architecture', () => {
  assert.match(K3S_PIN.version, /^v\d+\.\d+\.\d+\+k3s\d+$/);
  for (const arch of ['x86_64', 'aarch64'] as const) assert.match(K3S_PIN.sha256[arch], /^[a-f0-9]{64}$/);
});

test('a local k3s is verified against --k3s-sha256; a mismatch is refused', async (t) => {
  const env = await tmpEnv(t);
  const good = sha(await fs.readFile(STAND_IN));
  const ok = await ensureK3s(env, {
    arch: 'x86_64',
    localPath: STAND_IN,
    expectedSha256: good.toUpperCase(),
  });
  assert.deepEqual([ok.verification, ok.sha256], ['given', good]);
  await assert.rejects(
    ensureK3s(env, { arch: 'x86_64', localPath: STAND_IN, expectedSha256: '0'.repeat(64) }),
    /SHA-256 mismatch \(expected 0{64}, got [a-f0-9]{64}\)/,
  );
  await assert.rejects(
    ensureK3s(env, { arch: 'x86_64', localPath: STAND_IN, expectedSha256: 'xyz' }),
    /is not a SHA-256/,
  );
  await assert.rejects(
    ensureK3s(env, { arch: 'x86_64', localPath: '/nonexistent/k3s' }),
    /--k3s: \/nonexistent\/k3s does not exist/,
  );
});

test('a local k3s that is the pinned binary is recognised; any other is used with a warning', async (t) => {
  const env = await tmpEnv(t);
  const good = sha(await fs.readFile(STAND_IN));
  const pin: K3sPin = { version: 'v9.9.9+k3s1', sha256: { x86_64: good, aarch64: '0'.repeat(64) } };
  const pinned = await ensureK3s(env, { arch: 'x86_64', localPath: STAND_IN, pin });
  assert.deepEqual([pinned.verification, pinned.version], ['pinned', 'v9.9.9+k3s1']);
  const warnings: string[] = [];
  const other = await ensureK3s(
    env,
    { arch: 'aarch64', localPath: STAND_IN, pin },
    { warn: (m) => warnings.push(m) },
  );
  assert.equal(other.verification, 'unverified');
  assert.match(
    warnings[0] ?? '',
    /is not the pinned v9\.9\.9\+k3s1 aarch64 binary .* unverified \(pass --k3s-sha256/,
  );
});

test('the pinned release downloads into the cache, verified; a bad download is refused and not kept', async (t) => {
  const body = Buffer.from('#!/bin/sh\necho downloaded k3s\n');
  let served = body;
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    res.writeHead(200, { 'content-length': served.length }).end(served);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const env = await tmpEnv(t, `http://127.0.0.1:${(server.address() as AddressInfo).port}/releases`);
  const pin: K3sPin = { version: 'v1.2.3+k3s1', sha256: { x86_64: sha(body), aarch64: sha(body) } };
  const progress: string[] = [];
  const got = await ensureK3s(env, { arch: 'aarch64', pin }, { progress: (m) => progress.push(m) });
  assert.deepEqual(requests, [`/releases/v1.2.3%2Bk3s1/${K3S_ASSET.aarch64}`]);
  assert.equal(got.verification, 'pinned');
  assert.equal(got.path, path.join(env.cacheDir, 'k3s', 'v1.2.3+k3s1', 'k3s-arm64'));
  assert.ok(progress.some((m) => /downloading k3s v1\.2\.3\+k3s1/.test(m)));
  assert.equal(((await fs.stat(got.path)).mode & 0o111) !== 0, true, 'executable');
  // Cached: no second request.
  await ensureK3s(env, { arch: 'aarch64', pin });
  assert.equal(requests.length, 1);

  served = Buffer.from('tampered');
  await assert.rejects(ensureK3s(env, { arch: 'x86_64', pin }), /SHA-256 mismatch/);
  assert.deepEqual(await fs.readdir(path.join(env.cacheDir, 'k3s', 'v1.2.3+k3s1')), ['k3s-arm64']);
});
