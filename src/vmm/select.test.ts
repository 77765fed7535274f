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

test('the gateway on libkrun only with a libkrunfw whose kernel has every option; else QEMU, or the refusal with the fix', () => {
  const lacking = {
    ...found,
    gatewayKernel: {
      why: 'its kernel lacks CONFIG_NETFILTER',
      hint: 'openshell-vm kernel build --target libkrunfw',
    },
  };
  assert.equal(
    chooseBackend(kvm, { ...found, gatewayKernel: 'ok' }, undefined, 'gateway').backend,
    'libkrun',
  );
  assert.equal(
    chooseBackend(
      { ...kvm, platform: 'darwin', hvfSupported: true },
      { ...found, gatewayKernel: 'ok' },
      undefined,
      'gateway',
    ).backend,
    'libkrun',
  );
  const fallback = chooseBackend(kvm, lacking, undefined, 'gateway');
  assert.equal(fallback.backend, 'qemu');
  assert.match(fallback.reason, /the gateway cannot run on it: its kernel lacks CONFIG_NETFILTER/);
  // Not checked is not a pass.
  assert.match(chooseBackend(kvm, found, undefined, 'gateway').reason, /were not checked/);
  assert.equal(
    chooseBackend({ ...kvm, kvmIsPvm: true }, { ...found, gatewayKernel: 'ok' }, undefined, 'gateway')
      .backend,
    'qemu',
  );
  assert.equal(chooseBackend(kvm, missing, 'qemu', 'gateway').backend, 'qemu');
  assert.equal(
    chooseBackend(kvm, { ...found, gatewayKernel: 'ok' }, 'libkrun', 'gateway').backend,
    'libkrun',
  );
  assert.throws(
    () => chooseBackend(kvm, lacking, 'libkrun', 'gateway'),
    (e: unknown) =>
      e instanceof UsageError &&
      /--backend libkrun: the gateway cannot run on this runtime: its kernel lacks CONFIG_NETFILTER/.test(
        e.message,
      ) &&
      /kernel build --target libkrunfw/.test(e.hint ?? ''),
  );
  // A command does not need the gateway's options.
  assert.equal(chooseBackend(kvm, lacking, undefined, 'command').backend, 'libkrun');
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
