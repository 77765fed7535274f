// Image → host during prepare-rootfs: an OCI base image whose layer plants symlinks at the very
// names the build writes afterwards (k3s, its links, the chart, the staged HelmChart, the values,
// the build record). The build must replace each link with a new file inside the rootfs, never
// write through it to the host file it names.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOTFS_PATHS } from '../../src/rootfs/layout.ts';
import { type Sandbox, sandbox } from '../e2e/harness.ts';
import {
  buildLayer,
  pushImage,
  registryMissing,
  startRegistry,
  type TestRegistry,
} from '../fixtures/registry.ts';
import { STAND_IN_FILES } from '../fixtures/stand-in.ts';

const PLANTED = [
  ROOTFS_PATHS.k3sBinary,
  ROOTFS_PATHS.kubectl,
  `${ROOTFS_PATHS.k3sCharts}/openshell-0.1.0.tgz`,
  ROOTFS_PATHS.stagedHelmChart,
  ROOTFS_PATHS.gatewayValues,
  ROOTFS_PATHS.record,
] as const;

describe('an image layer planting symlinks where prepare-rootfs writes', {
  skip: await registryMissing(),
}, () => {
  let box: Sandbox;
  let registry: TestRegistry;
  let decoys: string;
  before(async () => {
    box = sandbox();
    registry = await startRegistry();
    decoys = fs.mkdtempSync(path.join(box.dataDir, '..', 'host-decoys-'));
    const dirs = new Set<string>(['usr/', 'usr/sbin/']);
    for (const rel of PLANTED) {
      for (let d = path.dirname(rel); d !== '.'; d = path.dirname(d)) dirs.add(`${d}/`);
    }
    const entries = [
      ...[...dirs].sort().map((name) => ({ name, type: 'directory' as const })),
      { name: 'etc/', type: 'directory' as const },
      { name: 'etc/os-release', type: 'file' as const, data: 'ID=hostile\n' },
      // The gateway's network tools, so the build gets past its check to the writes under test.
      ...['ip', 'nft', 'iptables'].map((tool) => ({
        name: `usr/sbin/${tool}`,
        type: 'file' as const,
        data: '#!/bin/sh\n',
      })),
      ...PLANTED.map((rel, i) => {
        const decoy = path.join(decoys, `decoy-${i}`);
        fs.writeFileSync(decoy, `host file ${i}\n`, { mode: 0o600 });
        return { name: rel, type: 'symlink' as const, linkname: decoy };
      }),
    ];
    await pushImage(registry.host, 'hostile/base', [await buildLayer(entries, 'gzip')], 'amd64', '1');
  });
  after(async () => {
    await registry?.stop();
    box?.cleanup();
  });

  test('k3s, the chart, the HelmChart, the values and the record replace the links; no host file is written', async () => {
    const run = await box.run([
      'prepare-rootfs',
      '--name',
      'hostile',
      '--base',
      `oci:${registry.host}/hostile/base:1`,
      ...STAND_IN_FILES,
    ]);
    assert.equal(run.code, 0, run.stderr);
    PLANTED.forEach((_rel, i) => {
      const decoy = path.join(decoys, `decoy-${i}`);
      assert.equal(fs.readFileSync(decoy, 'utf8'), `host file ${i}\n`, `${decoy} was written through`);
      assert.equal(fs.statSync(decoy).mode & 0o7777, 0o600, `${decoy} changed mode`);
    });
    const rootfs = path.join(box.dataDir, 'instances', 'hostile', 'rootfs');
    for (const rel of [ROOTFS_PATHS.k3sBinary, ROOTFS_PATHS.stagedHelmChart, ROOTFS_PATHS.record]) {
      assert.ok(fs.lstatSync(path.join(rootfs, rel)).isFile(), `${rel} is not a regular file in the rootfs`);
    }
    assert.equal(fs.readlinkSync(path.join(rootfs, ROOTFS_PATHS.kubectl)), 'k3s');
  });
});
