// kernel build against a stand-in Linux tree: a tarball whose Makefile answers allnoconfig,
// olddefconfig and bzImage as kbuild does (in O=, with the requested .config), so the build's
// sequence, cache, provenance, current pointer and failures run in seconds. The real compile is
// test/e2e/kernel-build.test.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { buildKernel } from './build.ts';
import { currentBuild, KERNEL_FILES, targetDir } from './cache.ts';
import { parseProvenance } from './provenance.ts';
import { resolveBootKernel } from './selection.ts';

/** kbuild's answers, as far as the build uses them. `$(O)/.config` is kept as written (a kconfig that drops nothing). */
function standInMakefile(compile: string, olddefconfig: string): string {
  return `VERSION = 6
PATCHLEVEL = 99
SUBLEVEL = 1
allnoconfig:
\tmkdir -p $(O) && printf '#\\n# Linux/x86 6.99.1 Kernel Configuration\\n#\\n# CONFIG_MODULES is not set\\n# CONFIG_NET is not set\\n' >$(O)/.config
olddefconfig:
${olddefconfig}
bzImage:
${compile}
`;
}
const COMPILES = `\tmkdir -p $(O)/arch/x86/boot $(O)/include/config
\tprintf 'kernel image of %s\\n' "$$(sha256sum $(O)/.config | cut -c1-16)" >$(O)/arch/x86/boot/bzImage
\techo 6.99.1-openshell >$(O)/include/config/kernel.release
`;
const DISK_FULL = `\t@echo 'ld: final link failed: No space left on device' >&2; exit 1
`;

interface World {
  readonly env: HostEnvironment;
  readonly base: string;
  readonly tarball: string;
  readonly guest: GuestInputs;
}

/** kconfig keeps what it is given. */
const KEEPS = `\t@true
`;
/** kconfig drops CONFIG_VETH, as it does an option whose dependencies are unset. */
const DROPS_VETH = `\tsed -i '/^CONFIG_VETH=/d' $(O)/.config
`;

function world(t: { after: (fn: () => void) => void }, compile = COMPILES, olddefconfig = KEEPS): World {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-kbuild-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const tree = path.join(base, 'src', 'linux-source-6.99');
  fs.mkdirSync(tree, { recursive: true });
  fs.writeFileSync(path.join(tree, 'Makefile'), standInMakefile(compile, olddefconfig));
  fs.writeFileSync(path.join(tree, 'Kconfig'), 'mainmenu "stand-in"\n');
  const tarball = path.join(base, 'linux-source-6.99.tar.xz');
  execFileSync('tar', ['-cJf', tarball, '-C', path.join(base, 'src'), 'linux-source-6.99']);
  const cacheDir = path.join(base, 'cache');
  fs.mkdirSync(path.join(cacheDir, 'host', 'linux-source'), { recursive: true });
  fs.writeFileSync(
    path.join(cacheDir, 'host', 'linux-source', 'manifest.json'),
    JSON.stringify({
      package: 'linux-source-6.99',
      version: '6.99.1-1',
      tarball,
      tarballSha256: createHash('sha256').update(fs.readFileSync(tarball)).digest('hex'),
    }),
  );
  const env = testEnvironment(base, { cacheDir, searchPath: process.env.PATH ?? '' });
  const guest: GuestInputs = {
    arch: 'x86_64',
    manifestPath: path.join(base, 'manifest.json'),
    kernel: {
      package: 'linux-image-fake',
      version: '1',
      release: '6.1.0-fake',
      vmlinuz: path.join(base, 'vmlinuz'),
      vmlinuzSha256: 'a'.repeat(64),
      modulesDir: base,
      modulesDepSha256: 'b'.repeat(64),
    },
    busybox: { version: '1', binary: path.join(base, 'busybox'), binarySha256: 'c'.repeat(64) },
  };
  return { env, base, tarball, guest };
}

const REQUEST = { arch: 'x86_64', target: 'qemu', jobs: 1 } as const;

/** What is in the built kernels' directory, temporary directories included. */
function kernelsLeft(env: HostEnvironment): string[] {
  const dir = targetDir(env, 'x86_64', 'qemu');
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}

test('a build writes the image, kernel.config and provenance.json; the same inputs again do nothing', async (t) => {
  const w = world(t);
  const lines: string[] = [];
  const first = await buildKernel(w.env, REQUEST, { onProgress: (m) => lines.push(m) });
  assert.equal(first.built, true);
  assert.ok(
    lines.some((l) => /compiling \(nice -n 15 make -j1 bzImage/.test(l)),
    lines.join('\n'),
  );
  const dir = first.kernel.dir;
  assert.deepEqual(fs.readdirSync(dir).sort(), ['bzImage', 'kernel.config', 'provenance.json']);
  const config = fs.readFileSync(path.join(dir, KERNEL_FILES.config), 'utf8');
  assert.match(config, /^CONFIG_NET=y$/m);
  assert.match(config, /^CONFIG_BRIDGE=y$/m, 'the gateway fragment is merged');
  assert.match(config, /^# CONFIG_MODULES is not set$/m);
  const p = parseProvenance(fs.readFileSync(path.join(dir, KERNEL_FILES.provenance), 'utf8'));
  assert.ok(typeof p !== 'string', String(p));
  assert.equal(p.version, '6.99.1-openshell');
  assert.equal(p.kernel_version, '6.99.1');
  assert.equal(p.kernel_source, 'linux-source-6.99 6.99.1-1');
  assert.equal(p.kernel_config_sha256, createHash('sha256').update(config).digest('hex'));
  assert.equal(p.kernel_config_fragment, 'qemu-guest.kconfig qemu-guest-x86_64.kconfig openshell.kconfig');
  assert.match(p.compiler, /gcc/);
  assert.deepEqual(kernelsLeft(w.env), [first.kernel.key, KERNEL_FILES.current].sort());

  const again: string[] = [];
  const second = await buildKernel(w.env, REQUEST, { onProgress: (m) => again.push(m) });
  assert.equal(second.built, false);
  assert.equal(second.kernel.key, first.kernel.key);
  assert.ok(
    again.some((l) => /already built with these inputs .*nothing to do/.test(l)),
    again.join('\n'),
  );
  assert.ok(!again.some((l) => /compiling/.test(l)));

  // The current build is what `auto` boots, with no modules.
  const boot = await resolveBootKernel(w.env, w.guest, { kind: 'auto' });
  assert.equal(boot.kind, 'built');
  assert.equal(boot.image, path.join(dir, 'bzImage'));
  assert.equal(boot.modules, 'none');
  assert.match(boot.description, /built 6\.99\.1-openshell \(linux-source-6\.99 6\.99\.1-1/);
});

test('another fragment is another key; a damaged build is not booted and is built again', async (t) => {
  const w = world(t);
  const first = await buildKernel(w.env, REQUEST);
  const other = await buildKernel(w.env, {
    ...REQUEST,
    extraFragments: [{ source: 'extra.kconfig', text: 'CONFIG_LOG_BUF_SHIFT=18\n' }],
  });
  assert.notEqual(other.kernel.key, first.kernel.key);
  // The current build now has another request than this package's fragments: auto says so and boots Debian's.
  const stale = await resolveBootKernel(w.env, w.guest, { kind: 'auto' });
  assert.equal(stale.kind, 'debian');
  assert.match(stale.note ?? '', /configured from other config fragments .*openshell-vm kernel build/);
  await assert.rejects(resolveBootKernel(w.env, w.guest, { kind: 'built' }), /other config fragments/);

  fs.appendFileSync(first.kernel.image, 'tampered');
  const found = await currentBuild(w.env, 'x86_64', 'qemu');
  assert.ok(found && 'build' in found, 'current is the other build');
  const rebuilt = await buildKernel(w.env, REQUEST, {});
  assert.equal(rebuilt.built, true, 'the damaged build was built again');
  assert.equal(rebuilt.kernel.key, first.kernel.key);
  assert.equal((await resolveBootKernel(w.env, w.guest, { kind: 'auto' })).kind, 'built');
});

test('a missing build tool is named with its apt package, before anything is written', async (t) => {
  const w = world(t);
  // A PATH with every tool but flex.
  const bin = path.join(w.base, 'bin');
  fs.mkdirSync(bin);
  for (const tool of ['make', 'bison', 'bc', 'perl', 'tar', 'xz', 'nice', 'gcc']) {
    const at = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim();
    fs.symlinkSync(at, path.join(bin, tool));
  }
  const env = { ...w.env, searchPath: bin };
  await assert.rejects(buildKernel(env, REQUEST), (err: unknown) => {
    assert.ok(err instanceof HostError);
    assert.match(err.message, /the kernel build needs flex \(kconfig's and dtc's lexers; apt package flex\)/);
    assert.match(err.hint ?? '', /apt-get install flex/);
    return true;
  });
  assert.equal(fs.existsSync(path.join(w.env.cacheDir, 'kernels')), false, 'nothing written');
});

test('a source whose sha256 is not the recorded one is refused, nothing built', async (t) => {
  const w = world(t);
  fs.appendFileSync(w.tarball, 'x');
  await assert.rejects(buildKernel(w.env, REQUEST), (err: unknown) => {
    assert.ok(err instanceof HostError);
    assert.match(
      err.message,
      /^checksum mismatch: .*linux-source-6\.99\.tar\.xz has sha256 [0-9a-f]{64}, but .*manifest\.json says/,
    );
    assert.match(err.hint ?? '', /provision-host\.sh --refresh/);
    return true;
  });
  assert.equal(fs.existsSync(path.join(w.env.cacheDir, 'kernels')), false, 'nothing written');
});

test('an option kconfig drops is named, and no build is left where a boot would find it', async (t) => {
  const w = world(t, COMPILES, DROPS_VETH);
  await assert.rejects(buildKernel(w.env, REQUEST), (err: unknown) => {
    assert.ok(err instanceof HostError);
    assert.match(
      err.message,
      /^kconfig could not enable 1 requested option of Linux 6\.99\.1:\n {2}CONFIG_VETH=y \(openshell\.kconfig\): dropped by kconfig/,
    );
    assert.match(err.hint ?? '', /dependencies are unset/);
    return true;
  });
  assert.deepEqual(kernelsLeft(w.env), [KERNEL_FILES.failureLog]);
  assert.equal(await currentBuild(w.env, 'x86_64', 'qemu'), undefined);
  assert.equal((await resolveBootKernel(w.env, w.guest, { kind: 'auto' })).kind, 'debian');
});

test('fragments that contradict each other are named before kconfig runs', async (t) => {
  const w = world(t);
  await assert.rejects(
    buildKernel(w.env, {
      ...REQUEST,
      extraFragments: [{ source: 'no-net.kconfig', text: '# CONFIG_NET is not set\n' }],
    }),
    (err: unknown) => {
      // The fragments conflict (qemu-guest.kconfig asks for CONFIG_NET=y): named before kconfig runs.
      assert.ok(err instanceof HostError);
      assert.match(err.message, /CONFIG_NET: qemu-guest\.kconfig sets y, no-net\.kconfig:1 sets n/);
      return true;
    },
  );
  assert.deepEqual(kernelsLeft(w.env), [KERNEL_FILES.failureLog]);
  assert.equal(await currentBuild(w.env, 'x86_64', 'qemu'), undefined);
});

test('a full disk during the compile is the full-disk error, and leaves no half-built kernel', async (t) => {
  const w = world(t, DISK_FULL);
  await assert.rejects(buildKernel(w.env, REQUEST), (err: unknown) => {
    assert.ok(err instanceof HostError);
    assert.match(err.message, /^no space left on the device: .*x86_64-qemu\/[0-9a-f]{24}\.tmp-/);
    assert.match(err.hint ?? '', /free space on that filesystem/);
    return true;
  });
  assert.deepEqual(kernelsLeft(w.env), [KERNEL_FILES.failureLog]);
  assert.match(
    fs.readFileSync(path.join(targetDir(w.env, 'x86_64', 'qemu'), KERNEL_FILES.failureLog), 'utf8'),
    /No space left on device/,
  );
  assert.equal((await resolveBootKernel(w.env, w.guest, { kind: 'auto' })).kind, 'debian');
});
