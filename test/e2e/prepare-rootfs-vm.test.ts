import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readHostAptSources } from '../../src/rootfs/apt-sources.ts';
import { missingNetworkTools } from '../../src/rootfs/debian-builder.ts';
import type { RootfsRecord } from '../../src/rootfs/record.ts';
import { debianBuilderImageArchive } from '../fixtures/builder-image.ts';
import { mmdebstrapMissing, STAND_IN_FILES } from '../fixtures/stand-in.ts';
import { type Sandbox, sandbox } from './harness.ts';

/**
 * prepare-rootfs --debian-builder vm, for real: the Debian base is built by mmdebstrap inside a
 * microVM openshell-vm boots (gvproxy network, the host's Debian mirror), its tar streamed out
 * through the guest agent. No container registry is reachable here, so the builder image is made
 * from local inputs (this host's mmdebstrap, packed as a docker save archive). Under TCG this takes
 * several minutes: gated.
 */
const gate =
  process.env.OPENSHELL_VM_E2E_VM_BUILDER === '1'
    ? mmdebstrapMissing
    : 'set OPENSHELL_VM_E2E_VM_BUILDER=1 to build a Debian base inside a microVM (several minutes under TCG; needs mmdebstrap on this host for the local builder image, and this host reaching its Debian mirror)';

const fileSha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');

describe('prepare-rootfs builds its Debian base inside a microVM', { skip: gate }, () => {
  let box: Sandbox;
  let builderImage: string;
  let mirror: string;
  let tarball: string | undefined;

  before(async () => {
    box = sandbox();
    const sources = (await readHostAptSources()).filter((s) => s.components.includes('main'));
    const main = sources.find((s) => !s.suites.some((x) => /security/.test(x))) ?? sources[0];
    assert.ok(main, 'this host has Debian apt sources');
    mirror = main.uri;
    const fixtures = path.join(path.dirname(box.dataDir), 'fixtures');
    fs.mkdirSync(fixtures, { recursive: true });
    builderImage = await debianBuilderImageArchive(fixtures, 'bookworm', 'amd64', [
      `deb ${mirror} bookworm main`,
    ]);
  });
  after(() => {
    // The base this test built (its key is --mirror's: other builds do not share it).
    if (tarball)
      for (const f of [tarball, `${tarball}.sha256`, `${tarball}.builder`]) fs.rmSync(f, { force: true });
    box?.cleanup();
  });

  test('the base comes from the builder VM, is recorded with its builder, and has the network tools', {
    timeout: 1_500_000,
  }, async () => {
    const t0 = performance.now();
    const run = await box.run(
      [
        'prepare-rootfs',
        '--name',
        'gw',
        ...STAND_IN_FILES,
        '--base',
        'debian:bookworm',
        '--mirror',
        mirror,
        '--debian-builder',
        'vm',
        '--builder-image',
        `archive:${builderImage}`,
        '--json',
      ],
      { timeoutMs: 1_450_000 },
    );
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(run.code, 0, run.stderr);
    process.stderr.write(`# prepare-rootfs with the vm builder: ${seconds.toFixed(1)} s\n`);
    assert.match(run.stderr, /building the Debian bookworm amd64 base in a microVM/);
    assert.match(run.stderr, /booting the builder microVM/);
    assert.match(run.stderr, /builder: /, "mmdebstrap's progress lines come through");
    const record = JSON.parse(run.stdout.toString('utf8')) as RootfsRecord;
    const base = record.inputs.find((i) => i.kind === 'base');
    assert.ok(base);
    assert.match(
      base.source,
      /^mmdebstrap bookworm by microVM from \S+\.docker\.tar \(sha256:[0-9a-f]{64}\) \(deb /,
    );
    const rootfs = path.join(box.dataDir, 'instances', 'gw', 'rootfs');
    assert.deepEqual(await missingNetworkTools(rootfs), []);
    for (const pkg of ['iproute2', 'nftables', 'iptables', 'busybox-static'])
      assert.ok(record.packages[pkg], pkg);
    // The cached tar is the one recorded.
    const cacheBases = path.join(
      process.env.OPENSHELL_VM_CACHE_DIR ||
        path.join(process.env.XDG_CACHE_HOME || path.join(process.env.HOME ?? '', '.cache'), 'openshell-vm'),
      'rootfs-bases',
    );
    const name = fs
      .readdirSync(cacheBases)
      .find(
        (f) =>
          f.endsWith('.tar') &&
          fs.existsSync(path.join(cacheBases, `${f}.builder`)) &&
          fs.readFileSync(path.join(cacheBases, `${f}.builder`), 'utf8').includes('microVM') &&
          fs.readFileSync(path.join(cacheBases, `${f}.sha256`), 'utf8').trim() === base.sha256,
      );
    assert.ok(name, 'the cache holds the tar the record names');
    tarball = path.join(cacheBases, name);
    assert.equal(fileSha(tarball), base.sha256);
    // The builder VM is gone and left no socket or run directory.
    await box.assertClean(run, 'debian-builder');
  });
});
