import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { hostTscKhz } from './tsc.ts';

function fakeRoot(files: Record<string, string>): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-tsc-'));
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), text);
  }
  return `${root}/`;
}

const cpu = (extra: string) =>
  `processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.40GHz\ncpu MHz\t\t: 2096.010\nflags\t\t: fpu tsc constant_tsc ${extra}\n\nprocessor\t: 1\n`;

test('a VM host without cpufreq: cpu MHz is the TSC rate', async () => {
  assert.equal(await hostTscKhz(fakeRoot({ 'proc/cpuinfo': cpu('') })), 2096010);
});

test('with cpufreq: base_frequency, else the Intel model name', async () => {
  const freq = 'sys/devices/system/cpu/cpu0/cpufreq/';
  assert.equal(
    await hostTscKhz(
      fakeRoot({
        'proc/cpuinfo': cpu(''),
        [`${freq}scaling_driver`]: 'intel_pstate',
        [`${freq}base_frequency`]: '2300000\n',
      }),
    ),
    2300000,
  );
  assert.equal(
    await hostTscKhz(fakeRoot({ 'proc/cpuinfo': cpu(''), [`${freq}scaling_driver`]: 'acpi' })),
    2400000,
  );
});

test('no constant TSC or no cpuinfo: unknown', async () => {
  assert.equal(
    await hostTscKhz(fakeRoot({ 'proc/cpuinfo': 'processor\t: 0\nflags\t\t: fpu tsc\n' })),
    undefined,
  );
  assert.equal(await hostTscKhz(fakeRoot({})), undefined);
});
