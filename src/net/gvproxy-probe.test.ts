import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { GVPROXY_PROBE_CACHE, gvproxySpec, hasServicesFlag } from './gvproxy.ts';

/** A fake gvproxy whose -help lists -services (or not) and counts how often it was run. */
function fakeGvproxy(dir: string, withServices: boolean): { binary: string; runs: () => number } {
  const binary = path.join(dir, 'gvproxy');
  const counter = path.join(dir, 'runs');
  const flag = withServices ? '  -services string\\n' : '';
  fs.writeFileSync(
    binary,
    `#!/bin/sh\necho x >> '${counter}'\nprintf 'Usage of gvproxy:\\n  -listen value\\n${flag}' >&2\nexit 2\n`,
    { mode: 0o755 },
  );
  return {
    binary,
    runs: () => (fs.existsSync(counter) ? fs.readFileSync(counter, 'utf8').split('\n').length - 1 : 0),
  };
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-gvprobe-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('the -services probe is run once per binary and then answered from the cache', async (t) => {
  const dir = tempDir(t);
  const cacheDir = path.join(dir, 'cache');
  const gv = fakeGvproxy(dir, true);
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), true);
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), true);
  const spec = await gvproxySpec(gv.binary, dir, dir, { cacheDir });
  assert.equal(spec.args[0], '-services');
  assert.equal(gv.runs(), 1, 'gvproxy -help ran once');
  assert.ok(fs.existsSync(path.join(cacheDir, GVPROXY_PROBE_CACHE)));
  // Without a cache directory every call probes.
  await hasServicesFlag(gv.binary);
  assert.equal(gv.runs(), 2);
});

test('a replaced gvproxy (another size or mtime) is probed again, and the new answer kept', async (t) => {
  const dir = tempDir(t);
  const cacheDir = path.join(dir, 'cache');
  const gv = fakeGvproxy(dir, true);
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), true);
  fakeGvproxy(dir, false); // rewritten in place: an older gvproxy, without -services
  fs.utimesSync(gv.binary, new Date(), new Date(Date.now() + 5_000));
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), false);
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), false);
  assert.equal(gv.runs(), 2);
  const cache = JSON.parse(fs.readFileSync(path.join(cacheDir, GVPROXY_PROBE_CACHE), 'utf8'));
  assert.equal(cache.entries.length, 1, 'one entry per binary path');
});

test('a damaged or foreign cache file is no error: the probe answers and rewrites it', async (t) => {
  const dir = tempDir(t);
  const cacheDir = path.join(dir, 'cache');
  const gv = fakeGvproxy(dir, false);
  const file = path.join(cacheDir, GVPROXY_PROBE_CACHE);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const stat = fs.statSync(gv.binary);
  for (const content of [
    '{not json',
    JSON.stringify([]),
    // A planted answer for this very binary, with an unknown field: not trusted.
    JSON.stringify({
      version: 1,
      entries: [
        {
          binary: gv.binary,
          size: stat.size,
          mtimeMs: stat.mtimeMs,
          ino: stat.ino,
          hasServicesFlag: true,
          x: 1,
        },
      ],
    }),
  ]) {
    fs.writeFileSync(file, content);
    assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), false);
  }
  assert.equal(gv.runs(), 3);
  assert.equal(await hasServicesFlag(gv.binary, { cacheDir }), false);
  assert.equal(gv.runs(), 3, 'the rewritten cache answers');
});
