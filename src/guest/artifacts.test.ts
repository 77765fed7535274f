import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { ensureGuestArtifacts, ensureRootArtifacts } from './artifacts.ts';
import { INITRAMFS_MODULES } from './modules.ts';

/** A fake provisioned kernel (modules.dep + tiny .ko files) and a fake busybox with an applet table. */
function fakeGuest(t: { after: (fn: () => void) => void }): { env: HostEnvironment; guest: GuestInputs } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-art-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const modulesDir = path.join(base, 'lib/modules/6.1.0-fake');
  const dep = INITRAMFS_MODULES.map(
    (m) => `kernel/${m}.ko:${m === 'virtiofs' ? ' kernel/fuse.ko' : ''}`,
  ).concat('kernel/fuse.ko:');
  fs.mkdirSync(path.join(modulesDir, 'kernel'), { recursive: true });
  fs.writeFileSync(path.join(modulesDir, 'modules.dep'), `${dep.join('\n')}\n`);
  for (const m of [...INITRAMFS_MODULES, 'fuse'])
    fs.writeFileSync(path.join(modulesDir, 'kernel', `${m}.ko`), m);
  const busybox = path.join(base, 'busybox');
  fs.writeFileSync(
    busybox,
    Buffer.from('ELF\0[\0[[\0cat\0insmod\0mount\0poweroff\0sh\0switch_root\0\0', 'latin1'),
  );
  const env: HostEnvironment = testEnvironment(base, {
    cacheDir: path.join(base, 'cache'),
    searchPath: process.env.PATH ?? '',
  });
  const guest: GuestInputs = {
    arch: 'x86_64',
    manifestPath: path.join(base, 'manifest.json'),
    kernel: {
      package: 'linux-image-fake',
      version: '1',
      release: '6.1.0-fake',
      vmlinuz: path.join(base, 'vmlinuz'),
      vmlinuzSha256: 'a'.repeat(64),
      modulesDir,
      modulesDepSha256: 'b'.repeat(64),
    },
    busybox: { version: '1', binary: busybox, binarySha256: 'c'.repeat(64) },
  };
  return { env, guest };
}

test('artifacts are built once, then reused until an input changes', async (t) => {
  const { env, guest } = fakeGuest(t);
  const first = await ensureGuestArtifacts(env, guest);
  assert.equal(first.built, true);
  assert.ok(fs.statSync(first.initramfs).size > 0);
  assert.ok(fs.existsSync(path.join(first.rootfs, 'sbin/ovm-init')));
  assert.equal(fs.readlinkSync(path.join(first.rootfs, 'bin/sh')), 'busybox');
  const initramfsBytes = fs.readFileSync(first.initramfs);

  const again = await ensureGuestArtifacts(env, guest);
  assert.equal(again.built, false);
  assert.equal(again.key, first.key);

  const changed = await ensureGuestArtifacts(env, {
    ...guest,
    busybox: { ...guest.busybox, binarySha256: 'd'.repeat(64) },
  });
  assert.equal(changed.built, true);
  assert.notEqual(changed.key, first.key);
  // Same bytes in, same initramfs out (the key changed, the content did not).
  assert.ok(fs.readFileSync(changed.initramfs).equals(initramfsBytes));
});

test('concurrent builds of the same artifacts agree and leave no temporary directory', async (t) => {
  const { env, guest } = fakeGuest(t);
  const results = await Promise.all([1, 2, 3].map(() => ensureGuestArtifacts(env, guest)));
  assert.equal(new Set(results.map((r) => r.key)).size, 1);
  const dir = path.dirname(results[0]?.rootfs as string);
  assert.deepEqual(
    fs.readdirSync(path.dirname(dir)).filter((d) => d.includes('.tmp-')),
    [],
  );
});

test('a cached build changed on disk is found before use, removed and built again, saying why', async (t) => {
  const { env, guest } = fakeGuest(t);
  const first = await ensureGuestArtifacts(env, guest);
  const passwd = path.join(first.rootfs, 'etc/passwd');
  const original = fs.readFileSync(passwd);
  fs.appendFileSync(passwd, 'pwned::0:0::/:/bin/sh\n');
  fs.writeFileSync(path.join(first.rootfs, 'bin/suid'), 'x');
  fs.chmodSync(path.join(first.rootfs, 'bin/suid'), 0o4755);

  const again = await ensureGuestArtifacts(env, guest);
  assert.equal(again.built, true);
  assert.match(again.rebuiltBecause ?? '', /failed their integrity check/);
  assert.match(again.rebuiltBecause ?? '', /rootfs: etc\/passwd has other content/);
  assert.match(again.rebuiltBecause ?? '', /rootfs: unexpected file bin\/suid \(mode 4755\)/);
  assert.ok(fs.readFileSync(passwd).equals(original));
  assert.ok(!fs.existsSync(path.join(first.rootfs, 'bin/suid')));
  const siblings = fs.readdirSync(path.dirname(path.dirname(first.rootfs)));
  assert.deepEqual(siblings, [first.key], 'nothing set aside is left');

  fs.appendFileSync(first.initramfs, 'x');
  const third = await ensureGuestArtifacts(env, guest);
  assert.match(third.rebuiltBecause ?? '', /initramfs\.cpio\.gz has changed/);
  assert.equal((await ensureGuestArtifacts(env, guest)).built, false);
});

test('the default rootfs has nothing setuid or writable by others, whatever the umask', async (t) => {
  const { env, guest } = fakeGuest(t);
  const old = process.umask(0o000);
  let rootfs: string;
  try {
    rootfs = (await ensureGuestArtifacts(env, guest)).rootfs;
  } finally {
    process.umask(old);
  }
  for (const entry of fs.readdirSync(rootfs, { withFileTypes: true, recursive: true })) {
    const st = fs.lstatSync(path.join(entry.parentPath, entry.name));
    if (st.isSymbolicLink()) continue;
    assert.equal(st.mode & 0o6022, 0, `${entry.name}: mode ${(st.mode & 0o7777).toString(8)}`);
  }
  assert.ok(!fs.existsSync(path.join(rootfs, '.ovm-host')));
  // No handoff directory any more (every command is an agent session).
  assert.ok(!fs.existsSync(path.join(rootfs, '.ovm')));
});

test('root-only artifacts (libkrunfw): a rootfs and no initramfs or kernel; cached; a planted initramfs or a changed file is rebuilt', async (t) => {
  const { env, guest } = fakeGuest(t);
  const bytes = fs.readFileSync(guest.busybox.binary);
  const busybox = {
    arch: 'x86_64' as const,
    path: guest.busybox.binary,
    bytes,
    sha256: guest.busybox.binarySha256,
    origin: 'package' as const,
    version: '1',
  };
  const first = await ensureRootArtifacts(env, busybox);
  assert.deepEqual(
    [first.built, first.kernel, first.initramfs, first.kernelKind],
    [true, '', '', 'libkrunfw'],
  );
  assert.equal(first.modulesRelease, undefined);
  const dir = path.dirname(first.rootfs);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['complete', 'rootfs']);
  assert.equal((await ensureRootArtifacts(env, busybox)).built, false);
  fs.writeFileSync(path.join(dir, 'initramfs.cpio.gz'), 'planted', { mode: 0o644 });
  const again = await ensureRootArtifacts(env, busybox);
  assert.equal(again.built, true);
  assert.match(again.rebuiltBecause ?? '', /initramfs\.cpio\.gz should not be there/);
  fs.writeFileSync(path.join(again.rootfs, 'sbin', 'ovm-init'), '#!/bin/sh\nevil\n');
  const third = await ensureRootArtifacts(env, busybox);
  assert.match(third.rebuiltBecause ?? '', /rootfs: /);
  // Not the key of a QEMU build of the same busybox: the two never share a directory.
  assert.notEqual(third.key, (await ensureGuestArtifacts(env, guest)).key);
});
