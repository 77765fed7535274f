import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { extractTar } from './tar-extract.ts';
import { bufferStream, type PackEntry, packTarBuffer } from './tar-pack.ts';

const isRoot = process.getuid?.() === 0;

async function tmpRoot(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-tar-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function extract(root: string, entries: PackEntry[], layer = false) {
  return extractTar(bufferStream(await packTarBuffer(entries)), {
    root,
    layer,
    owners: isRoot,
    label: 'test archive',
  });
}

test('files, modes (setuid kept), owners, symlinks, hard links and directories are reproduced', async (t) => {
  const root = await tmpRoot(t);
  const report = await extract(root, [
    { name: 'usr/', type: 'directory', mode: 0o755 },
    { name: 'usr/bin/', type: 'directory', mode: 0o755 },
    { name: 'usr/bin/tool', type: 'file', mode: 0o4755, data: 'binary', uid: 1234, gid: 99 },
    { name: 'usr/bin/alias', type: 'symlink', linkname: 'tool' },
    { name: 'usr/bin/hard', type: 'link', linkname: 'usr/bin/tool' },
    { name: './etc/secret', type: 'file', mode: 0o600, data: 'x' },
    { name: 'ro/', type: 'directory', mode: 0o555 },
    { name: 'ro/inside', type: 'file', data: 'written before the directory became read-only' },
  ]);
  const tool = await fs.stat(path.join(root, 'usr/bin/tool'));
  assert.equal(tool.mode & 0o7777, 0o4755);
  assert.equal(await fs.readFile(path.join(root, 'usr/bin/tool'), 'utf8'), 'binary');
  if (isRoot) assert.deepEqual([tool.uid, tool.gid], [1234, 99]);
  assert.equal(await fs.readlink(path.join(root, 'usr/bin/alias')), 'tool');
  assert.equal((await fs.stat(path.join(root, 'usr/bin/hard'))).ino, tool.ino);
  assert.equal((await fs.stat(path.join(root, 'etc/secret'))).mode & 0o777, 0o600);
  assert.equal((await fs.stat(path.join(root, 'ro'))).mode & 0o777, 0o555);
  assert.equal((await fs.stat(path.join(root, 'usr/bin/tool'))).mtime.getTime(), 0);
  assert.deepEqual([report.files, report.dirs, report.symlinks, report.hardlinks], [3, 3, 1, 1]);
  await fs.chmod(path.join(root, 'ro'), 0o755);
});

test('a member with .. is refused and nothing outside the root is written', async (t) => {
  const root = await tmpRoot(t);
  const outside = path.join(path.dirname(root), `escape-${path.basename(root)}`);
  await assert.rejects(
    extract(root, [{ name: `../${path.basename(outside)}`, type: 'file', data: 'x' }]),
    /refusing the member.*climbs out of the root/,
  );
  await assert.rejects(fs.access(outside));
});

test('symlinks on the way to a member resolve inside the root, never outside it', async (t) => {
  const root = await tmpRoot(t);
  const victim = await tmpRoot(t);
  await extract(root, [
    { name: 'abs', type: 'symlink', linkname: victim },
    { name: 'abs/planted', type: 'file', data: 'inside' },
    { name: 'rel', type: 'symlink', linkname: '../../../../../../../../tmp' },
    { name: 'rel/planted2', type: 'file', data: 'inside too' },
    // merged-/usr images: lib -> usr/lib, and a later member written through the link
    { name: 'usr/lib/', type: 'directory' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'lib/libc.so', type: 'file', data: 'libc' },
  ]);
  assert.deepEqual(await fs.readdir(victim), []);
  assert.equal(await fs.readFile(path.join(root, victim, 'planted'), 'utf8'), 'inside');
  assert.equal(await fs.readFile(path.join(root, 'tmp/planted2'), 'utf8'), 'inside too');
  assert.equal(await fs.readFile(path.join(root, 'usr/lib/libc.so'), 'utf8'), 'libc');
});

test('layer whiteouts delete lower files; an opaque directory keeps only its own layer', async (t) => {
  const root = await tmpRoot(t);
  await extract(
    root,
    [
      { name: 'etc/', type: 'directory' },
      { name: 'etc/keep', type: 'file', data: 'keep' },
      { name: 'etc/gone', type: 'file', data: 'gone' },
      { name: 'opq/', type: 'directory' },
      { name: 'opq/old', type: 'file', data: 'old' },
      { name: 'opq/sub/old2', type: 'file', data: 'old' },
    ],
    true,
  );
  const report = await extract(
    root,
    [
      { name: 'etc/.wh.gone', type: 'file', data: '' },
      { name: 'opq/new/file', type: 'file', data: 'new' },
      // the marker may come after this layer's own members of the directory
      { name: 'opq/.wh..wh..opq', type: 'file', data: '' },
    ],
    true,
  );
  assert.equal(report.whiteouts, 2);
  assert.deepEqual((await fs.readdir(path.join(root, 'etc'))).sort(), ['keep']);
  assert.deepEqual(await fs.readdir(path.join(root, 'opq')), ['new']);
  assert.equal(await fs.readFile(path.join(root, 'opq/new/file'), 'utf8'), 'new');
});

test('without layer semantics, .wh. names are ordinary files', async (t) => {
  const root = await tmpRoot(t);
  await extract(root, [{ name: 'a/.wh.b', type: 'file', data: 'x' }]);
  assert.deepEqual(await fs.readdir(path.join(root, 'a')), ['.wh.b']);
});

test('a later member replaces an earlier one of another type', async (t) => {
  const root = await tmpRoot(t);
  await extract(root, [
    { name: 'x/y', type: 'file', data: 'file first' },
    { name: 'x', type: 'symlink', linkname: 'elsewhere' },
    { name: 'z', type: 'file', data: 'z' },
    { name: 'z/inner', type: 'file', data: 'now a directory' },
  ]);
  assert.equal(await fs.readlink(path.join(root, 'x')), 'elsewhere');
  assert.equal(await fs.readFile(path.join(root, 'z/inner'), 'utf8'), 'now a directory');
});

test('a truncated archive is an error, not a silent partial tree', async (t) => {
  const root = await tmpRoot(t);
  const whole = await packTarBuffer([{ name: 'big', type: 'file', data: Buffer.alloc(100_000, 1) }]);
  await assert.rejects(
    extractTar(bufferStream(whole.subarray(0, 50_000)), { root, owners: false, label: 'cut' }),
    /cut: cannot extract: .*\n?/,
  );
});

test('the last member for a directory gives its metadata; a replaced directory gets none', async (t) => {
  const root = await tmpRoot(t);
  const report = await extract(root, [
    { name: 'd/', type: 'directory', mode: 0o700 },
    { name: 'd/', type: 'directory', mode: 0o750 },
    { name: 'gone/', type: 'directory', mode: 0o4777 },
    { name: 'gone', type: 'file', mode: 0o644, data: 'a file now' },
  ]);
  assert.equal((await fs.stat(path.join(root, 'd'))).mode & 0o7777, 0o750);
  assert.equal((await fs.stat(path.join(root, 'gone'))).mode & 0o7777, 0o644);
  assert.equal(report.replacedDirs, 1);
});

test('a whiteout creates nothing; AUFS metadata in a layer is skipped', async (t) => {
  const root = await tmpRoot(t);
  await extract(root, [{ name: 'f', type: 'file', data: 'a file, not a directory' }], true);
  const report = await extract(
    root,
    [
      { name: 'missing/dir/.wh.x', type: 'file', data: '' },
      { name: 'f/.wh.x', type: 'file', data: '' },
      { name: '.wh..wh.plnk/', type: 'directory' },
      { name: '.wh..wh.plnk/123.456', type: 'file', data: '' },
    ],
    true,
  );
  assert.deepEqual((await fs.readdir(root)).sort(), ['f']);
  assert.equal(await fs.readFile(path.join(root, 'f'), 'utf8'), 'a file, not a directory');
  assert.deepEqual([report.whiteouts, report.skippedAufsMeta], [2, 2]);
});
