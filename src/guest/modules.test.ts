import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { HostError } from '../errors.ts';
import { moduleName, parseModulesDep, plainModulePath, readModule, resolveLoadOrder } from './modules.ts';

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

function moduleDir(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-modules-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'kernel'));
  return dir;
}

// Not an ELF module, but bytes no compressor could pass through unchanged by accident.
const MODULE_BYTES = Buffer.concat([Buffer.from('\x7fELF'), Buffer.alloc(4096, 0x5a), Buffer.from('end')]);

test('readModule returns the plain bytes of .ko, .ko.gz, .ko.zst and .ko.xz (Debian 13) modules', async (t) => {
  const dir = moduleDir(t);
  fs.writeFileSync(path.join(dir, 'kernel/plain.ko'), MODULE_BYTES);
  fs.writeFileSync(path.join(dir, 'kernel/gz.ko.gz'), zlib.gzipSync(MODULE_BYTES));
  fs.writeFileSync(path.join(dir, 'kernel/zst.ko.zst'), zlib.zstdCompressSync(MODULE_BYTES));
  // Compressed as Debian's kernel build does (xz --check=crc32), by the xz that provisioning installs.
  fs.writeFileSync(
    path.join(dir, 'kernel/xz.ko.xz'),
    execFileSync('xz', ['--check=crc32', '-c'], { input: MODULE_BYTES }),
  );
  for (const rel of ['kernel/plain.ko', 'kernel/gz.ko.gz', 'kernel/zst.ko.zst', 'kernel/xz.ko.xz']) {
    assert.deepEqual(await readModule(dir, rel), MODULE_BYTES, rel);
  }
});

test('readModule without xz names the package to install', async (t) => {
  const dir = moduleDir(t);
  fs.writeFileSync(
    path.join(dir, 'kernel/virtio_mmio.ko.xz'),
    execFileSync('xz', ['-c'], { input: MODULE_BYTES }),
  );
  await assert.rejects(
    readModule(dir, 'kernel/virtio_mmio.ko.xz', { xz: path.join(dir, 'no-such-xz') }),
    (err: unknown) =>
      err instanceof HostError &&
      /cannot decompress .*virtio_mmio\.ko\.xz: .*no-such-xz is not installed/.test(err.message) &&
      /apt-get install xz-utils/.test(err.hint ?? ''),
  );
});

test('readModule reports a damaged compressed module with the fix, whatever its format', async (t) => {
  const dir = moduleDir(t);
  for (const rel of ['kernel/bad.ko.xz', 'kernel/bad.ko.gz', 'kernel/bad.ko.zst']) {
    fs.writeFileSync(path.join(dir, rel), 'not compressed at all');
    await assert.rejects(
      readModule(dir, rel),
      (err: unknown) =>
        err instanceof HostError &&
        err.message.startsWith(`cannot decompress ${path.join(dir, rel)}: `) &&
        /provision-host\.sh --refresh/.test(err.hint ?? ''),
      rel,
    );
  }
  await assert.rejects(readModule(dir, 'kernel/x.ko.bz2'), /unknown kernel module format/);
});
