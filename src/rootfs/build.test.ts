// prepare-rootfs end to end but fast: the base is a tiny image from a local registry (no mmdebstrap,
// no VM), k3s the stand-in, the chart the fixture. What is checked: the agent-sandbox controller is
// staged by default and left out with --no-agent-sandbox, the record says which, and a chart that
// lacks a value the HelmChart sets is refused before anything is built.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { type Sandbox, sandbox } from '../../test/e2e/harness.ts';
import {
  buildLayer,
  pushImage,
  registryMissing,
  startRegistry,
  type TestRegistry,
} from '../../test/fixtures/registry.ts';
import { CHART, STAND_IN, STAND_IN_SHA } from '../../test/fixtures/stand-in.ts';
import { AGENT_SANDBOX_FILE, agentSandboxManifest } from './agent-sandbox.ts';
import { ROOTFS_PATHS } from './layout.ts';
import type { RootfsRecord } from './record.ts';

describe('prepare-rootfs: agent-sandbox and the chart values check', {
  skip: await registryMissing(),
}, () => {
  let box: Sandbox;
  let registry: TestRegistry;
  let work: string;
  let build: (extra: readonly string[], chart?: string) => ReturnType<Sandbox['run']>;
  const rootfs = () => path.join(box.dataDir, 'instances', 'gw', 'rootfs');
  const at = (rel: string) => path.join(rootfs(), rel);
  const record = () => JSON.parse(fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8')) as RootfsRecord;
  const staged = [
    `${ROOTFS_PATHS.stagedManifests}/${AGENT_SANDBOX_FILE}`,
    `${ROOTFS_PATHS.k3sManifests}/${AGENT_SANDBOX_FILE}`,
  ];

  before(async () => {
    box = sandbox();
    registry = await startRegistry();
    work = fs.mkdtempSync(path.join(box.dataDir, '..', 'work-'));
    const layer = await buildLayer(
      [
        { name: 'etc/', type: 'directory' },
        { name: 'etc/os-release', type: 'file', data: 'ID=tiny\n' },
        { name: 'usr/', type: 'directory' },
        { name: 'usr/sbin/', type: 'directory' },
        // The gateway's network tools, so the build gets past its check.
        ...['ip', 'nft', 'iptables'].map((tool) => ({
          name: `usr/sbin/${tool}`,
          type: 'file' as const,
          data: '#!/bin/sh\n',
        })),
      ],
      'gzip',
    );
    await pushImage(registry.host, 'tiny/base', [layer], 'amd64', '1');
    build = (extra, chart = CHART) =>
      box.run([
        'prepare-rootfs',
        '--name',
        'gw',
        '--force',
        '--base',
        `oci:${registry.host}/tiny/base:1`,
        '--k3s',
        STAND_IN,
        '--k3s-sha256',
        STAND_IN_SHA,
        '--chart',
        chart,
        // The gateway's images are pre-loaded by default; these builds test the rest (test/e2e/
        // prepare-rootfs.test.ts pre-loads them from a loopback registry).
        '--no-images',
        ...extra,
      ]);
  });
  after(async () => {
    await registry?.stop();
    box?.cleanup();
  });

  test('by default the controller is staged and deployed, and the record lists it', async () => {
    const run = await build([]);
    assert.equal(run.code, 0, run.stderr);
    const want = await agentSandboxManifest();
    for (const rel of staged) assert.equal(fs.readFileSync(at(rel), 'utf8'), want, rel);
    const inputs = record().inputs.filter((i) => i.path === staged[1]);
    assert.equal(inputs.length, 1);
    assert.equal(inputs[0]?.kind, 'manifest');
    assert.match(inputs[0]?.source ?? '', /agent-sandbox-controller:v0\.1\.0/);
  });

  test('--no-agent-sandbox leaves it out, and the record says so by not listing it', async () => {
    const run = await build(['--no-agent-sandbox']);
    assert.equal(run.code, 0, run.stderr);
    for (const rel of staged) assert.equal(fs.existsSync(at(rel)), false, rel);
    assert.deepEqual(
      record().inputs.filter((i) => i.path?.endsWith(AGENT_SANDBOX_FILE)),
      [],
    );
    // The rest of the gateway is still there.
    assert.ok(fs.existsSync(at(`${ROOTFS_PATHS.k3sManifests}/openshell-helmchart.yaml`)));
  });

  test("by default the chart's images run: the gateway and supervisor tagged with its appVersion", async () => {
    const run = await build([]);
    assert.equal(run.code, 0, run.stderr);
    const values = JSON.parse(fs.readFileSync(at(ROOTFS_PATHS.gatewayValues), 'utf8'));
    // The fixture chart: image.tag and supervisor.image.tag are "", appVersion is "test".
    assert.deepEqual(values.image, { repository: 'ghcr.io/nvidia/openshell/gateway', tag: 'test' });
    assert.deepEqual(values.supervisorImage, {
      repository: 'ghcr.io/nvidia/openshell/supervisor',
      tag: 'test',
    });
    assert.equal(values.sandboxImage, 'ghcr.io/nvidia/openshell-community/sandboxes/base:latest');
    // --no-images: nothing pre-loaded, and the record says so.
    assert.deepEqual(record().images, []);
    assert.deepEqual(fs.readdirSync(at(ROOTFS_PATHS.k3sImages)), []);
  });

  test('--gateway-image R:T runs the supervisor of the same tag, as the chart pairs them', async () => {
    const run = await build(['--gateway-image', 'example.test/own/gateway:v9']);
    assert.equal(run.code, 0, run.stderr);
    const values = JSON.parse(fs.readFileSync(at(ROOTFS_PATHS.gatewayValues), 'utf8'));
    assert.deepEqual(values.image, { repository: 'example.test/own/gateway', tag: 'v9' });
    assert.deepEqual(values.supervisorImage, {
      repository: 'ghcr.io/nvidia/openshell/supervisor',
      tag: 'v9',
    });
    const helm = YAML.parse(
      fs.readFileSync(at(`${ROOTFS_PATHS.k3sManifests}/openshell-helmchart.yaml`), 'utf8'),
    );
    assert.equal(YAML.parse(helm.spec.valuesContent).supervisor.image.tag, 'v9');
  });

  test('a --manifest named agent-sandbox.yaml is refused unless --no-agent-sandbox', async () => {
    const own = path.join(work, AGENT_SANDBOX_FILE);
    fs.writeFileSync(own, 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mine\n');
    const refused = await build(['--manifest', own]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /agent-sandbox\.yaml is the name of the agent-sandbox controller/);
    const run = await build(['--manifest', own, '--no-agent-sandbox']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(fs.readFileSync(at(staged[1] ?? ''), 'utf8'), /name: mine/);
  });

  test('--package: refused with an oci: base (fix: --base debian), a bad name refused naming it; the rootfs stays', async () => {
    const ok = await build([]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(record().extraPackages, undefined, 'no --package, no extraPackages in the record');
    const before = fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8');
    const refused = await build(['--package', 'hello']);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /--package hello: a --base oci: image is unpacked as it is/);
    assert.match(refused.stderr, /--base debian/);
    const bad = await build(['--package', 'Hello_World']);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /--package "Hello_World": not a Debian package name: lowercase letters/);
    // Checked even when the rootfs is already prepared (no --force): never ignored.
    const kept = await box.run(['prepare-rootfs', '--name', 'gw', '--package', 'x']);
    assert.equal(kept.code, 2, kept.stderr);
    assert.match(kept.stderr, /--package "x": not a Debian package name/);
    assert.equal(fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8'), before);
  });

  test('a chart without a value the HelmChart sets is refused, naming it; the previous rootfs stays', async () => {
    const before = fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8');
    const drifted = path.join(work, 'chart');
    fs.cpSync(CHART, drifted, { recursive: true });
    const values = YAML.parse(fs.readFileSync(path.join(drifted, 'values.yaml'), 'utf8'));
    delete values.server.sandboxImagePullPolicy;
    fs.writeFileSync(path.join(drifted, 'values.yaml'), YAML.stringify(values));
    const run = await build([], drifted);
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /has no value server\.sandboxImagePullPolicy in its values\.yaml/);
    assert.match(run.stderr, /openshell-helmchart\.yaml/);
    assert.equal(fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8'), before);
  });

  test('--preinit whose boot instance exists is refused before the build; the previous rootfs stays', async () => {
    const before = fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8');
    const alone = await build(['--preinit-timeout', '30']);
    assert.equal(alone.code, 2, alone.stderr);
    assert.match(alone.stderr, /--preinit-timeout without --preinit/);
    // The preinit boots as instance gw-preinit: one of that name exists, so it is refused (its
    // directory would be removed afterwards), before anything is built.
    fs.mkdirSync(path.join(box.dataDir, 'instances', 'gw-preinit'), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(box.dataDir, 'instances', 'gw-preinit', 'theirs'), 'x');
    const run = await build(['--preinit']);
    assert.equal(run.code, 2, run.stderr);
    assert.match(
      run.stderr,
      /--preinit boots the rootfs as instance 'gw-preinit', and an instance of that name exists/,
    );
    assert.doesNotMatch(run.stderr, /installing k3s/, 'refused before the build');
    assert.equal(fs.readFileSync(at(ROOTFS_PATHS.record), 'utf8'), before);
    assert.equal(fs.readFileSync(path.join(box.dataDir, 'instances', 'gw-preinit', 'theirs'), 'utf8'), 'x');
    assert.deepEqual(
      fs.readdirSync(path.join(box.dataDir, 'instances', 'gw')).filter((n) => n.startsWith('rootfs.')),
      [],
      'no temporary tree left',
    );
  });
});
