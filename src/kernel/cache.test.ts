import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type KernelBuildInputs, kernelBuildKey, requestSha256 } from './cache.ts';
import { qemuRecipe } from './recipe.ts';

const INPUTS: KernelBuildInputs = {
  arch: 'x86_64',
  target: 'qemu',
  source: { package: 'linux-source-6.12', version: '6.12.118-1~deb12u1', sha256: 'c'.repeat(64) },
  configSha256: 'd'.repeat(64),
  toolchain: { compiler: 'gcc (Debian 12.2.0-14+deb12u1) 12.2.0', make: 'GNU Make 4.3' },
};

test('the cache key is stable and changes with every input it covers', () => {
  const key = kernelBuildKey(INPUTS);
  assert.match(key, /^[0-9a-f]{24}$/);
  assert.equal(kernelBuildKey({ ...INPUTS }), key);
  const variants: KernelBuildInputs[] = [
    { ...INPUTS, arch: 'aarch64' },
    { ...INPUTS, source: { ...INPUTS.source, version: '6.12.119-1' } },
    { ...INPUTS, source: { ...INPUTS.source, sha256: 'e'.repeat(64) } },
    { ...INPUTS, source: { ...INPUTS.source, package: 'local' } },
    { ...INPUTS, configSha256: 'f'.repeat(64) },
    { ...INPUTS, toolchain: { ...INPUTS.toolchain, compiler: 'gcc (Debian 14.2.0-19) 14.2.0' } },
    { ...INPUTS, toolchain: { ...INPUTS.toolchain, make: 'GNU Make 4.4.1' } },
  ];
  const keys = new Set(variants.map(kernelBuildKey));
  assert.equal(keys.size, variants.length);
  assert.ok(!keys.has(key));
});

test('the request hash covers the base recipe, each fragment text and its name', () => {
  const a = requestSha256('allnoconfig', [{ source: 'a.kconfig', text: 'CONFIG_NET=y\n' }]);
  assert.equal(a, requestSha256('allnoconfig', [{ source: 'a.kconfig', text: 'CONFIG_NET=y\n' }]));
  assert.notEqual(a, requestSha256('tinyconfig', [{ source: 'a.kconfig', text: 'CONFIG_NET=y\n' }]));
  assert.notEqual(a, requestSha256('allnoconfig', [{ source: 'a.kconfig', text: 'CONFIG_NET=n\n' }]));
  assert.notEqual(a, requestSha256('allnoconfig', [{ source: 'b.kconfig', text: 'CONFIG_NET=y\n' }]));
});

test("the qemu recipe: each architecture's fragments, the gateway's last; extra fragments change it", async () => {
  const x86 = await qemuRecipe('x86_64');
  assert.deepEqual(
    x86.fragments.map((f) => f.source),
    ['qemu-guest.kconfig', 'qemu-guest-x86_64.kconfig', 'openshell.kconfig'],
  );
  const arm = await qemuRecipe('aarch64');
  assert.equal(arm.fragments[1]?.source, 'qemu-guest-aarch64.kconfig');
  assert.notEqual(arm.requestSha256, x86.requestSha256);
  const extra = await qemuRecipe('x86_64', [{ source: 'x', text: 'CONFIG_X=y\n' }]);
  assert.notEqual(extra.requestSha256, x86.requestSha256);
  assert.equal((await qemuRecipe('x86_64')).requestSha256, x86.requestSha256);
});
