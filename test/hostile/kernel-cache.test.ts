/**
 * A kernel cache another user could write (review finding: a planted source tree's Makefile ran
 * as the user; a planted built kernel was what `auto` booted). Each plant is made the way another
 * local user could: a directory of the cache made group/other-writable (mode bits), or an entry
 * owned by another uid (chown to nobody, as root). Each is refused with the path named and the
 * fix, and nothing planted runs or boots: the file a planted Makefile would write stays absent,
 * and the boot kernel is never the planted image.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import type { HostEnvironment } from '../../src/config/environment.ts';
import { HostError } from '../../src/errors.ts';
import type { GuestInputs } from '../../src/host/toolchain.ts';
import { buildKernel } from '../../src/kernel/build.ts';
import { KERNEL_FILES, targetDir } from '../../src/kernel/cache.ts';
import { resolveBootKernel } from '../../src/kernel/selection.ts';
import { testEnvironment } from '../fixtures/env.ts';

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0 ? false : 'needs root (entries owned by nobody are made with chown)';

/** A stand-in Linux tree: answers allnoconfig, olddefconfig and bzImage as kbuild does (in O=). */
const STAND_IN = `VERSION = 6
PATCHLEVEL = 99
SUBLEVEL = 1
allnoconfig:
\tmkdir -p $(O) && printf '# CONFIG_MODULES is not set\\n' >$(O)/.config
olddefconfig:
\t@true
bzImage:
\tmkdir -p $(O)/arch/x86/boot $(O)/include/config
\tprintf 'kernel image\\n' >$(O)/arch/x86/boot/bzImage
\techo 6.99.1-openshell >$(O)/include/config/kernel.release
`;

interface World {
  readonly base: string;
  readonly env: HostEnvironment;
  readonly tarball: string;
  readonly guest: GuestInputs;
  /** Where a planted Makefile writes when it runs. */
  readonly ran: string;
}

function world(t: TestContext): World {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-hostile-kcache-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const tree = path.join(base, 'src', 'linux-6.99');
  fs.mkdirSync(tree, { recursive: true });
  fs.writeFileSync(path.join(tree, 'Makefile'), STAND_IN);
  fs.writeFileSync(path.join(tree, 'Kconfig'), 'mainmenu "stand-in"\n');
  const tarball = path.join(base, 'linux-6.99.tar.xz');
  execFileSync('tar', ['-cJf', tarball, '-C', path.join(base, 'src'), 'linux-6.99']);
  const cacheDir = path.join(base, 'cache');
  fs.mkdirSync(cacheDir, { mode: 0o700 });
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
  return { base, env, tarball, guest, ran: path.join(base, 'PLANTED-MAKEFILE-RAN') };
}

const kernels = (w: World) => path.join(w.env.cacheDir, 'kernels');
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/** The reviewer's Demo B: the tarball's tree planted, with its marker, and a Makefile that records that it ran. */
function plantSourceTree(w: World): string {
  const dir = path.join(kernels(w), 'source', sha256(fs.readFileSync(w.tarball)).slice(0, 24));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'Makefile'),
    `%:\n\t@echo "planted Makefile ran as uid $$(id -u)" >${w.ran}\n`,
  );
  fs.writeFileSync(path.join(dir, 'Kconfig'), '');
  fs.writeFileSync(path.join(dir, '.openshell-vm-complete'), 'x\n');
  return dir;
}

function refusal(err: unknown, named: string, fix: 'chmod' | 'remove'): true {
  assert.ok(err instanceof HostError, String(err));
  assert.ok(err.message.startsWith(`refusing to use ${named}: `), err.message);
  assert.match(err.message, /\(owner uid \d+, mode 0[0-7]{3,4}\)/);
  assert.ok((err.hint ?? '').includes(fix === 'chmod' ? `chmod go-w ${named}` : `rm -rf ${named}`), err.hint);
  return true;
}

type SourcePlant = {
  name: string;
  skip?: string | false;
  fix: 'chmod' | 'remove';
  weaken: (w: World, tree: string) => string;
};
const SOURCE_PLANTS: SourcePlant[] = [
  {
    name: 'kernels/source open to everyone (mode 0777)',
    fix: 'chmod',
    weaken: (w) => chmod(path.join(kernels(w), 'source'), 0o777),
  },
  {
    name: "kernels open to everyone (the reviewer's shared cache)",
    fix: 'chmod',
    weaken: (w) => chmod(kernels(w), 0o777),
  },
  {
    name: 'kernels writable by its group (mode 0775)',
    fix: 'chmod',
    weaken: (w) => chmod(kernels(w), 0o775),
  },
  { name: 'the tree owned by nobody', skip: asRoot, fix: 'remove', weaken: (_w, tree) => chown(tree) },
  {
    name: 'kernels owned by nobody (put in a cache open to everyone)',
    skip: asRoot,
    fix: 'remove',
    weaken: (w) => chown(kernels(w)),
  },
  {
    name: "the tree's Makefile writable by others",
    fix: 'chmod',
    weaken: (_w, tree) => chmod(path.join(tree, 'Makefile'), 0o666),
  },
  {
    name: "the tree's Makefile owned by nobody",
    skip: asRoot,
    fix: 'remove',
    weaken: (_w, tree) => chown(path.join(tree, 'Makefile')),
  },
  {
    name: "the tree's marker owned by nobody",
    skip: asRoot,
    fix: 'remove',
    weaken: (_w, tree) => chown(path.join(tree, '.openshell-vm-complete')),
  },
];

function chmod(p: string, mode: number): string {
  fs.chmodSync(p, mode);
  return p;
}
function chown(p: string): string {
  fs.chownSync(p, NOBODY, NOBODY);
  return p;
}

for (const plant of SOURCE_PLANTS) {
  test(`kernel build --source: a planted source tree, ${plant.name}, is refused by path and its Makefile never runs`, {
    skip: plant.skip,
  }, async (t) => {
    const w = world(t);
    const tree = plantSourceTree(w);
    const weak = plant.weaken(w, tree);
    const err = await buildKernel(w.env, { arch: 'x86_64', target: 'qemu', jobs: 1, source: w.tarball }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.equal(
      fs.existsSync(w.ran),
      false,
      `the planted Makefile ran: ${fs.existsSync(w.ran) && fs.readFileSync(w.ran, 'utf8')}`,
    );
    refusal(err, weak, plant.fix);
    const built = targetDir(w.env, 'x86_64', 'qemu');
    assert.deepEqual(fs.existsSync(built) ? fs.readdirSync(built) : [], [], 'nothing was built');
  });
}

/**
 * A build of ours, then a planted one beside it that `current` names: an image of the planter's
 * with a provenance.json that says its sha256 (so, but for the trust check, `auto` boots it).
 */
async function plantBuiltKernel(w: World): Promise<{ planted: string; image: string }> {
  const ours = await buildKernel(w.env, { arch: 'x86_64', target: 'qemu', jobs: 1, source: w.tarball });
  const planted = path.join(targetDir(w.env, 'x86_64', 'qemu'), 'f'.repeat(24));
  fs.cpSync(ours.kernel.dir, planted, { recursive: true });
  const image = path.join(planted, 'bzImage');
  fs.writeFileSync(image, 'a kernel of the planter\n');
  const provenance = JSON.parse(fs.readFileSync(path.join(planted, KERNEL_FILES.provenance), 'utf8'));
  provenance.artifact_sha256 = sha256(fs.readFileSync(image));
  fs.writeFileSync(path.join(planted, KERNEL_FILES.provenance), JSON.stringify(provenance));
  fs.writeFileSync(
    path.join(targetDir(w.env, 'x86_64', 'qemu'), KERNEL_FILES.current),
    `${'f'.repeat(24)}\n`,
  );
  return { planted, image };
}

type BuiltPlant = {
  name: string;
  skip?: string | false;
  fix: 'chmod' | 'remove';
  weaken: (w: World, planted: { planted: string; image: string }) => string;
};
const BUILT_PLANTS: BuiltPlant[] = [
  {
    name: 'x86_64-qemu open to everyone',
    fix: 'chmod',
    weaken: (w) => chmod(targetDir(w.env, 'x86_64', 'qemu'), 0o777),
  },
  { name: 'kernels open to everyone', fix: 'chmod', weaken: (w) => chmod(kernels(w), 0o777) },
  {
    name: 'the key directory owned by nobody',
    skip: asRoot,
    fix: 'remove',
    weaken: (_w, p) => chown(p.planted),
  },
  { name: 'the image writable by others', fix: 'chmod', weaken: (_w, p) => chmod(p.image, 0o666) },
  {
    name: 'provenance.json owned by nobody',
    skip: asRoot,
    fix: 'remove',
    weaken: (_w, p) => chown(path.join(p.planted, KERNEL_FILES.provenance)),
  },
  {
    name: 'current owned by nobody',
    skip: asRoot,
    fix: 'remove',
    weaken: (w) => chown(path.join(targetDir(w.env, 'x86_64', 'qemu'), KERNEL_FILES.current)),
  },
  {
    name: 'the image a symlink to a kernel elsewhere',
    fix: 'remove',
    weaken: (w, p) => {
      const elsewhere = path.join(w.base, 'elsewhere-bzImage');
      fs.renameSync(p.image, elsewhere);
      fs.symlinkSync(elsewhere, p.image);
      return p.image;
    },
  },
];

for (const plant of BUILT_PLANTS) {
  test(`auto and built: a planted built kernel, ${plant.name}, is refused by path and never booted`, {
    skip: plant.skip,
  }, async (t) => {
    const w = world(t);
    const planted = await plantBuiltKernel(w);
    const weak = plant.weaken(w, planted);
    for (const kind of ['auto', 'built'] as const) {
      const outcome = await resolveBootKernel(w.env, w.guest, { kind }).then(
        (boot) => assert.fail(`${kind} boots the ${boot.kind} kernel ${boot.image}`),
        (e: unknown) => e,
      );
      refusal(outcome, weak, plant.fix);
    }
  });
}

test('a kernel cache of ours: the fix in the hint (chmod go-w) makes the build usable again', async (t) => {
  const w = world(t);
  const ours = await buildKernel(w.env, { arch: 'x86_64', target: 'qemu', jobs: 1, source: w.tarball });
  for (const dir of [
    kernels(w),
    path.join(kernels(w), 'source'),
    targetDir(w.env, 'x86_64', 'qemu'),
    ours.kernel.dir,
  ])
    assert.equal(fs.statSync(dir).mode & 0o777, 0o700, `${dir} is created 0700`);
  chmod(kernels(w), 0o777);
  await assert.rejects(resolveBootKernel(w.env, w.guest, { kind: 'auto' }), (err: unknown) =>
    refusal(err, kernels(w), 'chmod'),
  );
  execFileSync('chmod', ['go-w', kernels(w)]);
  const boot = await resolveBootKernel(w.env, w.guest, { kind: 'auto' });
  assert.deepEqual([boot.kind, boot.image], ['built', ours.kernel.image]);
  const again = await buildKernel(w.env, { arch: 'x86_64', target: 'qemu', jobs: 1, source: w.tarball });
  assert.equal(again.built, false);
});
