import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { findDirInRoot, resolveInRoot, splitArchivePath } from './root-path.ts';

async function tmpRoot(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-root-path-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('splitArchivePath drops ./, leading / and empty parts, and refuses ..', () => {
  assert.deepEqual(splitArchivePath('./usr//bin/', 'a'), ['usr', 'bin']);
  assert.deepEqual(splitArchivePath('/etc/passwd', 'a'), ['etc', 'passwd']);
  assert.deepEqual(splitArchivePath('./', 'a'), []);
  assert.throws(() => splitArchivePath('a/../b', 'a'), /a: refusing the member 'a\/\.\.\/b'/);
});

test('findDirInRoot resolves symlinks as in a chroot and creates nothing', async (t) => {
  const root = await tmpRoot(t);
  await fs.mkdir(path.join(root, 'usr/lib'), { recursive: true });
  await fs.symlink('usr/lib', path.join(root, 'lib'));
  await fs.symlink('/usr', path.join(root, 'abs'));
  await fs.symlink('../../../..', path.join(root, 'up'));
  await fs.writeFile(path.join(root, 'file'), '');
  assert.equal(await findDirInRoot(root, ['lib']), path.join(root, 'usr/lib'));
  assert.equal(await findDirInRoot(root, ['abs', 'lib']), path.join(root, 'usr/lib'));
  assert.equal(await findDirInRoot(root, ['up', 'usr']), path.join(root, 'usr'));
  assert.equal(await findDirInRoot(root, ['missing', 'dir']), undefined);
  assert.equal(await findDirInRoot(root, ['file']), undefined);
  assert.deepEqual((await fs.readdir(root)).sort(), ['abs', 'file', 'lib', 'up', 'usr']);
});

test('resolveInRoot with create makes what is missing, replacing a file, inside the root', async (t) => {
  const root = await tmpRoot(t);
  await fs.writeFile(path.join(root, 'file'), '');
  await fs.symlink('/elsewhere', path.join(root, 'link'));
  assert.equal(await resolveInRoot(root, ['file', 'x'], { create: true }), path.join(root, 'file/x'));
  assert.equal(await resolveInRoot(root, ['link', 'y'], { create: true }), path.join(root, 'elsewhere/y'));
  await assert.rejects(resolveInRoot(root, ['nope'], { create: false }), /nope does not exist under/);
});
