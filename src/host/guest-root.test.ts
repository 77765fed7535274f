import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
import { GUEST_READ_LIMIT_BYTES, GuestRoot } from './guest-root.ts';

/** A rootfs and, beside it, a host directory with a decoy file that no operation may touch. */
async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-groot-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const root = path.join(base, 'rootfs');
  const outside = path.join(base, 'host');
  await fs.mkdir(root);
  await fs.mkdir(outside);
  const decoy = path.join(outside, 'decoy');
  await fs.writeFile(decoy, 'host secret\n', { mode: 0o600 });
  const untouched = async () => {
    assert.equal(await fs.readFile(decoy, 'utf8'), 'host secret\n');
    assert.deepEqual(await fs.readdir(outside), ['decoy']);
    assert.equal((await fs.stat(decoy)).mode & 0o777, 0o600);
  };
  return { root, outside, decoy, untouched };
}

const refused = (re: RegExp) => (err: unknown) => {
  assert.ok(err instanceof HostError, String(err));
  assert.match(err.message, re);
  assert.match(err.hint ?? '', /--reset|prepare-rootfs --force/);
  return true;
};

for (const procFd of [true, false]) {
  const mode = procFd ? '/proc/self/fd' : 'lstat walk';

  test(`${mode}: files round-trip; missing directories are made with the mode; missing reads are undefined`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    assert.equal(await g.readFile('a/b/c'), undefined);
    await g.writeFileAtomic('a/b/c', 'one', { mode: 0o600, dirMode: 0o700 });
    assert.equal(await g.readText('a/b/c'), 'one');
    assert.equal((await fs.stat(path.join(s.root, 'a/b/c'))).mode & 0o777, 0o600);
    assert.equal((await fs.stat(path.join(s.root, 'a/b'))).mode & 0o777, 0o700);
    assert.equal(await g.writeFileIfChanged('a/b/c', 'one', 0o600), false);
    assert.equal(await g.writeFileIfChanged('a/b/c', 'two', 0o644), true);
    assert.equal(await g.readText('a/b/c'), 'two');
    assert.equal((await fs.stat(path.join(s.root, 'a/b/c'))).mode & 0o777, 0o644);
    assert.deepEqual(await g.readdir('a/b'), ['c'], 'no temporary file left');
    await g.mkdirp('x/y', 0o700);
    assert.ok(await g.exists('x/y'));
    assert.equal(await g.readdir('nope'), undefined);
    assert.equal(await g.remove('nope/deeper'), false);
  });

  test(`${mode}: a symlink as the last component is refused for reading and writing, absolute or relative`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.mkdir(path.join(s.root, 'etc'));
    await fs.symlink(s.decoy, path.join(s.root, 'etc/abs'));
    await fs.symlink(path.relative(path.join(s.root, 'etc'), s.decoy), path.join(s.root, 'etc/rel'));
    for (const rel of ['etc/abs', 'etc/rel']) {
      await assert.rejects(
        g.readFile(rel),
        refused(/etc\/(abs|rel) is a symlink; the guest may have planted it/),
      );
      await assert.rejects(g.writeFileAtomic(rel, 'pwned'), refused(/is a symlink/));
      await assert.rejects(g.writeFileIfChanged(rel, 'pwned'), refused(/is a symlink/));
    }
    await s.untouched();
  });

  test(`${mode}: a dangling symlink as the last component is refused and nothing is created at its target`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    const target = path.join(s.outside, 'created');
    await fs.symlink(target, path.join(s.root, 'dangling'));
    await assert.rejects(g.readFile('dangling'), refused(/dangling is a symlink/));
    await assert.rejects(g.writeFileIfChanged('dangling', 'x'), refused(/dangling is a symlink/));
    await assert.rejects(fs.access(target));
    await s.untouched();
  });

  test(`${mode}: a symlink in the middle to a directory outside resolves inside the root, as in the guest (absolute or climbing above the root)`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.mkdir(path.join(s.root, 'var'));
    await fs.symlink(s.outside, path.join(s.root, 'var/abs'));
    await fs.symlink('../..', path.join(s.root, 'var/up'));
    await fs.symlink('/', path.join(s.root, 'slash'));
    // What each names inside the root (chroot semantics): never the host directory.
    const inside = { 'var/abs': s.outside.slice(1), 'var/up/host': 'host', 'slash/srv': 'srv' } as const;
    for (const [dir, rel] of Object.entries(inside)) {
      assert.equal(await g.readFile(`${dir}/decoy`), undefined, `${dir}/decoy read the host's decoy`);
      await g.writeFileAtomic(`${dir}/decoy`, 'pwned', { dirMode: 0o700 });
      assert.equal(await fs.readFile(path.join(s.root, rel, 'decoy'), 'utf8'), 'pwned');
      assert.deepEqual(await g.readdir(dir), ['decoy']);
      assert.equal(await g.remove(`${dir}/decoy`), true);
      await g.mkdirp(`${dir}/sub`);
      assert.ok((await fs.stat(path.join(s.root, rel, 'sub'))).isDirectory());
    }
    await s.untouched();
  });

  test(`${mode}: a relative symlink in the middle that stays inside is followed (merged /usr)`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.mkdir(path.join(s.root, 'usr/sbin'), { recursive: true });
    await fs.symlink('usr/sbin', path.join(s.root, 'sbin'));
    await fs.mkdir(path.join(s.root, 'usr/lib'), { recursive: true });
    await fs.symlink('../usr/lib', path.join(s.root, 'usr/lib64'));
    await g.writeFileAtomic('sbin/ovm-agent', 'agent', { mode: 0o755 });
    assert.equal(await fs.readFile(path.join(s.root, 'usr/sbin/ovm-agent'), 'utf8'), 'agent');
    await g.writeFileAtomic('usr/lib64/x', 'lib');
    assert.equal(await fs.readFile(path.join(s.root, 'usr/lib/x'), 'utf8'), 'lib');
    assert.equal(await g.readText('sbin/ovm-agent'), 'agent');
  });

  test(`${mode}: a symlink loop is refused`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.symlink('b', path.join(s.root, 'a'));
    await fs.symlink('a', path.join(s.root, 'b'));
    await assert.rejects(g.readFile('a/x'), refused(/too many levels of symbolic links/));
  });

  test(`${mode}: a file where a directory is expected is refused`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.writeFile(path.join(s.root, 'etc'), '');
    await assert.rejects(
      g.writeFileAtomic('etc/x', 'y'),
      refused(/etc is not a directory \(a regular file\)/),
    );
  });

  test(`${mode}: a FIFO where a file is expected is refused at once (no hang); so is a directory`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    execFileSync('mkfifo', [path.join(s.root, 'fifo')]);
    await fs.mkdir(path.join(s.root, 'dir'));
    await assert.rejects(g.readFile('fifo'), refused(/fifo is not a regular file \(a FIFO\)/));
    await assert.rejects(g.writeFileIfChanged('fifo', 'x'), refused(/a FIFO/));
    await assert.rejects(g.readFile('dir'), refused(/dir is not a regular file \(a directory\)/));
    await assert.rejects(g.writeFileAtomic('dir', 'x'), refused(/a directory/));
  });

  test(`${mode}: an oversized file is refused with the limit named`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.writeFile(path.join(s.root, 'big'), Buffer.alloc(GUEST_READ_LIMIT_BYTES + 1));
    await assert.rejects(g.readFile('big'), refused(/big is larger than 1 MiB/));
    await fs.writeFile(path.join(s.root, 'small'), 'x'.repeat(11));
    await assert.rejects(g.readFile('small', { maxBytes: 10 }), refused(/larger than 10 bytes/));
    assert.equal((await g.readFile('small', { maxBytes: 11 }))?.length, 11);
  });

  test(`${mode}: remove takes the tree out and unlinks the symlinks in it, never their targets`, async (t) => {
    const s = await setup(t);
    const g = new GuestRoot(s.root, { procFd });
    await fs.mkdir(path.join(s.root, 'var/lib/pods/p1'), { recursive: true });
    await fs.writeFile(path.join(s.root, 'var/lib/pods/p1/f'), 'x');
    await fs.symlink(s.outside, path.join(s.root, 'var/lib/pods/p1/to-host-dir'));
    await fs.symlink(s.decoy, path.join(s.root, 'var/lib/pods/to-host-file'));
    await fs.symlink(s.outside, path.join(s.root, 'var/run'));
    assert.equal(await g.remove('var/lib/pods'), true);
    assert.equal(await g.remove('var/run'), true, 'a symlink as the last component is unlinked');
    assert.deepEqual(await fs.readdir(path.join(s.root, 'var')), ['lib']);
    assert.deepEqual(await fs.readdir(path.join(s.root, 'var/lib')), []);
    await s.untouched();
  });
}

test('a planted FILE.tmp symlink does not matter: the temporary name is random and O_EXCL', async (t) => {
  const s = await setup(t);
  const g = new GuestRoot(s.root);
  await fs.symlink(s.decoy, path.join(s.root, 'm.yaml.tmp'));
  await g.writeFileAtomic('m.yaml', 'ours');
  assert.equal(await fs.readFile(path.join(s.root, 'm.yaml'), 'utf8'), 'ours');
  await s.untouched();
});

test('withDirectory gives a path naming the opened directory, for path-only APIs', async (t) => {
  const s = await setup(t);
  const g = new GuestRoot(s.root);
  const got = await g.withDirectory('a/b', 0o755, async (dir, host) => {
    await fs.writeFile(path.join(dir, 'f'), 'x');
    return host;
  });
  assert.equal(got, path.join(s.root, 'a/b'));
  assert.equal(await fs.readFile(path.join(s.root, 'a/b/f'), 'utf8'), 'x');
  assert.equal(await g.withDirectory('missing', undefined, async () => 1), undefined);
});
