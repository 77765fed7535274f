import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { archiveImageNames } from '../../src/rootfs/preload-images.ts';
import type { RootfsRecord } from '../../src/rootfs/record.ts';
import {
  buildLayer,
  pushImage,
  registryMissing,
  startRegistry,
  type TestRegistry,
  writeDockerSave,
} from '../fixtures/registry.ts';
import { CHART, mmdebstrapMissing, STAND_IN, STAND_IN_FILES, STAND_IN_SHA } from '../fixtures/stand-in.ts';
import { freePort, ROOT, type Sandbox, sandbox } from './harness.ts';

const missing = mmdebstrapMissing;

const fileSha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');

describe('prepare-rootfs builds a Debian gateway rootfs with mmdebstrap and a stand-in k3s', {
  skip: missing,
}, () => {
  let box: Sandbox;
  let rootfs: string;
  let work: string;
  let imageArchive: string;
  // --no-images: the gateway's own images would come from the network (they are tested below,
  // from a loopback registry); --image still pre-loads.
  const common = ['--k3s', STAND_IN, '--k3s-sha256', STAND_IN_SHA, '--chart', CHART, '--no-images'];

  before(async () => {
    box = sandbox();
    rootfs = path.join(box.dataDir, 'instances', 'gw', 'rootfs');
    work = fs.mkdtempSync(path.join(path.dirname(box.dataDir), 'work-'));
    // An image to pre-load, as docker save writes it.
    imageArchive = path.join(work, 'hello.tar');
    await writeDockerSave(imageArchive, ['hello:1']);
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
        '--no-images',
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

describe("prepare-rootfs pre-loads the gateway's images by default, from a registry on loopback", {
  skip: await registryMissing(),
}, () => {
  let box: Sandbox;
  let registry: TestRegistry;
  let work: string;
  const pushed = new Map<string, string>(); // reference -> manifest digest
  let controllerArchive: string;
  const CONTROLLER = 'registry.k8s.io/agent-sandbox/agent-sandbox-controller:v0.1.0';
  const rootfs = () => path.join(box.dataDir, 'instances', 'img', 'rootfs');
  const record = () =>
    JSON.parse(fs.readFileSync(path.join(rootfs(), 'opt/openshell/rootfs.json'), 'utf8')) as RootfsRecord;
  /** The fixture chart with its supervisor image in `host`'s registry (the chart has no flag for it). */
  const chartAt = (host: string) => {
    const dir = fs.mkdtempSync(path.join(work, 'chart-'));
    fs.cpSync(CHART, dir, { recursive: true });
    const file = path.join(dir, 'values.yaml');
    fs.writeFileSync(
      file,
      fs.readFileSync(file, 'utf8').replace('ghcr.io/nvidia/openshell/supervisor', `${host}/test/supervisor`),
    );
    return dir;
  };
  const build = (host: string, extra: readonly string[] = []) =>
    box.run([
      'prepare-rootfs',
      '--name',
      'img',
      '--force',
      '--base',
      `oci:${registry.host}/test/base:1`,
      '--k3s',
      STAND_IN,
      '--k3s-sha256',
      STAND_IN_SHA,
      '--chart',
      chartAt(host),
      '--gateway-image',
      `${host}/test/gateway:v1`,
      '--sandbox-image',
      `${host}/test/sandbox:1`,
      // The controller's pinned image is on a registry these tests do not reach: given as an
      // archive that holds it under its name, which replaces its pull.
      '--image',
      controllerArchive,
      ...extra,
    ]);

  before(async () => {
    box = sandbox();
    registry = await startRegistry();
    work = fs.mkdtempSync(path.join(path.dirname(box.dataDir), 'work-'));
    const tool = (name: string) => ({ name: `usr/sbin/${name}`, type: 'file' as const, data: '#!/bin/sh\n' });
    await pushImage(
      registry.host,
      'test/base',
      [
        await buildLayer(
          [{ name: 'usr/sbin/', type: 'directory' }, tool('ip'), tool('nft'), tool('iptables')],
          'gzip',
        ),
      ],
      'amd64',
      '1',
    );
    for (const [repo, tag] of [
      ['test/gateway', 'v1'],
      ['test/supervisor', 'v1'],
      ['test/sandbox', '1'],
    ] as const) {
      // Content of this run only, so the blob cache (shared by runs) cannot already hold it.
      const data = `${repo} ${randomUUID()}\n`;
      const layer = await buildLayer([{ name: `${repo}.txt`, type: 'file', data }], 'gzip');
      const m = await pushImage(registry.host, repo, [layer], 'amd64', tag);
      pushed.set(`${registry.host}/${repo}:${tag}`, m.digest);
    }
    // The controller as docker save writes it.
    controllerArchive = path.join(work, 'controller.tar');
    await writeDockerSave(controllerArchive, [CONTROLLER], { name: 'controller', data: 'c' });
  });
  after(async () => {
    await registry?.stop();
    box?.cleanup();
  });

  test('the gateway, supervisor and sandbox images are pulled with progress, verified, put in the airgap directory and recorded', async () => {
    const run = await build(registry.host, ['--json']);
    assert.equal(run.code, 0, run.stderr);
    for (const [reference] of pushed) {
      assert.match(run.stderr, new RegExp(`pre-loading the \\w+ image ${reference.replaceAll('.', '\\.')}`));
      assert.match(run.stderr, new RegExp(`${reference.replaceAll('.', '\\.')}: layer 1/1 downloaded`));
    }
    assert.match(
      run.stderr,
      new RegExp(`agent-sandbox image ${CONTROLLER.replaceAll('.', '\\.')}: given with --image`),
    );
    const printed = JSON.parse(run.stdout.toString()) as RootfsRecord;
    assert.deepEqual(printed, record());
    const images = printed.images ?? [];
    const [gateway, supervisor, sandboxImage] = [...pushed.keys()];
    assert.deepEqual(
      images.map((i) => [i.for, i.reference, i.source]),
      [
        ['agent-sandbox', CONTROLLER, 'given'],
        ['gateway', gateway, 'given'],
        // The supervisor: the chart's repository with --gateway-image's tag.
        ['supervisor', supervisor, 'given'],
        ['sandbox', sandboxImage, 'given'],
      ],
    );
    // Digest verified against the registry's manifests, and recorded.
    for (const i of images.slice(1)) assert.equal(i.digest, pushed.get(i.reference ?? ''), i.reference);
    // Each is an archive in k3s's airgap directory, named as the chart will ask for it.
    const airgap = path.join(rootfs(), 'var/lib/rancher/k3s/agent/images');
    assert.deepEqual(fs.readdirSync(airgap).sort(), images.map((i) => path.basename(i.path)).sort());
    for (const i of images.slice(1)) {
      const names = await archiveImageNames(path.join(rootfs(), i.path));
      assert.deepEqual(names, [i.reference]);
      const input = printed.inputs.find((x) => x.path === i.path);
      assert.deepEqual([input?.kind, input?.version], ['image', i.digest]);
    }
    // And the HelmChart runs exactly these.
    const values = JSON.parse(
      fs.readFileSync(path.join(rootfs(), 'opt/openshell/gateway-values.json'), 'utf8'),
    );
    assert.equal(`${values.image.repository}:${values.image.tag}`, gateway);
    assert.equal(`${values.supervisorImage.repository}:${values.supervisorImage.tag}`, supervisor);
    assert.equal(values.sandboxImage, `${registry.host}/test/sandbox:1`);
  });

  test('--no-images: none of them, --image still pre-loaded', async () => {
    const run = await build(registry.host, ['--no-images']);
    assert.equal(run.code, 0, run.stderr);
    assert.doesNotMatch(run.stderr, /pre-loading the/);
    const r = record();
    assert.deepEqual(
      (r.images ?? []).map((i) => [i.reference, i.source, i.for]),
      [[CONTROLLER, 'given', undefined]],
    );
    const input = r.inputs.find((i) => i.path === r.images?.[0]?.path);
    assert.equal(input?.version, r.images?.[0]?.digest);
    assert.deepEqual(fs.readdirSync(path.join(rootfs(), 'var/lib/rancher/k3s/agent/images')), [
      'controller.tar',
    ]);
  });

  test('a registry that is down: the error names each image and --image FILE as the fix; exit non-zero, the previous rootfs kept', async () => {
    const ok = await build(registry.host);
    assert.equal(ok.code, 0, ok.stderr);
    const before = fs.readFileSync(path.join(rootfs(), 'opt/openshell/rootfs.json'));
    const down = `127.0.0.1:${await freePort()}`;
    const run = await build(down);
    assert.notEqual(run.code, 0, run.stderr);
    const stderr = run.stderr.toString();
    assert.match(stderr, /3 images the gateway runs could not be pulled to pre-load them/);
    for (const [role, reference] of [
      ['gateway', `${down}/test/gateway:v1`],
      ['supervisor', `${down}/test/supervisor:v1`],
      ['sandbox', `${down}/test/sandbox:1`],
    ] as const) {
      assert.match(
        stderr,
        new RegExp(`${role} image ${reference.replaceAll('.', '\\.')} \\(.*\\): cannot reach ${down}`),
      );
    }
    assert.match(stderr, /--image FILE\.tar/);
    assert.match(stderr, /--no-images/);
    assert.deepEqual(fs.readFileSync(path.join(rootfs(), 'opt/openshell/rootfs.json')), before);
    assert.deepEqual(fs.readdirSync(path.dirname(rootfs())), ['rootfs'], 'no temporary tree left');
  });
});
