import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { applyDirMeta, dirIdentity, writeNewFile } from './safe-write.ts';

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-safe-write-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

const meta = { mode: 0o4755, uid: 0, gid: 0, mtime: new Date(0) };

async function* chunks(...parts: string[]) {
  for (const p of parts) yield Buffer.from(p);
}

test('writeNewFile creates the file with its content, mode (setuid kept) and mtime', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'tool');
  await writeNewFile(file, chunks('bin', 'ary'), meta, { owners: false });
  const st = await fs.lstat(file);
  assert.equal(st.mode & 0o7777, 0o4755);
  assert.equal(st.mtimeMs, 0);
  assert.equal(await fs.readFile(file, 'utf8'), 'binary');
});

test('writeNewFile never opens what is already at the name: a file or a symlink to another file', async (t) => {
  const dir = await tmp(t);
  const other = path.join(dir, 'other');
  await fs.writeFile(other, 'keep', { mode: 0o644 });
  await fs.symlink(other, path.join(dir, 'link'));
  await assert.rejects(writeNewFile(path.join(dir, 'link'), chunks('evil'), meta, { owners: false }), {
    code: 'EEXIST',
  });
  await assert.rejects(writeNewFile(other, chunks('evil'), meta, { owners: false }), { code: 'EEXIST' });
  assert.equal(await fs.readFile(other, 'utf8'), 'keep');
  assert.equal((await fs.stat(other)).mode & 0o7777, 0o644);
});

test('applyDirMeta applies to the same directory, reached through real directories only', async (t) => {
  const root = await tmp(t);
  const outside = await tmp(t);
  await fs.mkdir(path.join(root, 'a/b'), { recursive: true });
  const id = await dirIdentity(path.join(root, 'a/b'));
  assert.equal(await applyDirMeta(root, path.join(root, 'a/b'), id, { ...meta, mode: 0o1777 }, false), true);
  assert.equal((await fs.stat(path.join(root, 'a/b'))).mode & 0o7777, 0o1777);

  // The same name, another directory: the metadata was for the one moved away.
  await fs.rename(path.join(root, 'a/b'), path.join(root, 'moved'));
  await fs.mkdir(path.join(root, 'a/b'));
  assert.equal(await applyDirMeta(root, path.join(root, 'a/b'), id, meta, false), false);

  // A parent replaced by a symlink to a directory that has the same name under it.
  await fs.mkdir(path.join(outside, 'b'));
  const outsideId = await dirIdentity(path.join(outside, 'b'));
  await fs.rm(path.join(root, 'a'), { recursive: true });
  await fs.symlink(outside, path.join(root, 'a'));
  assert.equal(await applyDirMeta(root, path.join(root, 'a/b'), outsideId, meta, false), false);
  // The last component a symlink (even one to the very directory recorded).
  await fs.symlink(path.join(outside, 'b'), path.join(root, 'c'));
  assert.equal(await applyDirMeta(root, path.join(root, 'c'), outsideId, meta, false), false);
  assert.equal((await fs.stat(path.join(outside, 'b'))).mode & 0o7000, 0);
  // Nothing outside the root at all.
  assert.equal(await applyDirMeta(root, path.join(outside, 'b'), outsideId, meta, false), false);
  assert.equal(await applyDirMeta(root, root, await dirIdentity(root), meta, false), false);
});
