import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { HostError } from '../errors.ts';
import { fetchPinned } from './libkrunfw-fetch.ts';
import type { PinnedDownload } from './libkrunfw-pins.ts';

const BODY = Buffer.alloc(3 * 1024 * 1024, 7);
const SHA = createHash('sha256').update(BODY).digest('hex');
let server: http.Server;
let base: string;
const hits: string[] = [];

before(async () => {
  server = http.createServer((req, res) => {
    hits.push(req.url ?? '');
    if (req.url === '/file') return res.end(BODY);
    if (req.url === '/short') {
      // Announces more than it sends, then closes: a broken transfer.
      res.writeHead(200, { 'content-length': String(BODY.length * 2) });
      res.write(BODY);
      setTimeout(() => res.destroy(), 100);
      return;
    }
    res.writeHead(404).end('no');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server.close());

function dir(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-fetch-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  // As in the cache: <cache>/kernels/downloads, below a directory of ours alone (mkdtemp's 0700).
  return path.join(d, 'downloads');
}
const pin = (p: Partial<PinnedDownload>): PinnedDownload => ({
  what: 'test source',
  version: '1.0',
  url: `${base}/file`,
  sha256: SHA,
  fileName: 'src.tar.gz',
  ...p,
});

test('a download with the pinned sha256 is kept (with progress); a second call uses it without a request', async (t) => {
  const d = dir(t);
  const seen: number[] = [];
  const first = await fetchPinned(pin({}), d, {
    onProgress: (n) => seen.push(n),
    progressStepBytes: 1024 * 1024,
  });
  assert.deepEqual(first, { file: path.join(d, 'src.tar.gz'), downloaded: true });
  assert.equal(seen.at(-1), BODY.length);
  assert.ok(seen.length >= 3, `progress: ${seen}`);
  const before = hits.length;
  assert.equal((await fetchPinned(pin({}), d)).downloaded, false);
  assert.equal(hits.length, before, 'no request for a verified file');
});

test('a checksum mismatch is refused and nothing is left; a damaged kept file is fetched again', async (t) => {
  const d = dir(t);
  await assert.rejects(
    fetchPinned(pin({ sha256: 'ab'.repeat(32) }), d),
    (e: unknown) =>
      e instanceof HostError &&
      e.message.startsWith(`checksum mismatch: ${base}/file sent a file with sha256 ${SHA}`) &&
      /nothing was kept/.test(e.hint ?? ''),
  );
  assert.deepEqual(fs.readdirSync(d), []);
  fs.writeFileSync(path.join(d, 'src.tar.gz'), 'damaged');
  assert.equal((await fetchPinned(pin({}), d)).downloaded, true);
  assert.equal(
    createHash('sha256')
      .update(fs.readFileSync(path.join(d, 'src.tar.gz')))
      .digest('hex'),
    SHA,
  );
});

test('HTTP errors, broken transfers and unpinned files: each an error, nothing left', async (t) => {
  const d = dir(t);
  await assert.rejects(fetchPinned(pin({ url: `${base}/gone` }), d), /answered HTTP 404/);
  await assert.rejects(fetchPinned(pin({ url: `${base}/short` }), d), /broke off after|ended after/);
  const before = hits.length;
  await assert.rejects(
    fetchPinned(pin({ sha256: undefined }), d),
    (e: unknown) =>
      e instanceof HostError && /has no pinned sha256: refusing to download it unverified/.test(e.message),
  );
  assert.equal(hits.length, before, 'an unpinned file is never requested');
  assert.deepEqual(fs.readdirSync(d), []);
});
