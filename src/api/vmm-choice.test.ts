import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { hostArch } from '../host/arch.ts';
import { backendFeatures } from '../vmm/registry.ts';
import { checkOptionsFit } from './vmm-choice.ts';

const host = hostArch() ?? 'x86_64';
const other = host === 'x86_64' ? 'aarch64' : 'x86_64';
const base = { arch: host, accel: undefined, network: 'none', forwards: [] } as const;

function refusal(fn: () => void): UsageError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    return err;
  }
  assert.fail('not refused');
}

test('options a backend cannot honour are refused from its features, with the backend that can as the hint', () => {
  const arch = refusal(() => checkOptionsFit('libkrun', { ...base, arch: other }));
  assert.match(
    arch.message,
    new RegExp(`--arch ${other}: libkrun runs guests of the host's architecture only`),
  );
  assert.equal(arch.hint, 'use --backend qemu');
  const tcg = refusal(() => checkOptionsFit('libkrun', { ...base, accel: 'tcg' }));
  assert.match(tcg.message, /--accel tcg: libkrun has no software emulation/);
  assert.equal(tcg.hint, 'use --backend qemu');
  const user = refusal(() => checkOptionsFit('libkrun', { ...base, network: 'user' }));
  assert.match(user.message, /--net user is QEMU's own network; the libkrun backend has gvproxy, tsi, none/);
  assert.match(user.hint ?? '', /use --net gvproxy\/tsi\/none, or use --backend qemu/);
  const tsi = refusal(() => checkOptionsFit('qemu', { ...base, network: 'tsi' }));
  assert.match(tsi.message, /--net tsi is libkrun's network/);
  assert.match(tsi.hint ?? '', /--backend libkrun/);
  const forward = { hostAddress: '0.0.0.0', hostPort: 8080, guestPort: 80 };
  assert.match(
    refusal(() => checkOptionsFit('libkrun', { ...base, network: 'tsi', forwards: [forward] })).message,
    /TSI port maps have no host address/,
  );
});

test('what every backend offers passes; the checks follow the features, not the name', () => {
  for (const [name, features] of Object.entries(backendFeatures())) {
    for (const network of features.networks) {
      checkOptionsFit(name as 'qemu' | 'libkrun', {
        ...base,
        arch: features.guestArches[0] ?? host,
        network,
      });
    }
  }
  // A backend described as having only 'none' refuses gvproxy, whatever its name.
  const narrow = { ...backendFeatures().qemu, networks: ['none'] as const };
  assert.match(
    refusal(() => checkOptionsFit('qemu', { ...base, network: 'gvproxy' }, narrow)).message,
    /the qemu backend has none/,
  );
});
