import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildKernelConfig, describeUnmet, unmetOptions } from './config-builder.ts';

const BASE = [
  '#',
  '# Linux/x86 6.12.118 Kernel Configuration',
  '#',
  'CONFIG_64BIT=y',
  '# CONFIG_MODULES is not set',
  '# CONFIG_NET is not set',
  'CONFIG_LOG_BUF_SHIFT=17',
  '',
].join('\n');

test('fragments replace base lines in place and append new options in their order', () => {
  const built = buildKernelConfig(BASE, [
    { source: 'qemu.kconfig', text: '# Networking\nCONFIG_NET=y\nCONFIG_VIRTIO_NET=y\n' },
    { source: 'openshell.kconfig', text: 'CONFIG_LOG_BUF_SHIFT=18\n# CONFIG_IKHEADERS is not set\n' },
  ]);
  assert.deepEqual(built.problems, []);
  assert.equal(
    built.config,
    [
      '#',
      '# Linux/x86 6.12.118 Kernel Configuration',
      '#',
      'CONFIG_64BIT=y',
      '# CONFIG_MODULES is not set',
      'CONFIG_NET=y',
      'CONFIG_LOG_BUF_SHIFT=18',
      '',
      '# Added by openshell-vm from its config fragments',
      'CONFIG_VIRTIO_NET=y',
      '# CONFIG_IKHEADERS is not set',
      '',
    ].join('\n'),
  );
  assert.deepEqual(built.requested.get('CONFIG_NET'), { value: 'y', source: 'qemu.kconfig' });
  assert.deepEqual(built.requested.get('CONFIG_IKHEADERS'), { value: 'n', source: 'openshell.kconfig' });
});

test('the same inputs give the same bytes; no fragment gives the base back', () => {
  const fragments = [{ source: 'a', text: 'CONFIG_NET=y\nCONFIG_B=y\n' }];
  assert.equal(buildKernelConfig(BASE, fragments).config, buildKernelConfig(BASE, fragments).config);
  assert.equal(buildKernelConfig(BASE, []).config, BASE);
});

test('a conflict between fragments and a malformed line are problems, each named', () => {
  const built = buildKernelConfig(BASE, [
    { source: 'qemu.kconfig', text: 'CONFIG_NET=y\n' },
    { source: 'openshell.kconfig', text: '\n# CONFIG_NET is not set\nCONFIG_VETH y\n' },
  ]);
  assert.deepEqual(built.problems, [
    'CONFIG_NET: qemu.kconfig sets y, openshell.kconfig:2 sets n',
    'openshell.kconfig:3: not a kernel config line: CONFIG_VETH y',
  ]);
});

test('the same value twice is no conflict, and the base line is written once', () => {
  const built = buildKernelConfig(`${BASE}# CONFIG_NET is not set\n`, [
    { source: 'a', text: 'CONFIG_NET=y\n' },
    { source: 'b', text: 'CONFIG_NET=y\n' },
  ]);
  assert.deepEqual(built.problems, []);
  assert.equal(built.config.match(/CONFIG_NET\b/g)?.length, 1);
});

test('unmetOptions names what kconfig dropped or changed, and accepts renamed options', () => {
  const { requested } = buildKernelConfig(BASE, [
    {
      source: 'openshell.kconfig',
      text: 'CONFIG_NET=y\nCONFIG_BRIDGE=y\nCONFIG_NF_NAT_MASQUERADE_IPV4=y\nCONFIG_LOG_BUF_SHIFT=18\n# CONFIG_IKHEADERS is not set\n# CONFIG_DEBUG_INFO is not set\n',
    },
  ]);
  const resolved = [
    'CONFIG_NET=y',
    'CONFIG_NF_NAT_MASQUERADE=y',
    'CONFIG_LOG_BUF_SHIFT=17',
    '# CONFIG_DEBUG_INFO is not set',
    'CONFIG_IKHEADERS=y',
  ].join('\n');
  const unmet = unmetOptions(requested, resolved);
  assert.deepEqual(
    unmet.map((u) => [u.option, u.wanted, u.got]),
    [
      ['CONFIG_BRIDGE', 'y', undefined],
      ['CONFIG_LOG_BUF_SHIFT', '18', '17'],
      ['CONFIG_IKHEADERS', 'n', 'y'],
    ],
  );
  assert.match(describeUnmet(unmet), /^CONFIG_BRIDGE=y \(openshell\.kconfig\): dropped by kconfig/);
  assert.deepEqual(
    unmetOptions(
      requested,
      `${resolved}\nCONFIG_BRIDGE=y\nCONFIG_LOG_BUF_SHIFT=18\n# CONFIG_IKHEADERS is not set\n`,
    ),
    [],
  );
});
