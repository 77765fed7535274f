import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { HostError, UsageError } from '../errors.ts';
import type { GuestInputs } from '../host/toolchain.ts';
import { KERNEL_FILES, targetDir } from './cache.ts';
import { kernelChoiceFromEnvironment, parseKernelChoice, resolveBootKernel } from './selection.ts';

test('OPENSHELL_VM_KERNEL: auto (also unset or empty), debian, built, a path; anything else is refused', () => {
  assert.deepEqual(kernelChoiceFromEnvironment({}), { kind: 'auto' });
  assert.deepEqual(parseKernelChoice(''), { kind: 'auto' });
  assert.deepEqual(parseKernelChoice('auto'), { kind: 'auto' });
  assert.deepEqual(parseKernelChoice('debian'), { kind: 'debian' });
  assert.deepEqual(kernelChoiceFromEnvironment({ OPENSHELL_VM_KERNEL: 'built' }), { kind: 'built' });
  assert.deepEqual(parseKernelChoice('./bzImage'), { kind: 'file', path: path.resolve('bzImage') });
  assert.throws(
    () => parseKernelChoice('Debian'),
    (err: unknown) =>
      err instanceof UsageError &&
      /OPENSHELL_VM_KERNEL: unknown kernel 'Debian'/.test(err.message) &&
      /auto, debian, built, or the path/.test(err.hint ?? ''),
  );
});

function guestIn(t: { after: (fn: () => void) => void }) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-ksel-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const env = testEnvironment(base, { cacheDir: path.join(base, 'cache') });
  const guest: GuestInputs = {
    arch: 'x86_64',
    manifestPath: path.join(base, 'manifest.json'),
    kernel: {
      package: 'linux-image-6.1.0-57-cloud-amd64',
      version: '6.1.192-3',
      release: '6.1.0-57-cloud-amd64',
      vmlinuz: path.join(base, 'vmlinuz'),
      vmlinuzSha256: 'a'.repeat(64),
      modulesDir: base,
      modulesDepSha256: 'b'.repeat(64),
    },
    busybox: { version: '1', binary: path.join(base, 'busybox'), binarySha256: 'c'.repeat(64) },
  };
  return { base, env, guest };
}

test("auto without a built kernel, and debian: Debian's kernel with its modules", async (t) => {
  const { env, guest } = guestIn(t);
  for (const kind of ['auto', 'debian'] as const) {
    const boot = await resolveBootKernel(env, guest, { kind });
    assert.equal(boot.kind, 'debian');
    assert.equal(boot.image, guest.kernel.vmlinuz);
    assert.equal(boot.modules, 'loadable');
    assert.equal(boot.note, undefined);
    assert.match(
      boot.description,
      /Debian's linux-image-6\.1\.0-57-cloud-amd64 6\.1\.192-3 \(modules loaded at boot\)/,
    );
  }
});

test('built without a build is an error naming kernel build; a damaged current build is not booted', async (t) => {
  const { env, guest } = guestIn(t);
  await assert.rejects(
    resolveBootKernel(env, guest, { kind: 'built' }),
    (err: unknown) =>
      err instanceof HostError &&
      /no built kernel for x86_64/.test(err.message) &&
      err.hint === 'run openshell-vm kernel build --arch x86_64',
  );
  const dir = targetDir(env, 'x86_64', 'qemu');
  fs.mkdirSync(path.join(dir, 'a'.repeat(24)), { recursive: true });
  fs.writeFileSync(path.join(dir, KERNEL_FILES.current), `${'a'.repeat(24)}\n`);
  fs.writeFileSync(path.join(dir, 'a'.repeat(24), KERNEL_FILES.provenance), '{"artifact": 1}');
  const auto = await resolveBootKernel(env, guest, { kind: 'auto' });
  assert.equal(auto.kind, 'debian');
  assert.match(auto.note ?? '', /provenance\.json: .*booting Debian's kernel/);
  await assert.rejects(
    resolveBootKernel(env, guest, { kind: 'built' }),
    /cannot boot the built kernel: .*provenance\.json/,
  );
});

test('a kernel file: booted as given, with no modules; a missing one is named', async (t) => {
  const { base, env, guest } = guestIn(t);
  const image = path.join(base, 'bzImage');
  fs.writeFileSync(image, 'kernel');
  const boot = await resolveBootKernel(env, guest, { kind: 'file', path: image });
  assert.deepEqual([boot.kind, boot.image, boot.modules], ['file', image, 'none']);
  assert.equal(boot.sha256, createHash('sha256').update('kernel').digest('hex'));
  await assert.rejects(
    resolveBootKernel(env, guest, { kind: 'file', path: path.join(base, 'nope') }),
    /OPENSHELL_VM_KERNEL=.*nope: no such kernel image/,
  );
});
