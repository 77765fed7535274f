import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LIBRARY_NAMES } from '../api/options.ts';
import { UsageError } from '../errors.ts';
import { ANY_HOST_PORT, resolveExecOptions } from './exec-options.ts';
import { resolveGatewayOptions } from './gateway-options.ts';

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
    [{ mem: 'abc' }, /--mem: 'abc' is not a whole number of MiB or a size with a unit/, /MiB from 128 to/],
    [{ mem: '64' }, /--mem: 64 is out of range/, /MiB from 128 to 1048576/],
    [{ mem: '4XB' }, /--mem: '4XB' is not a whole number of MiB or a size with a unit/, /4GiB/],
    [{ mem: '0' }, /--mem: 0 is out of range/, /MiB/],
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

test('--mem takes units: 4GiB, 4096M, 2G are MiB counts', () => {
  for (const [mem, mib] of [
    ['4GiB', 4096],
    ['4096M', 4096],
    ['2G', 2048],
    ['3000', 3000],
  ] as const) {
    assert.equal(resolveExecOptions({ exec: 'sh', arch: 'x86_64', mem }, HOST).options.memMib, mib, mem);
  }
});

/** The library's spelling of each option, as src/api/options.ts passes it. */
const LIB = LIBRARY_NAMES;

test('library values go through the same rules, and errors name the library option', () => {
  const { options } = resolveExecOptions(
    {
      exec: '/bin/sh',
      arch: 'x86_64',
      vcpus: 2,
      mem: '1GiB',
      env: [['A', 'b=c']],
      bootTimeoutMs: 1500,
      ports: [{ guestPort: 80 }, { guestPort: 81, hostPort: 8081, hostAddress: '::1' }, '8082:82'],
    },
    HOST,
    LIB,
  );
  assert.equal(options.vcpus, 2);
  assert.equal(options.memMib, 1024);
  assert.equal(options.bootTimeoutMs, 1500);
  assert.equal(new Map(options.request.env).get('A'), 'b=c');
  assert.deepEqual(options.forwards, [
    { hostAddress: '127.0.0.1', hostPort: ANY_HOST_PORT, guestPort: 80 },
    { hostAddress: '::1', hostPort: 8081, guestPort: 81 },
    { hostAddress: '127.0.0.1', hostPort: 8082, guestPort: 82 },
  ]);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ vcpus: 1.5 }, /^cpus: 1.5 is not a whole number/],
    [{ mem: 64 }, /^memory: 64 is out of range/],
    [{ mem: '4XB' }, /^memory: '4XB' is not a whole number of MiB or a size with a unit/],
    [{ env: [['1X', 'v']] }, /^env: malformed variable '1X'/],
    [{ env: [['X', 3]] }, /^env: malformed variable 'X'/],
    [{ workdir: 'tmp' }, /^workdir: 'tmp' is not an absolute path/],
    [{ bootTimeoutMs: 10 }, /^bootTimeoutMs: 10 is out of range/],
    [{ net: 'wifi' }, /^network: unknown network 'wifi'/],
    [{ ports: [{ guestPort: 0 }] }, /^ports: guestPort 0 is not a port/],
    [{ ports: [{ guestPort: 80, hostPort: 70000 }] }, /^ports: hostPort 70000 is not a port/],
    [
      { ports: [{ guestPort: 80, hostAddress: 'localhost' }] },
      /^ports: hostAddress 'localhost' is not an IP/,
    ],
    [{ ports: [80] }, /^ports: 80 is not a port forward/],
    [{ ports: [{ guestPort: 80 }], net: 'none' }, /^ports needs a network, but network none/],
    [{ rootfs: '' }, /^rootfs: empty path/],
  ];
  for (const [override, message] of cases) {
    assert.throws(
      () => resolveExecOptions({ exec: '/bin/sh', arch: 'x86_64', ...override } as never, HOST, LIB),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
      `case ${JSON.stringify(override)}`,
    );
  }
  assert.throws(() => resolveExecOptions({ arch: 'x86_64' }, HOST, LIB), /no command given/);
});

test('two forwards of one host port are refused; any number of chosen ones are not', () => {
  assert.throws(
    () =>
      resolveExecOptions(
        { exec: 'sh', arch: 'x86_64', ports: ['8080:80', { guestPort: 81, hostPort: 8080 }] },
        HOST,
      ),
    /host port 8080 is forwarded twice/,
  );
  const { options } = resolveExecOptions(
    { exec: 'sh', arch: 'x86_64', ports: [{ guestPort: 80 }, { guestPort: 81 }] },
    HOST,
  );
  assert.equal(options.forwards.length, 2);
});

test('gateway options: the same rules for memory units and library values', () => {
  const { options } = resolveGatewayOptions(
    { arch: 'x86_64', mem: '4GiB', vcpus: 2, readyTimeoutMs: 5000, ports: [{ guestPort: 30051 }] },
    HOST,
    LIB,
  );
  assert.equal(options.memMib, 4096);
  assert.equal(options.readyTimeoutMs, 5000);
  assert.deepEqual(options.gateway, { hostAddress: '127.0.0.1', hostPort: ANY_HOST_PORT, guestPort: 30051 });
  assert.throws(
    () => resolveGatewayOptions({ arch: 'x86_64', mem: '1.3G' }, HOST),
    /^UsageError: --mem: '1.3G' is not a whole number of MiB/,
  );
  assert.throws(
    () => resolveGatewayOptions({ arch: 'x86_64', useContext: true }, HOST, LIB),
    /useContext needs mergeKubeconfig/,
  );
  assert.throws(
    () => resolveGatewayOptions({ arch: 'x86_64', ports: [{ guestPort: 6443 }] }, HOST, LIB),
    /ports: guest port 6443 is the Kubernetes API, forwarded by apiPort/,
  );
});
