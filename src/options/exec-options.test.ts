import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { resolveExecOptions } from './exec-options.ts';

const HOST = { cpus: 4, memMib: 8192 };

test('defaults follow the seed: 2 vCPUs, 2048 MiB, workdir /', () => {
  const { options, warnings } = resolveExecOptions({ exec: '/bin/true', arch: 'x86_64' }, HOST);
  assert.equal(options.vcpus, 2);
  assert.equal(options.memMib, 2048);
  assert.equal(options.request.workdir, '/');
  assert.deepEqual(warnings, []);
  assert.ok(Object.isFrozen(options));
});

test('values the host cannot honour are clamped with a warning', () => {
  const { options, warnings } = resolveExecOptions(
    { exec: '/bin/true', arch: 'x86_64', vcpus: '64', mem: '100000' },
    HOST,
  );
  assert.equal(options.vcpus, 4);
  assert.equal(options.memMib, 6144);
  assert.equal(warnings.length, 2);
  assert.match(warnings[0] ?? '', /--vcpus 64 .* using 4/);
});

test('every bad value names the option, the value and what was expected', () => {
  const cases: [Record<string, string>, RegExp, RegExp][] = [
    [{ mem: 'abc' }, /--mem: 'abc' is not a whole number/, /MiB from 128/],
    [{ mem: '64' }, /--mem: 64 is out of range/, /128 to 1048576/],
    [{ vcpus: '0' }, /--vcpus: 0 is out of range/, /1 to 255/],
    [{ vcpus: '1.5' }, /--vcpus: '1.5' is not a whole number/, /vCPUs/],
    [{ vcpus: '-2' }, /not a whole number/, /vCPUs/],
    [{ env: 'NOEQUALS' }, /--env: malformed 'NOEQUALS'/, /KEY=VALUE/],
    [{ env: '1X=2' }, /--env: malformed '1X=2'/, /KEY=VALUE/],
    [{ workdir: 'relative' }, /--workdir: 'relative' is not an absolute path/, /starting with \//],
    [{ arch: 'sparc' }, /--arch: unknown architecture 'sparc'/, /x86_64, aarch64/],
    [{ accel: 'xen' }, /--accel: unknown accelerator 'xen'/, /kvm, hvf, tcg/],
    [{ bootTimeout: '0' }, /--boot-timeout: 0 is out of range/, /seconds/],
    [{ name: 'bad/name' }, /--name: invalid instance name 'bad\/name'/, /letters, digits/],
  ];
  for (const [override, message, hint] of cases) {
    const raw = { exec: '/bin/true', arch: 'x86_64', ...override, env: override.env ? [override.env] : [] };
    assert.throws(
      () => resolveExecOptions(raw, HOST),
      (e: unknown) => e instanceof UsageError && message.test(e.message) && hint.test(e.hint ?? ''),
      `case ${JSON.stringify(override)}`,
    );
  }
});

test('--env values may contain = and spaces; a later name replaces an earlier one', () => {
  const { options } = resolveExecOptions(
    { exec: 'sh', arch: 'x86_64', env: ['A=b=c d', 'A=2', 'PATH=/p'] },
    HOST,
  );
  const env = new Map(options.request.env);
  assert.equal(env.get('A'), '2');
  assert.equal(env.get('PATH'), '/p');
});
