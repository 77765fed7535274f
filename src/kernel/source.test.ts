// The shared unpacked source tree: placed whole, never removed from under another build, and
// nothing in it writable by others whatever the umask. Planted trees are test/hostile/kernel-cache.test.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { untrustedEntryIn } from '../host/dir-trust.ts';
import { ensureSourceTree, type KernelSource, localSource } from './source.ts';

const MAKEFILE = 'VERSION = 6\nPATCHLEVEL = 99\nSUBLEVEL = 1\n';

/** A stand-in source tarball; `open` makes its entries writable by everyone inside the archive. */
async function tarball(
  t: TestContext,
  open = false,
): Promise<{ env: HostEnvironment; source: KernelSource; dir: string }> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-ksrc-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const tree = path.join(base, 'src', 'linux-6.99');
  fs.mkdirSync(path.join(tree, 'scripts'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'Makefile'), MAKEFILE);
  fs.writeFileSync(path.join(tree, 'Kconfig'), '');
  fs.writeFileSync(path.join(tree, 'scripts', 'tool.sh'), '#!/bin/sh\n');
  if (open) {
    for (const p of ['Makefile', 'Kconfig', 'scripts/tool.sh']) fs.chmodSync(path.join(tree, p), 0o666);
    for (const p of ['', 'scripts']) fs.chmodSync(path.join(tree, p), 0o777);
  }
  const file = path.join(base, 'linux-6.99.tar.xz');
  execFileSync('tar', ['-cJf', file, '-C', path.join(base, 'src'), 'linux-6.99']);
  const env = testEnvironment(base, { cacheDir: path.join(base, 'cache') });
  const source = await localSource(file);
  return { env, source, dir: path.join(env.cacheDir, 'kernels', 'source', source.sha256.slice(0, 24)) };
}

const siblings = (dir: string) => fs.readdirSync(path.dirname(dir)).sort();

test('a tree another build put in place while this one unpacked is used, not removed', async (t) => {
  const { env, source, dir } = await tarball(t);
  const theirs = path.join(dir, 'from-the-other-build');
  const tree = await ensureSourceTree(env, source, 'tar', {
    // The other build finishes first: its complete tree is renamed into place now.
    onUnpack: () => {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      fs.writeFileSync(path.join(dir, 'Makefile'), MAKEFILE);
      fs.writeFileSync(path.join(dir, '.openshell-vm-complete'), `${source.sha256}\n`);
      fs.writeFileSync(theirs, '');
    },
  });
  assert.equal(fs.existsSync(theirs), true, "the other build's tree was removed from under it");
  assert.deepEqual([tree.dir, tree.kernelVersion, tree.unpacked], [dir, '6.99.1', false]);
  assert.deepEqual(siblings(dir), [path.basename(dir)], 'no temporary tree left');
});

test('a tree without its marker (an interrupted older build) is replaced whole', async (t) => {
  const { env, source, dir } = await tarball(t);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'half-unpacked'), '');
  const tree = await ensureSourceTree(env, source, 'tar');
  assert.equal(tree.unpacked, true);
  assert.equal(fs.existsSync(path.join(dir, 'half-unpacked')), false);
  assert.equal(fs.readFileSync(path.join(dir, '.openshell-vm-complete'), 'utf8'), `${source.sha256}\n`);
  assert.deepEqual(siblings(dir), [path.basename(dir)], 'nothing renamed aside is left');
});

test('under umask 000, from an archive whose entries are 0666/0777: nothing writable by others, the directories 0700', async (t) => {
  const { env, source, dir } = await tarball(t, true);
  const old = process.umask(0o000);
  try {
    assert.equal((await ensureSourceTree(env, source, 'tar')).unpacked, true);
  } finally {
    process.umask(old);
  }
  assert.equal(await untrustedEntryIn(dir), undefined);
  for (const d of [path.join(env.cacheDir, 'kernels'), path.dirname(dir), dir])
    assert.equal(fs.statSync(d).mode & 0o777, 0o700, d);
  // And so it is used again as it is, not refused.
  assert.equal((await ensureSourceTree(env, source, 'tar')).unpacked, false);
});
