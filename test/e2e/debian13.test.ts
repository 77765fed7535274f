// Debian 13 (trixie) as a host, as well as Debian 12.
//
// Ungated (seconds): scripts/provision-host.sh in a stand-in Debian 12 and Debian 13 system
// (test/fixtures/apt-world.ts: apt shims, packages built here in each release's layout), then the
// guest inputs it recorded carried through to an initramfs.
//
// Gated on OPENSHELL_VM_DEBIAN13=1 (minutes): the README's first command, `npm run demo`, in a
// fresh Debian 13 root built with mmdebstrap from this host's own Debian sources, in a chroot with
// /proc, /sys and /dev. Everything in there is the root's own: its apt packages, Node.js 24 from
// npm (trixie's nodejs is 20), the trixie kernel, its npm dependencies, a microVM booted by it.
// Run it with: OPENSHELL_VM_DEBIAN13=1 flock /tmp/ovm-vm.lock sh scripts/with-node.sh \
//   node --test test/e2e/debian13.test.ts
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { buildInitramfs, initramfsEntries, loadInitramfsInputs } from '../../src/guest/initramfs.ts';
import {
  INITRAMFS_MODULES,
  plainModulePath,
  readModule,
  readModuleIndex,
  resolveLoadOrder,
} from '../../src/guest/modules.ts';
import { DEB_ARCH, hostArch } from '../../src/host/arch.ts';
import { findOnPath, loadGuestInputs } from '../../src/host/toolchain.ts';
import { type AptWorld, aptWorld, type Layout } from '../fixtures/apt-world.ts';
import {
  aptListsOf,
  createTrixieRoot,
  mountsUnder,
  sweepStaleRoots,
  testCacheDir,
} from '../fixtures/debian13-root.ts';
import { testEnvironment } from '../fixtures/env.ts';
import { ROOT } from './harness.ts';

const PROVISION = path.join(ROOT, 'scripts', 'provision-host.sh');
const arch = hostArch();
assert.ok(arch, 'this test runs on an x86_64 or aarch64 host');
const debArch = DEB_ARCH[arch];

// The modules an initramfs loads and a busybox, from this host's provisioned guest kernel: real
// ELF modules, so depmod computes their real dependencies in the stand-in packages.
const source = await loadGuestInputs(readEnvironment(), arch);
const sourceOrder = resolveLoadOrder(
  await readModuleIndex(source.kernel.modulesDir),
  INITRAMFS_MODULES,
  source.kernel.release,
);
const sourceModules = await Promise.all(
  sourceOrder.map(async (m) => ({
    name: m.name,
    relPath: plainModulePath(m.relPath),
    data: await readModule(source.kernel.modulesDir, m.relPath),
  })),
);

function world(layout: Layout, listsEmpty: boolean): AptWorld {
  const w = aptWorld({ layout, source, debArch, modules: sourceModules, listsEmpty });
  after(() => w.cleanup());
  return w;
}

function provisioned(w: AptWorld): void {
  const r = w.provision(PROVISION, ['--arch', arch as string, '--no-npm']);
  assert.equal(r.code, 0, `provision-host.sh failed:\n${r.stderr}`);
}

/** The guest inputs the world's provisioning recorded, carried to the initramfs as a run does. */
async function initramfsFrom(w: AptWorld) {
  const guest = await loadGuestInputs(testEnvironment(w.cacheDir), arch as NonNullable<typeof arch>);
  const order = resolveLoadOrder(
    await readModuleIndex(guest.kernel.modulesDir),
    INITRAMFS_MODULES,
    guest.kernel.release,
  );
  const inputs = await loadInitramfsInputs(guest, '#!/bin/sh\n', order);
  buildInitramfs(inputs);
  return { guest, order, inputs, entries: initramfsEntries(inputs) };
}

test('Debian 13 host: merged-/usr packages, .ko.xz modules and package lists never fetched', async () => {
  const w = world('debian13', true);
  provisioned(w);

  // The candidate check saw the lists that apt-get update fetched: virtiofsd is Debian 13's own
  // package, and xz-utils decompresses its modules.
  const calls = w.calls();
  const update = calls.indexOf('apt-get update');
  const virtiofsdCheck = calls.indexOf('apt-cache show virtiofsd');
  assert.ok(
    update >= 0 && virtiofsdCheck > update,
    `apt-get update before the candidate check:\n${calls.join('\n')}`,
  );
  assert.equal(calls.filter((c) => c === 'apt-get update').length, 1, 'one apt-get update');
  const installed = w.installed();
  assert.ok(installed.includes('virtiofsd'), `virtiofsd installed: ${installed.join(' ')}`);
  assert.ok(installed.includes('xz-utils'), `xz-utils installed: ${installed.join(' ')}`);

  // The manifest records where the packages put their files.
  const { guest, order, inputs, entries } = await initramfsFrom(w);
  const host = path.join(w.cacheDir, 'host', debArch);
  assert.equal(guest.kernel.release, w.release);
  assert.equal(guest.kernel.modulesDir, path.join(host, 'kernel/usr/lib/modules', w.release));
  assert.equal(guest.kernel.vmlinuz, path.join(host, 'kernel/boot', `vmlinuz-${w.release}`));
  assert.equal(guest.busybox.binary, path.join(host, 'busybox/usr/bin/busybox'));

  // depmod indexed the .ko.xz files with their dependencies, and the initramfs gets them plain.
  assert.deepEqual(
    order.map((m) => m.name),
    sourceModules.map((m) => m.name),
  );
  for (const m of order) assert.match(m.relPath, /\.ko\.xz$/);
  for (const [i, m] of inputs.modules.entries()) {
    assert.deepEqual(Buffer.from(m.data), Buffer.from(sourceModules[i]?.data ?? []), m.relPath);
  }
  const paths = new Set(entries.map((e) => e.path));
  for (const m of sourceModules) assert.ok(paths.has(`lib/modules/${w.release}/${m.relPath}`), m.relPath);
});

test('Debian 12 host: the paths recorded are the ones recorded before Debian 13 support', async () => {
  const w = world('debian12', false);
  provisioned(w);
  const installed = w.installed();
  assert.ok(
    !installed.includes('virtiofsd'),
    'Debian 12 has no virtiofsd package (qemu-system-common has it)',
  );
  assert.ok(installed.includes('xz-utils'));
  assert.equal(
    w.calls().filter((c) => c === 'apt-get update').length,
    1,
    'one apt-get update, before the install',
  );

  const { guest, order, entries } = await initramfsFrom(w);
  const host = path.join(w.cacheDir, 'host', debArch);
  assert.equal(guest.kernel.modulesDir, path.join(host, 'kernel/lib/modules', w.release));
  assert.equal(guest.kernel.vmlinuz, path.join(host, 'kernel/boot', `vmlinuz-${w.release}`));
  assert.equal(guest.busybox.binary, path.join(host, 'busybox/bin/busybox'));
  for (const m of order) assert.match(m.relPath, /\.ko$/);
  const paths = new Set(entries.map((e) => e.path));
  for (const m of sourceModules) assert.ok(paths.has(`lib/modules/${w.release}/${m.relPath}`), m.relPath);
});

// ---------------------------------------------------------------------------------------------
// The gated part: `npm run demo` in a fresh Debian 13 root.

async function whyNot(): Promise<string | false> {
  if (process.env.OPENSHELL_VM_DEBIAN13 !== '1') {
    return (
      'set OPENSHELL_VM_DEBIAN13=1 to run `npm run demo` in a fresh Debian 13 root (mmdebstrap, chroot; ' +
      'needs root and network access to Debian and npm packages; about 80 s with warm caches, 2.5 min cold): ' +
      'OPENSHELL_VM_DEBIAN13=1 flock /tmp/ovm-vm.lock sh scripts/with-node.sh node --test test/e2e/debian13.test.ts'
    );
  }
  if (process.getuid?.() !== 0) return 'the Debian 13 root test needs root (chroot, mounts, namespaces)';
  for (const tool of ['mmdebstrap', 'unshare', 'chroot', 'findmnt', 'git', 'tar']) {
    if (!(await findOnPath(tool, `${process.env.PATH ?? ''}:/usr/sbin:/sbin`))) {
      return `the Debian 13 root test needs ${tool} (scripts/provision-host.sh installs mmdebstrap; the rest are in util-linux, coreutils, git and tar)`;
    }
  }
  return false;
}

describe('npm run demo in a fresh Debian 13 root', { skip: await whyNot() }, () => {
  test('provisions the root from nothing and boots the demo microVM (exit code 0)', {
    timeout: 60 * 60_000,
  }, async (t) => {
    for (const dir of sweepStaleRoots()) t.diagnostic(`removed a root left by an earlier run: ${dir}`);
    const t0 = performance.now();
    const root = await createTrixieRoot({
      arch: arch as NonNullable<typeof arch>,
      repo: ROOT,
      signal: t.signal,
      progress: (line) => t.diagnostic(line),
    });
    try {
      const prepMs = Math.round(performance.now() - t0);
      t.diagnostic(
        `trixie root ${root.dir} from ${root.base.tarball} (${root.base.built ? `built in ${root.base.buildMs} ms` : 'cached'}), ` +
          `checkout ${root.commit}; ready after ${prepMs} ms`,
      );
      // As on a fresh cloud image: apt has never fetched a package list.
      assert.deepEqual(aptListsOf(root.dir), [], 'the root starts with no apt package lists');

      const log = path.join(testCacheDir(), 'last-demo.log');
      const r = await root.run('npm run demo', { signal: t.signal, log });
      t.diagnostic(`npm run demo in the chroot: exit ${r.code ?? r.signal} after ${r.ms} ms (log: ${log})`);
      t.diagnostic(`total: ${Math.round(performance.now() - t0)} ms`);
      const tail = `\n--- stdout (tail)\n${r.stdout.slice(-3000)}\n--- stderr (tail)\n${r.stderr.slice(-6000)}`;
      assert.equal(r.code, 0, `npm run demo failed in the Debian 13 root${tail}`);

      // The root's own provisioning: the trixie kernel in its merged-/usr layout, Debian 13's
      // virtiofsd and xz-utils, Node.js 24 from npm.
      const cache = path.join(root.dir, 'root/.cache/openshell-vm');
      const manifest = JSON.parse(
        fs.readFileSync(path.join(cache, 'host', debArch, 'manifest.json'), 'utf8'),
      ) as {
        kernel: { release: string; modulesDir: string };
        busybox: { binary: string };
      };
      assert.match(manifest.kernel.modulesDir, /\/kernel\/usr\/lib\/modules\//);
      assert.match(manifest.busybox.binary, /\/busybox\/usr\/bin\/busybox$/);
      const status = fs.readFileSync(path.join(root.dir, 'var/lib/dpkg/status'), 'utf8');
      for (const pkg of ['virtiofsd', 'xz-utils', 'qemu-system-x86']) {
        assert.match(
          status,
          new RegExp(`^Package: ${pkg}\\nStatus: install ok installed$`, 'm'),
          `${pkg} installed`,
        );
      }
      assert.ok(
        fs.existsSync(path.join(cache, 'node/meta.json')),
        'Node.js 24 fetched into the root’s cache',
      );

      // The demo's own output: the command ran in a microVM on the trixie kernel, exit code 0.
      assert.match(
        r.stdout,
        new RegExp(`hello from a ${arch} microVM, kernel ${escapeRegExp(manifest.kernel.release)}\\n`),
      );
      assert.match(r.stdout, /^exit code: 0$/m);
      assert.deepEqual(r.leftover, [], 'processes left running in the chroot after the demo');
    } finally {
      root.remove();
      assert.deepEqual(mountsUnder(root.dir), []);
    }
  });
});

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// Nothing of the gated part is mounted anywhere on this host, whatever happened.
after(() => {
  const r = spawnSync('findmnt', ['-rn', '-o', 'TARGET'], { encoding: 'utf8' });
  assert.deepEqual(
    r.stdout.split('\n').filter((t) => t.includes('/ovm-debian13-')),
    [],
  );
});
