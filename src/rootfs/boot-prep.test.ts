import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { test } from 'node:test';
import { writeGatewayRootfs } from '../../test/fixtures/gateway-rootfs.ts';
import { KINE_SCHEMA } from '../../test/fixtures/kine.ts';
import { prepareRootfsForBoot } from './boot-prep.ts';
import { ROOTFS_PATHS } from './layout.ts';
import type { RootfsRecord } from './record.ts';

async function fakeRootfs(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-boot-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await writeGatewayRootfs(root, { instance: 'boot', kernelRelease: '6.1.0-test' });
  return root;
}

test('before a boot: record verified, kine cleaned of runtime records, HelmChart rendered once', async (t) => {
  const root = await fakeRootfs(t);
  const first = await prepareRootfsForBoot(root, { kernelRelease: '6.1.0-test' });
  assert.equal(first.kine, undefined, 'no datastore before k3s first ran');
  assert.equal(first.manifestWritten, true);

  const dbFile = path.join(root, ROOTFS_PATHS.kineDb);
  await fs.mkdir(path.dirname(dbFile), { recursive: true });
  const db = new DatabaseSync(dbFile);
  db.exec(KINE_SCHEMA);
  const insert = db.prepare(
    'INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 0, 0, 0, ?, ?)',
  );
  insert.run('/registry/pods/openshell/openshell-0', Buffer.from('x'), Buffer.from(''));
  insert.run('/registry/namespaces/openshell', Buffer.from('x'), Buffer.from(''));
  db.close();

  const second = await prepareRootfsForBoot(root, { kernelRelease: '6.1.0-test' });
  assert.equal(second.manifestWritten, false, 'the same bytes: not rewritten');
  assert.equal(second.kine?.deleted['/registry/pods/'], 1);
  assert.equal(second.kine?.rowsAfter, 1);
});

test('a rootfs for another kernel is refused before boot with the rebuild command', async (t) => {
  const root = await fakeRootfs(t);
  await assert.rejects(
    prepareRootfsForBoot(root, { kernelRelease: '6.12.0-other' }),
    (err: Error & { hint?: string }) =>
      /has kernel modules for 6\.1\.0-test, but the guest kernel is 6\.12\.0-other/.test(err.message) &&
      err.hint === 'rebuild it for this kernel: openshell-vm prepare-rootfs --name boot --force',
  );
});

test('a rootfs built without kernel modules (no QEMU kernel on the build host) is refused by a QEMU boot', async (t) => {
  const root = await fakeRootfs(t);
  const file = path.join(root, ROOTFS_PATHS.record);
  const record = JSON.parse(await fs.readFile(file, 'utf8')) as RootfsRecord;
  await fs.writeFile(file, JSON.stringify({ ...record, kernelRelease: undefined }));
  await assert.rejects(
    prepareRootfsForBoot(root, { kernelRelease: '6.1.0-test' }),
    /has no kernel modules for the QEMU backend's kernel/,
  );
  // libkrun (no kernel release to match) boots it.
  assert.equal((await prepareRootfsForBoot(root)).record.instance, 'boot');
});
