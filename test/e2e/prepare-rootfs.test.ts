import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packTarBuffer } from '../../src/archive/tar-pack.ts';
import type { RootfsRecord } from '../../src/rootfs/record.ts';
import {
  buildLayer,
  pushImage,
  registryMissing,
  sha256,
  startRegistry,
  type TestRegistry,
} from '../fixtures/registry.ts';
import { CHART, mmdebstrapMissing, STAND_IN, STAND_IN_FILES, STAND_IN_SHA } from '../fixtures/stand-in.ts';
import { ROOT, type Sandbox, sandbox } from './harness.ts';

const missing = mmdebstrapMissing;

const fileSha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');

describe('prepare-rootfs builds a Debian gateway rootfs with mmdebstrap and a stand-in k3s', {
  skip: missing,
}, () => {
  let box: Sandbox;
  let rootfs: string;
  let work: string;
  let imageArchive: string;
  const common = ['--k3s', STAND_IN, '--k3s-sha256', STAND_IN_SHA, '--chart', CHART];

  before(async () => {
    box = sandbox();
    rootfs = path.join(box.dataDir, 'instances', 'gw', 'rootfs');
    work = fs.mkdtempSync(path.join(path.dirname(box.dataDir), 'work-'));
    // An image to pre-load, as docker save writes it.
    const layer = (await buildLayer([{ name: 'hello', type: 'file', data: 'hi' }], 'none')).tar;
    const config = Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [sha256(layer)] },
      }),
    );
    imageArchive = path.join(work, 'hello.tar');
    fs.writeFileSync(
      imageArchive,
      await packTarBuffer([
        { name: `${sha256(config).slice(7)}.json`, type: 'file', data: config },
        { name: 'l1/layer.tar', type: 'file', data: layer },
        {
          name: 'manifest.json',
          type: 'file',
          data: JSON.stringify([
            { Config: `${sha256(config).slice(7)}.json`, RepoTags: ['hello:1'], Layers: ['l1/layer.tar'] },
          ]),
        },
      ]),
    );
    fs.writeFileSync(
      path.join(work, 'extra.yaml'),
      'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: extra\n',
    );
  });
  after(() => box?.cleanup());

  test('the rootfs has the expected layout, modes and build record', { timeout: 600_000 }, async () => {
    const run = await box.run(
      [
        'prepare-rootfs',
        '--name',
        'gw',
        ...common,
        '--image',
        imageArchive,
        '--manifest',
        path.join(work, 'extra.yaml'),
      ],
      { timeoutMs: 580_000 },
    );
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /rootfs ready at/);
    const at = (p: string) => path.join(rootfs, p);
    const k3s = fs.statSync(at('usr/local/bin/k3s'));
    assert.equal(k3s.mode & 0o777, 0o755);
    assert.equal(fileSha(at('usr/local/bin/k3s')), STAND_IN_SHA);
    assert.equal(fs.readlinkSync(at('usr/local/bin/kubectl')), 'k3s');
    assert.equal(
      fs.readFileSync(at('sbin/ovm-init'), 'utf8'),
      fs.readFileSync(path.join(ROOT, 'src/guest/scripts/ovm-init.sh'), 'utf8'),
    );
    assert.equal(fs.statSync(at('usr/local/bin/ovm-check-capabilities')).mode & 0o777, 0o755);
    assert.equal(fs.readlinkSync(at('usr/local/sbin/udhcpc')), '/bin/busybox');
    assert.ok(fs.existsSync(at('var/lib/rancher/k3s/server/static/charts/openshell-0.1.0.tgz')));
    assert.match(
      fs.readFileSync(at('var/lib/rancher/k3s/server/manifests/openshell-helmchart.yaml'), 'utf8'),
      /static\/charts\/openshell-0\.1\.0\.tgz/,
    );
    assert.ok(fs.existsSync(at('var/lib/rancher/k3s/server/manifests/extra.yaml')));
    // The agent-sandbox controller is shipped by default: staged, and deployed like the others.
    for (const dir of ['opt/openshell/manifests', 'var/lib/rancher/k3s/server/manifests']) {
      assert.match(
        fs.readFileSync(at(`${dir}/agent-sandbox.yaml`), 'utf8'),
        /agent-sandbox-controller:v0\.1\.0/,
      );
    }
    assert.ok(fs.existsSync(at('var/lib/rancher/k3s/agent/images/hello.tar')));
    assert.equal(fs.statSync(at('tmp')).mode & 0o7777, 0o1777);
    const modules = fs.readdirSync(at('lib/modules'));
    assert.equal(modules.length, 1);
    assert.ok(fs.existsSync(at(`lib/modules/${modules[0]}/kernel/net/bridge/bridge.ko`)));
    assert.ok(fs.existsSync(at(`lib/modules/${modules[0]}/modules.dep.bin`)));
    if (process.getuid?.() === 0) {
      const shadow = fs.statSync(at('etc/shadow'));
      assert.deepEqual([shadow.mode & 0o777, shadow.uid], [0o640, 0]);
      assert.notEqual(shadow.gid, 0, 'group ownership from the base is kept (shadow)');
    }

    const record = JSON.parse(fs.readFileSync(at('opt/openshell/rootfs.json'), 'utf8')) as RootfsRecord;
    assert.equal(record.base.kind, 'debian');
    assert.deepEqual([...new Set(record.inputs.map((i) => i.kind))].sort(), [
      'base',
      'chart',
      'guest-script',
      'image',
      'k3s',
      'kernel-modules',
      'manifest',
    ]);
    const k3sInput = record.inputs.find((i) => i.kind === 'k3s');
    assert.deepEqual([k3sInput?.sha256, k3sInput?.verification], [STAND_IN_SHA, 'given']);
    for (const pkg of ['busybox-static', 'iptables', 'nftables', 'iproute2', 'kmod', 'sqlite3', 'zstd']) {
      assert.ok(record.packages[pkg], `package ${pkg} is in the base`);
    }
    const image = record.inputs.find((i) => i.kind === 'image');
    assert.equal(image?.sha256, fileSha(imageArchive));

    const info = await box.run(['rootfs', 'info', '--name', 'gw', '--json']);
    assert.equal(info.code, 0, info.stderr);
    assert.deepEqual(JSON.parse(info.stdout.toString()), record);

    const again = await box.run(['prepare-rootfs', '--name', 'gw', ...common]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /is already prepared .* use --force to rebuild it/);
  });

  test('a k3s checksum mismatch is refused and leaves nothing behind; the existing rootfs is untouched', async () => {
    const before = fs.readFileSync(path.join(rootfs, 'opt/openshell/rootfs.json'));
    for (const name of ['fresh', 'gw']) {
      const run = await box.run([
        'prepare-rootfs',
        '--name',
        name,
        '--force',
        ...common.slice(0, 2),
        '--k3s-sha256',
        '0'.repeat(64),
        '--chart',
        CHART,
      ]);
      assert.equal(run.code, 125, run.stderr);
      assert.match(run.stderr, /SHA-256 mismatch \(expected 0{64}/);
      assert.match(run.stderr, /nothing was installed/);
      const dir = path.join(box.dataDir, 'instances', name);
      const left = fs.existsSync(dir) ? fs.readdirSync(dir) : 'no directory';
      assert.deepEqual(left, name === 'gw' ? ['rootfs'] : 'no directory');
    }
    assert.deepEqual(fs.readFileSync(path.join(rootfs, 'opt/openshell/rootfs.json')), before);
  });

  test('a build killed midway (SIGKILL or Ctrl-C) leaves the previous rootfs intact', {
    timeout: 300_000,
  }, async () => {
    const recordFile = path.join(rootfs, 'opt/openshell/rootfs.json');
    const before = fs.readFileSync(recordFile);
    const instanceDir = path.join(box.dataDir, 'instances', 'gw');
    for (const signal of ['SIGKILL', 'SIGINT'] as const) {
      let killed = false;
      const run = await box.run(['prepare-rootfs', '--name', 'gw', '--force', ...common], {
        onEvent: (e, child) => {
          if (!killed && typeof e.message === 'string' && /unpacking the Debian/.test(e.message)) {
            killed = true;
            // Let the unpack get going, so the temporary tree is half written.
            setTimeout(() => child.kill(signal), 1500);
          }
        },
      });
      assert.ok(killed, `the build reached the unpack step: ${run.stderr}`);
      if (signal === 'SIGKILL') {
        assert.equal(run.signal, 'SIGKILL');
        assert.ok(
          fs.readdirSync(instanceDir).some((n) => n.startsWith('rootfs.tmp-')),
          'a killed build leaves its temporary tree (swept by the next build)',
        );
      } else {
        assert.equal(run.code, 130, run.stderr);
        assert.match(run.stderr, /removing rootfs\.tmp-\d+-\w+, left by a build that was killed/);
        assert.match(run.stderr, /SIGINT: stopping the build \(the previous rootfs stays as it was\)/);
        assert.deepEqual(
          fs.readdirSync(instanceDir),
          ['rootfs'],
          'an interrupted build cleans up after itself',
        );
      }
      assert.deepEqual(fs.readFileSync(recordFile), before, `after ${signal}, the previous rootfs is intact`);
      assert.ok(fs.existsSync(path.join(rootfs, 'usr/local/bin/k3s')));
    }
    const next = await box.run(['prepare-rootfs', '--name', 'gw', ...common]);
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stderr, /is already prepared/);
    assert.deepEqual(fs.readdirSync(instanceDir), ['rootfs']);
  });

  test('the prepared rootfs boots: k3s runs and the guest has every capability k3s needs', {
    timeout: 300_000,
  }, async () => {
    const run = await box.run(
      [
        '--rootfs',
        rootfs,
        '--net',
        'none',
        '--exec',
        '/bin/sh',
        '--args',
        '-c',
        'k3s --version && ovm-check-capabilities',
      ],
      { timeoutMs: 280_000 },
    );
    assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
    const out = run.stdout.toString();
    assert.match(out, /k3s version v1\.35\.2\+k3s1 \(stand-in/);
    assert.match(out, /pass {2}bridge /);
    assert.match(out, /pass {2}nftables /);
    assert.match(out, /0 failed/);
    await box.assertClean(run);
  });

  test('a boot refuses a rootfs whose guest scripts differ from the build record, with the rebuild command', async () => {
    const init = path.join(rootfs, 'sbin/ovm-init');
    const original = fs.readFileSync(init);
    fs.appendFileSync(init, '# edited\n');
    try {
      const run = await box.run(['--rootfs', rootfs, '--exec', '/bin/true']);
      assert.equal(run.code, 125);
      assert.match(run.stderr, /\/sbin\/ovm-init in .* was changed or removed after the build/);
      assert.match(run.stderr, /hint: rebuild it: openshell-vm prepare-rootfs --name gw --force/);
    } finally {
      fs.writeFileSync(init, original);
    }
    const record = path.join(rootfs, 'opt/openshell/rootfs.json');
    const saved = fs.readFileSync(record);
    fs.rmSync(record);
    try {
      const run = await box.run(['--rootfs', rootfs, '--exec', '/bin/true']);
      assert.equal(run.code, 125);
      assert.match(run.stderr, /has no build record/);
    } finally {
      fs.writeFileSync(record, saved);
    }
  });

  test('--package installs an extra Debian package into another cached base and records it; an unknown one is refused by name, the rootfs kept', {
    timeout: 900_000,
  }, async () => {
    const pk = path.join(box.dataDir, 'instances', 'pk', 'rootfs');
    const run = await box.run(
      ['prepare-rootfs', '--name', 'pk', ...common, '--package', 'hello', '--package', 'hello'],
      { timeoutMs: 880_000 },
    );
    assert.equal(run.code, 0, run.stderr);
    assert.ok(fs.existsSync(path.join(pk, 'usr/bin/hello')), 'the package is installed');
    const record = JSON.parse(
      fs.readFileSync(path.join(pk, 'opt/openshell/rootfs.json'), 'utf8'),
    ) as RootfsRecord;
    assert.deepEqual(record.extraPackages, ['hello']);
    assert.ok(record.packages.hello, 'dpkg has it');
    const gw = JSON.parse(
      fs.readFileSync(path.join(rootfs, 'opt/openshell/rootfs.json'), 'utf8'),
    ) as RootfsRecord;
    assert.equal(gw.extraPackages, undefined);
    assert.equal(gw.packages.hello, undefined, 'the base without --package has no hello');
    const base = (r: RootfsRecord) => r.inputs.find((i) => i.kind === 'base')?.sha256;
    assert.notEqual(base(record), base(gw), 'another package list is another base');
    const info = await box.run(['rootfs', 'info', '--name', 'pk']);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout.toString(), /with --package hello/);

    const before = fs.readFileSync(path.join(pk, 'opt/openshell/rootfs.json'));
    const unknown = await box.run(
      ['prepare-rootfs', '--name', 'pk', '--force', ...common, '--package', 'ovm-no-such-package'],
      { timeoutMs: 880_000 },
    );
    assert.equal(unknown.code, 2, unknown.stderr);
    assert.match(
      unknown.stderr,
      /no package 'ovm-no-such-package' \(apt: E: Unable to locate package ovm-no-such-package\)/,
    );
    assert.deepEqual(fs.readFileSync(path.join(pk, 'opt/openshell/rootfs.json')), before);
    assert.deepEqual(fs.readdirSync(path.dirname(pk)), ['rootfs']);
  });
});

describe('prepare-rootfs with an OCI base from a registry on loopback', {
  skip: await registryMissing(),
}, () => {
  let box: Sandbox;
  let registry: TestRegistry;
  before(async () => {
    box = sandbox();
    registry = await startRegistry();
    // A base without the gateway's network tools: refused.
    await pushImage(
      registry.host,
      'test/bare',
      [await buildLayer([{ name: 'etc/os-release', type: 'file', data: 'ID=stand-in\n' }], 'gzip')],
      'amd64',
      '1',
    );
    const tool = (name: string) => ({ name: `usr/sbin/${name}`, type: 'file' as const, data: '#!/bin/sh\n' });
    const layers = [
      await buildLayer(
        [
          { name: 'etc/', type: 'directory' },
          { name: 'etc/os-release', type: 'file', data: 'ID=stand-in\n' },
          { name: 'etc/motd', type: 'file', data: 'removed by the next layer' },
          { name: 'sbin', type: 'symlink', linkname: '/usr/sbin' },
          { name: 'usr/sbin/', type: 'directory' },
          tool('ip'),
          tool('nft'),
          tool('iptables'),
        ],
        'gzip',
      ),
      await buildLayer([{ name: 'etc/.wh.motd', type: 'file', data: '' }], 'gzip'),
    ];
    await pushImage(registry.host, 'test/base', layers, 'amd64', '1');
  });
  after(async () => {
    await registry?.stop();
    box?.cleanup();
  });

  test('a base without ip, nft and iptables is refused, naming each and the fix; nothing is left', async () => {
    const run = await box.run([
      'prepare-rootfs',
      '--name',
      'bare',
      '--base',
      `oci:${registry.host}/test/bare:1`,
      ...STAND_IN_FILES,
    ]);
    assert.notEqual(run.code, 0);
    assert.match(
      run.stderr,
      /lacks what the gateway's network needs: ip \(iproute2\), nft \(nftables\), iptables \(iptables\)/,
    );
    assert.match(run.stderr, /--base debian/);
    assert.equal(fs.existsSync(path.join(box.dataDir, 'instances', 'bare')), false);
  });

  test('the image is pulled, unpacked (whiteouts applied, absolute symlinks kept inside) and recorded', async () => {
    const run = await box.run([
      'prepare-rootfs',
      '--name',
      'oci',
      '--base',
      `oci:${registry.host}/test/base:1`,
      ...STAND_IN_FILES,
      '--no-agent-sandbox',
      '--json',
    ]);
    assert.equal(run.code, 0, run.stderr);
    const record = JSON.parse(run.stdout.toString()) as RootfsRecord;
    assert.equal(record.base.kind, 'oci');
    assert.equal(record.base.source, `oci:${registry.host}/test/base:1`);
    assert.ok(!record.warnings.some((w) => /has no ip/.test(w)), record.warnings.join('\n'));
    const rootfs = path.join(box.dataDir, 'instances', 'oci', 'rootfs');
    assert.equal(fs.readFileSync(path.join(rootfs, 'etc/os-release'), 'utf8'), 'ID=stand-in\n');
    assert.equal(fs.existsSync(path.join(rootfs, 'etc/motd')), false);
    // /sbin -> /usr/sbin is absolute: the init went to the rootfs's /usr/sbin, not the host's.
    assert.ok(fs.existsSync(path.join(rootfs, 'usr/sbin/ovm-init')));
    assert.equal(fs.existsSync('/usr/sbin/ovm-init'), false);
    // --no-agent-sandbox: neither staged nor deployed, and not in the record.
    for (const dir of ['opt/openshell/manifests', 'var/lib/rancher/k3s/server/manifests']) {
      assert.equal(fs.existsSync(path.join(rootfs, dir, 'agent-sandbox.yaml')), false, dir);
    }
    assert.ok(!record.inputs.some((i) => i.path?.endsWith('agent-sandbox.yaml')));
  });
});
