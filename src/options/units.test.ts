import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { parseCount, parseMemoryMib } from './units.ts';

const MEM = { min: 128, max: 1_048_576 };

test('memory: a plain number is MiB; binary units in any case; whole-MiB fractions of G', () => {
  const cases: [string | number, number][] = [
    ['4096', 4096],
    [4096, 4096],
    ['4096M', 4096],
    ['4096MiB', 4096],
    ['4096m', 4096],
    ['4096Mi', 4096],
    ['2G', 2048],
    ['4GiB', 4096],
    ['4gib', 4096],
    ['4 GiB', 4096],
    ['1.5G', 1536],
    ['0.25G', 256],
    ['1T', 1_048_576],
  ];
  for (const [value, mib] of cases) assert.equal(parseMemoryMib('--mem', value, MEM), mib, String(value));
});

test('memory: every bad size is a UsageError naming the option, the value and the forms', () => {
  const cases: [string | number, RegExp, RegExp][] = [
    ['4XB', /--mem: '4XB' is not a whole number of MiB or a size with a unit$/, /4096M, 4096MiB, 4G, 4GiB/],
    [
      '4GB',
      /--mem: '4GB' is not a whole number of MiB or a size with a binary unit \(GB is decimal\)/,
      /binary units/,
    ],
    ['512MB', /\(MB is decimal\)/, /binary units/],
    ['abc', /'abc' is not a whole number of MiB or a size with a unit/, /MiB from 128 to 1048576/],
    ['', /'' is not a whole number of MiB or a size with a unit/, /MiB/],
    ['0', /--mem: 0 is out of range/, /MiB from 128 to/],
    ['-2G', /--mem: -2G is out of range/, /MiB from 128 to/],
    [-4096, /--mem: -4096 is out of range/, /MiB from 128 to/],
    ['100.5', /'100.5' is not a whole number of MiB \(100.5 MiB\)/, /MiB/],
    ['1.3G', /'1.3G' is not a whole number of MiB/, /MiB/],
    [2048.5, /--mem: 2048.5 is not a whole number of MiB/, /MiB/],
    ['2T', /--mem: 2T is out of range/, /to 1048576 as/],
    ['64', /--mem: 64 is out of range/, /MiB from 128 to/],
  ];
  for (const [value, message, hint] of cases) {
    assert.throws(
      () => parseMemoryMib('--mem', value, MEM),
      (e: unknown) => e instanceof UsageError && message.test(e.message) && hint.test(e.hint ?? ''),
      `case ${JSON.stringify(value)}`,
    );
  }
  assert.throws(() => parseMemoryMib('memory', '4XB', MEM), /^UsageError: memory: '4XB'/);
});

test('counts: decimal digits or an integer, in range', () => {
  const range = { min: 1, max: 255 };
  assert.equal(parseCount('--vcpus', '4', range, 'vCPUs'), 4);
  assert.equal(parseCount('cpus', 4, range, 'vCPUs'), 4);
  for (const [value, message] of [
    ['1.5', /--vcpus: '1.5' is not a whole number/],
    ['1e2', /'1e2' is not a whole number/],
    [' 2', /' 2' is not a whole number/],
    [1.5, /--vcpus: 1.5 is not a whole number/],
    [Number.NaN, /NaN is not a whole number/],
    ['0', /--vcpus: 0 is out of range/],
    [256, /--vcpus: 256 is out of range/],
  ] as const) {
    assert.throws(
      () => parseCount('--vcpus', value, range, 'vCPUs'),
      (e: unknown) => e instanceof UsageError && message.test(e.message) && /1 to 255/.test(e.hint ?? ''),
      String(value),
    );
  }
});
