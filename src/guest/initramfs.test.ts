import assert from 'node:assert/strict';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { buildInitramfs, type InitramfsInputs, initramfsEntries } from './initramfs.ts';

const inputs: InitramfsInputs = {
  busybox: Buffer.from('busybox-bytes'),
  initScript: '#!/bin/sh\necho hi\n',
  release: '6.1.0-test',
  modules: [
    { name: 'virtio_ring', relPath: 'kernel/drivers/virtio/virtio_ring.ko', data: Buffer.from('ring') },
    { name: 'virtiofs', relPath: 'kernel/fs/fuse/virtiofs.ko.xz', data: Buffer.from('fs') },
  ],
};

test('the initramfs is byte-for-byte reproducible', () => {
  const a = buildInitramfs(inputs);
  const b = buildInitramfs({
    ...inputs,
    modules: inputs.modules.map((m) => ({ ...m, data: Buffer.from(m.data) })),
  });
  assert.ok(a.equals(b));
  assert.equal(a[0], 0x1f);
  assert.equal(a[1], 0x8b);
  assert.ok(zlib.gunzipSync(a).subarray(0, 6).equals(Buffer.from('070701')));
});

test('the initramfs has /init, busybox, a console node and the modules in load order', () => {
  const entries = initramfsEntries(inputs);
  const byPath = new Map(entries.map((e) => [e.path, e]));
  assert.equal(byPath.get('init')?.type, 'file');
  assert.equal(byPath.get('bin/sh')?.type, 'symlink');
  assert.equal(byPath.get('dev/console')?.type, 'chardev');
  const order = byPath.get('etc/ovm-modules');
  assert.ok(order && order.type === 'file');
  assert.equal(
    Buffer.from(order.data).toString(),
    '6.1.0-test/kernel/drivers/virtio/virtio_ring.ko\n6.1.0-test/kernel/fs/fuse/virtiofs.ko\n',
  );
  assert.ok(byPath.has('lib/modules/6.1.0-test/kernel/fs/fuse/virtiofs.ko'));
  // Every parent directory precedes its children.
  const seen = new Set<string>();
  for (const e of entries) {
    const parent = e.path.split('/').slice(0, -1).join('/');
    if (parent) assert.ok(seen.has(parent), `${e.path} before its directory`);
    seen.add(e.path);
  }
});

test('a different input gives a different initramfs', () => {
  assert.ok(!buildInitramfs(inputs).equals(buildInitramfs({ ...inputs, initScript: '#!/bin/sh\n' })));
});
