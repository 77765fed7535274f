import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
import { moduleName, parseModulesDep, plainModulePath, resolveLoadOrder } from './modules.ts';

const DEP = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/net/vmw_vsock/vmw-vsock-thing.ko.xz: kernel/drivers/virtio/virtio.ko
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
`;

test('moduleName folds dashes and compression suffixes', () => {
  assert.equal(moduleName('kernel/net/vmw_vsock/vmw-vsock-thing.ko.xz'), 'vmw_vsock_thing');
  assert.equal(plainModulePath('x/y.ko.zst'), 'x/y.ko');
});

test('resolveLoadOrder puts dependencies first, once each', () => {
  const index = parseModulesDep(DEP);
  const order = resolveLoadOrder(index, ['virtio_mmio', 'virtiofs', 'vmw-vsock-thing'], 'test');
  assert.deepEqual(
    order.map((m) => m.name),
    ['virtio_ring', 'virtio', 'virtio_mmio', 'fuse', 'virtiofs', 'vmw_vsock_thing'],
  );
});

test('resolveLoadOrder skips built-in modules', () => {
  const index = parseModulesDep(DEP, 'kernel/fs/fuse/fuse.ko\nkernel/fs/overlayfs/overlay.ko\n');
  const order = resolveLoadOrder(index, ['overlay', 'fuse', 'virtio_ring'], 'test');
  assert.deepEqual(
    order.map((m) => m.name),
    ['virtio_ring'],
  );
});

test('resolveLoadOrder names a missing module and the kernel', () => {
  const index = parseModulesDep(DEP);
  assert.throws(
    () => resolveLoadOrder(index, ['nope'], '6.1.0-test'),
    (err: unknown) =>
      err instanceof HostError && /kernel 6\.1\.0-test has no module 'nope'/.test(err.message),
  );
});

test('resolveLoadOrder reports a dependency cycle', () => {
  assert.throws(() => resolveLoadOrder(parseModulesDep(DEP), ['a'], 'k'), /cycle/);
});
