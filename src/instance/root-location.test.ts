import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { HostError, UsageError } from '../errors.ts';
import { type DirFacts, ensureRootLocation, judgeRootChain, refuseWritableRunRoot } from './root-location.ts';

const ME = 1000;
const d = (p: string, mode: number, uid = ME): DirFacts => ({ path: p, uid, mode });
const ROOT_DIR = d('/', 0o755, 0);
const root = d('/x/rootfs', 0o755);

test('a chain of ours and root with one 0700 directory passes', () => {
  assert.equal(judgeRootChain([ROOT_DIR, d('/home', 0o755, 0), d('/home/me', 0o700)], root, ME), undefined);
  assert.equal(
    judgeRootChain([ROOT_DIR, d('/home', 0o755, 0), d('/home/me', 0o700), d('/home/me/vm', 0o755)], root, ME),
    undefined,
  );
  // Search permission for the group alone leaves it open: both group and others must lack it.
  assert.match(
    judgeRootChain([ROOT_DIR, d('/home/me', 0o710)], root, ME)?.why ?? '',
    /every directory above it can be entered/,
  );
});

test('a 0755 chain is refused at the parent, with chmod 700 as the fix', () => {
  const p = judgeRootChain([ROOT_DIR, d('/srv', 0o755, 0), d('/srv/vm', 0o755)], root, ME);
  assert.equal(p?.dir.path, '/srv/vm');
  assert.match(p?.fix ?? '', /^chmod 700 \/srv\/vm /);
});

test("another user's directory anywhere above is refused, even below a 0700 one", () => {
  const p = judgeRootChain([ROOT_DIR, d('/home/me', 0o700), d('/home/me/theirs', 0o755, 65534)], root, ME);
  assert.equal(p?.dir.path, '/home/me/theirs');
  assert.match(p?.why ?? '', /belongs to uid 65534/);
});

test('a directory writable by group or others is refused; a sticky one only when what is below is not ours', () => {
  assert.match(
    judgeRootChain([ROOT_DIR, d('/w', 0o775, 0), d('/w/me', 0o700)], root, ME)?.why ?? '',
    /writable by its group,/,
  );
  assert.match(
    judgeRootChain([ROOT_DIR, d('/w', 0o757, 0), d('/w/me', 0o700)], root, ME)?.why ?? '',
    /writable by others/,
  );
  // /tmp-like: sticky and world-writable, the next directory ours.
  assert.equal(judgeRootChain([ROOT_DIR, d('/tmp', 0o1777, 0), d('/tmp/me', 0o700)], root, ME), undefined);
  assert.match(
    judgeRootChain([ROOT_DIR, d('/tmp', 0o1777, 0), d('/tmp/x', 0o700, 65534)], root, ME)?.why ?? '',
    /writable by its group and others \(sticky, but what is below it is not ours\)/,
  );
  // The rootfs right inside a sticky directory: it must be ours (or root's), and exist.
  const closed = [ROOT_DIR, d('/home/me', 0o700), d('/home/me/tmp', 0o1777)];
  assert.equal(judgeRootChain(closed, root, ME), undefined);
  assert.match(judgeRootChain(closed, d('/x', 0o755, 65534), ME)?.why ?? '', /sticky, but what is below/);
  assert.match(judgeRootChain(closed, undefined, ME)?.why ?? '', /sticky, but what is below/);
});

test('as root, only root counts as ours', () => {
  assert.equal(judgeRootChain([ROOT_DIR, d('/root', 0o700, 0)], root, 0), undefined);
  assert.match(
    judgeRootChain([ROOT_DIR, d('/home/u', 0o700, ME)], root, 0)?.why ?? '',
    /belongs to uid 1000/,
  );
});

test('ensureRootLocation: a real 0700 parent passes with the real path; a 0755 one is refused naming it', async (t) => {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-root-location-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const closed = path.join(base, 'closed');
  await fs.mkdir(path.join(closed, 'rootfs'), { recursive: true });
  await fs.chmod(closed, 0o700);
  await fs.symlink(closed, path.join(base, 'link'));
  assert.equal(await ensureRootLocation(path.join(base, 'link', 'rootfs')), path.join(closed, 'rootfs'));
  // A missing rootfs passes here: the record check that follows says how to build it.
  assert.equal(
    await ensureRootLocation(path.join(closed, 'nope', 'rootfs')),
    path.join(closed, 'nope', 'rootfs'),
  );

  await fs.chmod(base, 0o755);
  await fs.chmod(closed, 0o755);
  await assert.rejects(ensureRootLocation(path.join(closed, 'rootfs')), (err: unknown) => {
    assert.ok(err instanceof HostError, String(err));
    assert.match(err.message, new RegExp(`refusing --rootfs .*: ${closed} \\(owner uid \\d+, mode 0755\\)`));
    assert.match(err.hint ?? '', new RegExp(`chmod 700 ${closed}`));
    return true;
  });
});

test('run --rootfs on a backend whose overlay root is writable is refused from the feature, not the name', () => {
  const writable = { name: 'qemu', features: { overlayRoot: 'writable' as const } };
  assert.throws(
    () => refuseWritableRunRoot(writable, '/r'),
    (err: unknown) => {
      assert.ok(err instanceof UsageError);
      assert.match(err.message, /--rootfs \/r: the qemu backend has no read-only lower layer/);
      assert.match(err.hint ?? '', /--backend qemu/);
      return true;
    },
  );
  refuseWritableRunRoot(writable, undefined);
  refuseWritableRunRoot({ name: 'libkrun', features: { overlayRoot: 'read-only-lower' } }, '/r');
});
