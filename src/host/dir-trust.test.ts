import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { HostError } from '../errors.ts';
import { ensureTrustedCacheDir, pathChain, requireTrustedCachePath, untrustedEntryIn } from './dir-trust.ts';

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0 ? false : 'needs root (entries owned by nobody are made with chown)';

function base(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-dir-trust-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The refusal: the path, the owner and mode found, and the fix. */
function refused(named: string, why: RegExp, fix: 'chmod' | 'remove') {
  return (err: unknown) => {
    assert.ok(err instanceof HostError, String(err));
    assert.ok(err.message.startsWith(`refusing to use ${named}: it `), err.message);
    assert.match(err.message, why);
    assert.match(err.message, /\(owner uid \d+, mode 0[0-7]{3,4}\)/);
    assert.ok(
      (err.hint ?? '').includes(fix === 'chmod' ? `chmod go-w ${named}` : `rm -rf ${named}`),
      err.hint,
    );
    return true;
  };
}

test('pathChain: the root, then each directory down to the target; a target outside the root is a bug', () => {
  assert.deepEqual(pathChain('/c/kernels', '/c/kernels/source/abc'), [
    '/c/kernels',
    '/c/kernels/source',
    '/c/kernels/source/abc',
  ]);
  assert.deepEqual(pathChain('/c/kernels', '/c/kernels'), ['/c/kernels']);
  assert.throws(() => pathChain('/c/kernels', '/c/other'), /not inside/);
  assert.throws(() => pathChain('/c/kernels', '/c/kernels/../x'), /not inside/);
});

test('requireTrustedCachePath: trusted, missing, a root that is a symlink to ours; a symlink below it is refused', async (t) => {
  const b = base(t);
  const root = path.join(b, 'kernels');
  fs.mkdirSync(path.join(root, 'x86_64-qemu', 'k'), { recursive: true });
  fs.writeFileSync(path.join(root, 'x86_64-qemu', 'k', 'bzImage'), '');
  assert.equal(await requireTrustedCachePath(root, path.join(root, 'x86_64-qemu', 'k')), 'trusted');
  assert.equal(
    await requireTrustedCachePath(root, path.join(root, 'x86_64-qemu', 'k', 'bzImage'), 'file'),
    'trusted',
  );
  assert.equal(await requireTrustedCachePath(root, path.join(root, 'aarch64-qemu', 'k')), 'missing');
  assert.equal(await requireTrustedCachePath(path.join(b, 'none'), path.join(b, 'none', 'x')), 'missing');
  const link = path.join(b, 'linked');
  fs.symlinkSync(root, link);
  assert.equal(await requireTrustedCachePath(link, path.join(link, 'x86_64-qemu')), 'trusted');
  const planted = path.join(root, 'x86_64-qemu', 'current-build');
  fs.symlinkSync(path.join(root, 'x86_64-qemu', 'k'), planted);
  await assert.rejects(requireTrustedCachePath(root, planted), refused(planted, /is a symlink/, 'remove'));
  await assert.rejects(
    requireTrustedCachePath(root, path.join(root, 'x86_64-qemu', 'k'), 'file'),
    refused(path.join(root, 'x86_64-qemu', 'k'), /is a directory/, 'remove'),
  );
});

test('requireTrustedCachePath: a directory writable by group or others, anywhere in the chain, is named', async (t) => {
  const root = path.join(base(t), 'kernels');
  const mid = path.join(root, 'source');
  fs.mkdirSync(path.join(mid, 'tree'), { recursive: true });
  for (const [at, mode, who] of [
    [root, 0o777, /is writable by its group and others/],
    [mid, 0o775, /is writable by its group \(/],
    [path.join(mid, 'tree'), 0o757, /is writable by others \(/],
  ] as const) {
    fs.chmodSync(at, mode);
    await assert.rejects(requireTrustedCachePath(root, path.join(mid, 'tree')), refused(at, who, 'chmod'));
    fs.chmodSync(at, 0o755);
  }
  assert.equal(await requireTrustedCachePath(root, path.join(mid, 'tree')), 'trusted');
});

test('requireTrustedCachePath: a directory or file of another user is named, with removing it as the fix', {
  skip: asRoot,
}, async (t) => {
  const root = path.join(base(t), 'kernels');
  const dir = path.join(root, 'x86_64-qemu');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'current'), '');
  fs.chownSync(path.join(dir, 'current'), NOBODY, NOBODY);
  await assert.rejects(
    requireTrustedCachePath(root, path.join(dir, 'current'), 'file'),
    refused(path.join(dir, 'current'), /belongs to uid 65534, not to us \(uid 0\)/, 'remove'),
  );
  fs.chownSync(dir, NOBODY, NOBODY);
  await assert.rejects(requireTrustedCachePath(root, dir), refused(dir, /belongs to uid 65534/, 'remove'));
});

test('ensureTrustedCacheDir: makes what is missing 0700 whatever the umask; an open one is refused as it is, nothing made in it', async (t) => {
  const b = base(t);
  const root = path.join(b, 'cache', 'kernels');
  const old = process.umask(0o000);
  try {
    await ensureTrustedCacheDir(root, path.join(root, 'x86_64-qemu'));
  } finally {
    process.umask(old);
  }
  for (const d of [root, path.join(root, 'x86_64-qemu')]) assert.equal(fs.statSync(d).mode & 0o777, 0o700, d);
  fs.chmodSync(root, 0o755);
  await ensureTrustedCacheDir(root, path.join(root, 'x86_64-qemu'));
  assert.equal(
    fs.statSync(root).mode & 0o777,
    0o755,
    'one of ours that others cannot write is left as it is',
  );
  fs.chmodSync(root, 0o777);
  await assert.rejects(
    ensureTrustedCacheDir(root, path.join(root, 'source')),
    refused(root, /writable/, 'chmod'),
  );
  assert.equal(fs.statSync(root).mode & 0o777, 0o777, 'not tightened behind the user’s back');
  assert.equal(fs.existsSync(path.join(root, 'source')), false);
});

test('untrustedEntryIn: the first entry writable by others, however deep; a symlink’s own mode does not count', async (t) => {
  const tree = path.join(base(t), 'tree');
  fs.mkdirSync(path.join(tree, 'scripts', 'kconfig'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'Makefile'), '');
  fs.symlinkSync('Makefile', path.join(tree, 'GNUmakefile'));
  assert.equal(await untrustedEntryIn(tree), undefined);
  const deep = path.join(tree, 'scripts', 'kconfig', 'conf.sh');
  fs.writeFileSync(deep, '');
  fs.chmodSync(deep, 0o646);
  const found = await untrustedEntryIn(tree);
  assert.deepEqual([found?.path, found?.reason], [deep, 'is writable by others (mode 0646)']);
});

test('untrustedEntryIn: an entry of another user', { skip: asRoot }, async (t) => {
  const tree = path.join(base(t), 'tree');
  fs.mkdirSync(path.join(tree, 'arch'), { recursive: true });
  fs.chownSync(path.join(tree, 'arch'), NOBODY, NOBODY);
  const found = await untrustedEntryIn(tree);
  assert.deepEqual(
    [found?.path, found?.reason],
    [path.join(tree, 'arch'), 'belongs to uid 65534, not to us (uid 0)'],
  );
});
