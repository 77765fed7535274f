import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { type TreeEntry, treeDifferences, writeTree } from './tree.ts';

const ENTRIES: TreeEntry[] = [
  { type: 'dir', path: '.', mode: 0o755 },
  { type: 'dir', path: 'bin', mode: 0o755 },
  { type: 'file', path: 'bin/tool', mode: 0o755, data: Buffer.from('tool') },
  { type: 'symlink', path: 'bin/alias', target: 'tool' },
  { type: 'file', path: 'passwd', mode: 0o644, data: Buffer.from('root\n') },
];
const uid = process.getuid?.() ?? 0;

function written(t: { after: (fn: () => void) => void }): string {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-tree-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return path.join(base, 'root');
}

test('writeTree writes the modes asked for whatever the umask, and the tree then has no differences', async (t) => {
  const dir = written(t);
  const old = process.umask(0o000);
  try {
    await writeTree(dir, ENTRIES);
  } finally {
    process.umask(old);
  }
  assert.equal(fs.statSync(path.join(dir, 'bin')).mode & 0o7777, 0o755);
  assert.equal(fs.statSync(path.join(dir, 'passwd')).mode & 0o7777, 0o644);
  assert.deepEqual(await treeDifferences(dir, ENTRIES, uid), []);
});

test('treeDifferences names changed content, extra setuid files, other modes, links and missing entries', async (t) => {
  const dir = written(t);
  await writeTree(dir, ENTRIES);
  fs.appendFileSync(path.join(dir, 'passwd'), 'pwned\n');
  fs.writeFileSync(path.join(dir, 'bin/suid'), 'x', { mode: 0o4755 });
  fs.chmodSync(path.join(dir, 'bin/suid'), 0o4755);
  fs.chmodSync(path.join(dir, 'bin'), 0o777);
  fs.rmSync(path.join(dir, 'bin/alias'));
  fs.symlinkSync('/etc/shadow', path.join(dir, 'bin/alias'));
  assert.deepEqual((await treeDifferences(dir, ENTRIES, uid)).sort(), [
    'bin has mode 0777, expected 0755',
    'bin/alias points at /etc/shadow, expected tool',
    'passwd has other content',
    'unexpected file bin/suid (mode 4755)',
  ]);
  const fresh = `${dir}2`;
  await writeTree(fresh, ENTRIES);
  fs.rmSync(path.join(fresh, 'passwd'));
  fs.linkSync(path.join(fresh, 'bin/tool'), path.join(path.dirname(fresh), 'outside'));
  const again = await treeDifferences(fresh, ENTRIES, uid);
  assert.ok(again.includes('passwd is missing'), again.join('; '));
  assert.ok(again.includes('bin/tool has 2 hard links'), again.join('; '));
});

test('treeDifferences does not follow a directory replaced by a symlink, and caps the list', async (t) => {
  const dir = written(t);
  await writeTree(dir, ENTRIES);
  fs.rmSync(path.join(dir, 'bin'), { recursive: true });
  fs.symlinkSync('/usr/bin', path.join(dir, 'bin'));
  const problems = await treeDifferences(dir, ENTRIES, uid);
  assert.equal(problems[0], 'bin is a symlink, expected a dir');
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(dir, `extra${i}`), '');
  const many = await treeDifferences(dir, ENTRIES, uid);
  assert.equal(many.length, 6);
  assert.match(many[5] as string, /^and \d+ more$/);
});

test('treeDifferences reports another owner', async (t) => {
  const dir = written(t);
  await writeTree(dir, ENTRIES);
  const problems = await treeDifferences(dir, ENTRIES, uid + 1);
  assert.ok(
    problems.some((p) => p === `. is owned by uid ${uid}, not ${uid + 1}`),
    problems.join('; '),
  );
});
