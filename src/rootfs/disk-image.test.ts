import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { readEnvironment } from '../config/environment.ts';
import { buildDiskImage, diskImageBytes, findMke2fs, mke2fsArgs } from './disk-image.ts';

test('the image is twice the tree plus 2 GiB, at least 8 GiB, in whole MiB', () => {
  assert.equal(diskImageBytes(0), 8 * 1024 ** 3);
  assert.equal(diskImageBytes(4 * 1024 ** 3), 10 * 1024 ** 3);
  assert.equal(diskImageBytes(4 * 1024 ** 3 + 1) % (1 << 20), 0);
  assert.deepEqual(mke2fsArgs('/r', '/i').slice(-1), ['/i']);
  assert.ok(mke2fsArgs('/r', '/i').includes('root_owner=0:0'));
});

const env = readEnvironment();
const mke2fs = await findMke2fs(env).catch(() => undefined);
const debugfs = mke2fs ? path.join(path.dirname(mke2fs), 'debugfs') : undefined;

test('a tree becomes an ext4 image with its files, modes, symlinks (not followed) and hard links', {
  skip: mke2fs ? false : 'mke2fs not found (apt-get install e2fsprogs)',
}, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-disk-'));
  const root = path.join(dir, 'root');
  await fs.mkdir(path.join(root, 'etc'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc', 'secret'), 'guest data\n', { mode: 0o600 });
  await fs.link(path.join(root, 'etc', 'secret'), path.join(root, 'etc', 'hard'));
  // A symlink planted in the guest's tree to a host file stays a symlink in the image.
  await fs.symlink('/etc/shadow', path.join(root, 'etc', 'escape'));
  const image = await buildDiskImage(env, root, path.join(dir, 'disk.raw'), { signal: undefined });
  assert.equal((await fs.stat(image.path)).size, image.sizeBytes);
  // Sparse: far less on disk than its size.
  assert.ok((await fs.stat(image.path)).blocks * 512 < image.sizeBytes / 8);
  const ls = execFileSync(debugfs as string, ['-R', 'stat /etc/secret', image.path], { encoding: 'utf8' });
  assert.match(ls, /Mode:\s+0600/);
  assert.match(ls, /Links: 2/);
  const cat = execFileSync(debugfs as string, ['-R', 'cat /etc/secret', image.path], { encoding: 'utf8' });
  assert.equal(cat, 'guest data\n');
  const link = execFileSync(debugfs as string, ['-R', 'stat /etc/escape', image.path], { encoding: 'utf8' });
  assert.match(link, /Type: symlink/);
  assert.match(link, /Fast link dest: "\/etc\/shadow"/);
  // No temporary file beside it.
  assert.deepEqual((await fs.readdir(dir)).sort(), ['disk.raw', 'root']);
  await fs.rm(dir, { recursive: true });
});

test('mke2fs failing leaves no image and says why', {
  skip: mke2fs ? false : 'mke2fs not found (apt-get install e2fsprogs)',
}, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-disk-'));
  await assert.rejects(
    buildDiskImage(env, path.join(dir, 'absent'), path.join(dir, 'disk.raw'), { signal: undefined }),
    /cannot measure|mke2fs/,
  );
  assert.deepEqual(await fs.readdir(dir), []);
  await fs.rm(dir, { recursive: true });
});

test('an abort (Ctrl-C) ends mke2fs, SIGKILL when it ignores SIGTERM, before the build rejects; no image is left', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-disk-'));
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin);
  await fs.mkdir(path.join(dir, 'root'));
  const pidFile = path.join(dir, 'mke2fs.pid');
  // A mke2fs that never ends by itself and ignores SIGTERM.
  await fs.writeFile(
    path.join(bin, 'mke2fs'),
    `#!/bin/sh\ntrap '' TERM\necho $$ > '${pidFile}'\nexec sleep 60\n`,
    {
      mode: 0o755,
    },
  );
  const e = testEnvironment(dir, { searchPath: bin });
  const ac = new AbortController();
  const building = buildDiskImage(e, path.join(dir, 'root'), path.join(dir, 'disk.raw'), {
    signal: ac.signal,
    graceMs: 200,
  });
  let pid: number | undefined;
  for (let i = 0; i < 200 && !pid; i++) {
    await new Promise((r) => setTimeout(r, 25));
    pid = Number.parseInt(await fs.readFile(pidFile, 'utf8').catch(() => ''), 10) || undefined;
  }
  assert.ok(pid, 'the fake mke2fs ran');
  ac.abort(new Error('interrupted'));
  await assert.rejects(building, /interrupted/);
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'mke2fs still runs after the abort');
  assert.deepEqual((await fs.readdir(dir)).sort(), ['bin', 'mke2fs.pid', 'root']);
  await fs.rm(dir, { recursive: true });
});
