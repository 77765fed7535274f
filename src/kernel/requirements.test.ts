import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { readEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import {
  checkKernelConfig,
  parseFragment,
  parseKernelConfig,
  readFragment,
  readKernelConfigFile,
} from './requirements.ts';

test("the fragment holds the seed's 73 options, the 4 later additions, and IKHEADERS unset", async () => {
  const reqs = await readFragment();
  assert.equal(reqs.filter((r) => r.wanted === 'y').length, 77);
  assert.deepEqual(
    reqs.filter((r) => r.wanted === 'n').map((r) => r.option),
    ['CONFIG_IKHEADERS'],
  );
  for (const o of [
    'CONFIG_BRIDGE',
    'CONFIG_NFT_FIB_IPV6',
    'CONFIG_SECURITY_LANDLOCK',
    'CONFIG_POSIX_MQUEUE_SYSCTL',
  ]) {
    assert.ok(
      reqs.some((r) => r.option === o),
      o,
    );
  }
});

const FRAGMENT = parseFragment(
  '# Bridge\nCONFIG_BRIDGE=y\nCONFIG_VETH=y\n\n# NAT\nCONFIG_NF_NAT_MASQUERADE_IPV4=y\nCONFIG_DUMMY=y\n# CONFIG_IKHEADERS is not set\n',
);

test('built in, module, missing; renamed options; unwanted ones', () => {
  const config = parseKernelConfig(
    '#\n# Linux/x86 6.1.0 Kernel Configuration\n#\nCONFIG_BRIDGE=y\nCONFIG_VETH=m\nCONFIG_NF_NAT_MASQUERADE=y\n# CONFIG_DUMMY is not set\nCONFIG_IKHEADERS=m\n',
  );
  const check = checkKernelConfig(FRAGMENT, config, 'test', false);
  assert.equal(check.kernel, 'Linux/x86 6.1.0 Kernel Configuration');
  assert.deepEqual(
    check.results.map((r) => [r.option, r.status, r.via]),
    [
      ['CONFIG_BRIDGE', 'builtin', undefined],
      ['CONFIG_VETH', 'module', undefined],
      ['CONFIG_NF_NAT_MASQUERADE_IPV4', 'builtin', 'CONFIG_NF_NAT_MASQUERADE'],
      ['CONFIG_DUMMY', 'missing', undefined],
    ],
  );
  assert.deepEqual(check.missing, ['CONFIG_DUMMY']);
  assert.deepEqual(check.unwanted, ['CONFIG_IKHEADERS']);
  assert.equal(check.ok, false);
  assert.equal(check.results[0]?.group, 'Bridge');
});

test('modules count unless --builtin', () => {
  const config = parseKernelConfig(
    'CONFIG_BRIDGE=y\nCONFIG_VETH=m\nCONFIG_NF_NAT_MASQUERADE_IPV4=y\nCONFIG_DUMMY=m\n',
  );
  assert.equal(checkKernelConfig(FRAGMENT, config, 't', false).ok, true);
  const strict = checkKernelConfig(FRAGMENT, config, 't', true);
  assert.equal(strict.ok, false);
  assert.deepEqual(strict.modules, ['CONFIG_VETH', 'CONFIG_DUMMY']);
});

test('config files: plain or gzip (/proc/config.gz); missing and non-config files are clear errors', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-kcfg-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'config.gz'), zlib.gzipSync('CONFIG_BRIDGE=y\n'));
  assert.equal(await readKernelConfigFile(path.join(dir, 'config.gz')), 'CONFIG_BRIDGE=y\n');
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'hello\n');
  await assert.rejects(readKernelConfigFile(path.join(dir, 'notes.txt')), /is not a kernel config/);
  await assert.rejects(
    readKernelConfigFile(path.join(dir, 'nope')),
    (e: unknown) =>
      e instanceof HostError && /does not exist/.test(e.message) && /kernel .config/.test(e.hint ?? ''),
  );
});

// The Debian cloud kernels that scripts/provision-host.sh fetches: everything the gateway needs is
// there (NF_NAT_MASQUERADE_IPV4 through its successor), but 49 options are modules, so a
// libkrunfw-style check (--builtin) fails. These are the configs the QEMU backend boots.
const EXPECTED_MODULES = [
  'CONFIG_VETH',
  'CONFIG_BRIDGE',
  'CONFIG_BRIDGE_NETFILTER',
  'CONFIG_NETFILTER_NETLINK',
  'CONFIG_NETFILTER_NETLINK_QUEUE',
  'CONFIG_NETFILTER_NETLINK_LOG',
  'CONFIG_NF_CONNTRACK',
  'CONFIG_NF_CT_NETLINK',
  'CONFIG_NETFILTER_XTABLES',
  'CONFIG_NETFILTER_XT_MATCH_CONNTRACK',
  'CONFIG_NETFILTER_XT_MATCH_COMMENT',
  'CONFIG_NETFILTER_XT_MATCH_MULTIPORT',
  'CONFIG_NETFILTER_XT_MATCH_MARK',
  'CONFIG_NETFILTER_XT_MATCH_STATISTIC',
  'CONFIG_NETFILTER_XT_MATCH_ADDRTYPE',
  'CONFIG_NETFILTER_XT_MATCH_RECENT',
  'CONFIG_NETFILTER_XT_TARGET_MARK',
  'CONFIG_NETFILTER_XT_TARGET_CONNMARK',
  'CONFIG_NETFILTER_XT_MATCH_CONNMARK',
  'CONFIG_NF_NAT',
  'CONFIG_IP_NF_IPTABLES',
  'CONFIG_IP_NF_FILTER',
  'CONFIG_IP_NF_NAT',
  'CONFIG_IP_NF_MANGLE',
  'CONFIG_IP_NF_TARGET_MASQUERADE',
  'CONFIG_IP_NF_TARGET_REJECT',
  'CONFIG_NF_TABLES',
  'CONFIG_NFT_CT',
  'CONFIG_NFT_NAT',
  'CONFIG_NFT_MASQ',
  'CONFIG_NFT_REJECT',
  'CONFIG_NFT_COMPAT',
  'CONFIG_NFT_NUMGEN',
  'CONFIG_NFT_FIB_IPV4',
  'CONFIG_NFT_FIB_IPV6',
  'CONFIG_NFT_LIMIT',
  'CONFIG_NFT_REDIR',
  'CONFIG_NFT_TPROXY',
  'CONFIG_NET_IP_TUNNEL',
  'CONFIG_IP_VS',
  'CONFIG_IP_VS_RR',
  'CONFIG_IP_VS_WRR',
  'CONFIG_IP_VS_SH',
  'CONFIG_NET_SCH_HTB',
  'CONFIG_NET_CLS_CGROUP',
  'CONFIG_DUMMY',
  'CONFIG_TUN',
  'CONFIG_NETFILTER_XT_MATCH_LIMIT',
  'CONFIG_NETFILTER_XT_TARGET_LOG',
];

for (const debArch of ['amd64', 'arm64']) {
  test(`the fetched Debian cloud kernel config (${debArch}): nothing missing, 49 modules`, async (t) => {
    const boot = path.join(readEnvironment().cacheDir, 'host', debArch, 'kernel', 'boot');
    const file = fs.existsSync(boot) ? fs.readdirSync(boot).find((f) => f.startsWith('config-')) : undefined;
    if (!file) {
      t.skip(
        `no ${debArch} kernel in ${boot}: run scripts/provision-host.sh --arch ${debArch === 'amd64' ? 'x86_64' : 'aarch64'}`,
      );
      return;
    }
    const check = checkKernelConfig(
      await readFragment(),
      parseKernelConfig(await readKernelConfigFile(path.join(boot, file))),
      file,
      false,
    );
    assert.deepEqual(check.missing, []);
    assert.deepEqual([...check.modules].sort(), [...EXPECTED_MODULES].sort());
    assert.equal(check.ok, true);
    assert.equal(
      checkKernelConfig(
        await readFragment(),
        parseKernelConfig(await readKernelConfigFile(path.join(boot, file))),
        file,
        true,
      ).ok,
      false,
    );
  });
}
