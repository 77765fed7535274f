import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostAccelFacts } from '../accel/probe.ts';
import { HostError, UsageError } from '../errors.ts';
import { chooseBackend } from './select.ts';

const kvm: HostAccelFacts = {
  platform: 'linux',
  hostArch: 'x86_64',
  kvmDevice: 'ok',
  kvmIsPvm: false,
  hvfSupported: false,
};
const found = { found: true as const, dir: '/rt' };
const missing = { found: false as const, why: 'no libkrun runtime found', hint: 'install libkrun' };

test('libkrun by default where a runtime is found and KVM/HVF works, QEMU otherwise, with the reason', () => {
  assert.equal(chooseBackend(kvm, found).backend, 'libkrun');
  assert.equal(chooseBackend({ ...kvm, platform: 'darwin', hvfSupported: true }, found).backend, 'libkrun');
  assert.match(chooseBackend(kvm, missing).reason, /no libkrun runtime/);
  const pvm = chooseBackend({ ...kvm, kvmIsPvm: true }, found);
  assert.equal(pvm.backend, 'qemu');
  assert.match(pvm.reason, /kvm-pvm/);
  assert.equal(chooseBackend({ ...kvm, kvmDevice: 'absent' }, found).backend, 'qemu');
});

test('the gateway runs on QEMU; --backend libkrun for it is refused with the fix', () => {
  const gateway = chooseBackend(kvm, found, undefined, 'gateway');
  assert.equal(gateway.backend, 'qemu');
  assert.match(gateway.reason, /the gateway runs on QEMU/);
  assert.equal(chooseBackend(kvm, missing, 'qemu', 'gateway').backend, 'qemu');
  assert.throws(
    () => chooseBackend(kvm, found, 'libkrun', 'gateway'),
    (e: unknown) =>
      e instanceof UsageError &&
      /the gateway does not run on libkrun yet/.test(e.message) &&
      /--backend qemu/.test(e.hint ?? ''),
  );
});

test('--backend forces a choice; libkrun without a runtime is an error with the hint', () => {
  assert.equal(chooseBackend(kvm, found, 'qemu').backend, 'qemu');
  const forced = chooseBackend({ ...kvm, kvmDevice: 'absent' }, found, 'libkrun');
  assert.equal(forced.backend, 'libkrun');
  assert.match(forced.warning ?? '', /probably fail/);
  assert.throws(
    () => chooseBackend(kvm, missing, 'libkrun'),
    (e: unknown) =>
      e instanceof HostError &&
      /--backend libkrun: no libkrun runtime found/.test(e.message) &&
      e.hint === 'install libkrun',
  );
});
