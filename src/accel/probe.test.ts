import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
import { chooseAccelerator, type HostAccelFacts } from './probe.ts';

const linux: HostAccelFacts = {
  platform: 'linux',
  hostArch: 'x86_64',
  kvmDevice: 'ok',
  kvmIsPvm: false,
  hvfSupported: false,
};
const mac: HostAccelFacts = {
  platform: 'darwin',
  hostArch: 'aarch64',
  kvmDevice: 'absent',
  kvmIsPvm: false,
  hvfSupported: true,
};

test('KVM when /dev/kvm is usable and the guest matches the host', () => {
  assert.equal(chooseAccelerator('x86_64', linux).accel, 'kvm');
});

test('kvm-pvm is detected and TCG chosen, with the reason', () => {
  const c = chooseAccelerator('x86_64', { ...linux, kvmIsPvm: true });
  assert.equal(c.accel, 'tcg');
  assert.match(c.reason, /kvm-pvm/);
});

test('TCG without /dev/kvm, without access to it, and across architectures', () => {
  assert.match(chooseAccelerator('x86_64', { ...linux, kvmDevice: 'absent' }).reason, /does not exist/);
  assert.match(chooseAccelerator('x86_64', { ...linux, kvmDevice: 'no-access' }).reason, /kvm group/);
  const cross = chooseAccelerator('aarch64', linux);
  assert.equal(cross.accel, 'tcg');
  assert.match(cross.reason, /aarch64 guest on an x86_64 host/);
});

test('HVF on a Mac that supports it, TCG otherwise', () => {
  assert.equal(chooseAccelerator('aarch64', mac).accel, 'hvf');
  assert.equal(chooseAccelerator('aarch64', { ...mac, hvfSupported: false }).accel, 'tcg');
  assert.equal(chooseAccelerator('x86_64', mac).accel, 'tcg');
});

test('--accel overrides: tcg always; kvm/hvf only where they can exist', () => {
  assert.equal(chooseAccelerator('x86_64', linux, 'tcg').accel, 'tcg');
  const forced = chooseAccelerator('x86_64', { ...linux, kvmIsPvm: true }, 'kvm');
  assert.equal(forced.accel, 'kvm');
  assert.match(forced.warning ?? '', /probably hang/);
  const bad: [HostAccelFacts, 'kvm' | 'hvf', 'x86_64' | 'aarch64', RegExp][] = [
    [{ ...linux, kvmDevice: 'absent' }, 'kvm', 'x86_64', /\/dev\/kvm does not exist/],
    [{ ...linux, kvmDevice: 'no-access' }, 'kvm', 'x86_64', /not readable and writable/],
    [linux, 'kvm', 'aarch64', /cannot run an aarch64 guest/],
    [linux, 'hvf', 'x86_64', /only on macOS/],
    [mac, 'kvm', 'aarch64', /only on Linux/],
  ];
  for (const [facts, accel, arch, re] of bad) {
    assert.throws(
      () => chooseAccelerator(arch, facts, accel),
      (e: unknown) => e instanceof HostError && re.test(e.message),
    );
  }
});
