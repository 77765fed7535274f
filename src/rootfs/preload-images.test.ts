import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  buildLayer,
  pushImage,
  registryMissing,
  startRegistry,
  type TestRegistry,
  writeDockerSave,
} from '../../test/fixtures/registry.ts';
import { HostError } from '../errors.ts';
import { BlobStore } from '../oci/blob-store.ts';
import { platformFor } from '../oci/image.ts';
import { RegistryClient } from '../oci/registry.ts';
import type { GatewayImage } from './default-images.ts';
import { ROOTFS_PATHS } from './layout.ts';
import { archiveImageNames, gatherImages, writeImages } from './preload-images.ts';

/** A docker save archive of a one-file image, named `names`. */
const dockerSave = (file: string, names: readonly string[], data = 'hi') =>
  writeDockerSave(file, names, { data });

const image = (role: GatewayImage['role'], reference: string, pinned?: string): GatewayImage => ({
  role,
  reference,
  pinned,
  source: 'default',
  from: `a test's ${role}`,
});

describe('pre-loading images: pulled and verified before the build, written for k3s', {
  skip: await registryMissing(),
}, () => {
  let registry: TestRegistry;
  let work: string;
  let store: BlobStore;
  let progress: string[];
  const deps = () => ({
    client: async (host: string) => new RegistryClient(host),
    store,
    platform: platformFor('x86_64'),
    progress: (m: string) => progress.push(m),
  });

  before(async () => {
    registry = await startRegistry();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-preload-'));
    for (const repo of ['t/gateway', 't/supervisor', 't/sandbox']) {
      const layer = await buildLayer([{ name: `${repo}.txt`, type: 'file', data: repo }], 'gzip');
      await pushImage(registry.host, repo, [layer], 'amd64', 'v1');
    }
  });
  after(async () => {
    await registry?.stop();
    if (work) await fs.rm(work, { recursive: true, force: true });
  });
  const fresh = async () => {
    store = new BlobStore(await fs.mkdtemp(path.join(work, 'blobs-')));
    progress = [];
  };

  test('each default is pulled with progress, written under the name the guest asks for, and recorded', async () => {
    await fresh();
    const defaults = ['gateway', 'supervisor', 'sandbox'].map((r) =>
      image(r as GatewayImage['role'], `${registry.host}/t/${r}:v1`),
    );
    const gathered = await gatherImages([], defaults, deps());
    assert.ok(
      progress.includes(`pre-loading the gateway image ${registry.host}/t/gateway:v1 (a test's gateway)`),
    );
    assert.ok(
      progress.some((m) => /t\/sandbox:v1: layer 1\/1 downloaded \(0\.0 MiB\)/.test(m)),
      progress.join('\n'),
    );
    const root = await fs.mkdtemp(path.join(work, 'root-'));
    const written = await writeImages(gathered, root, store);
    const files = (await fs.readdir(path.join(root, ROOTFS_PATHS.k3sImages))).sort();
    assert.deepEqual(
      files,
      ['gateway', 'sandbox', 'supervisor'].map(
        (r) => `127.0.0.1_${registry.host.split(':')[1]}_t_${r}_v1.tar`,
      ),
    );
    assert.deepEqual(
      written.images.map((i) => [i.reference, i.source, i.for]),
      ['gateway', 'supervisor', 'sandbox'].map((r) => [`${registry.host}/t/${r}:v1`, 'default', r]),
    );
    for (const [i, entry] of written.images.entries()) {
      assert.match(entry.digest, /^sha256:[0-9a-f]{64}$/);
      assert.equal(written.inputs[i]?.version, entry.digest);
      assert.equal(written.inputs[i]?.path, entry.path);
      // The archive names the image as the kubelet will ask for it.
      assert.deepEqual(await archiveImageNames(path.join(root, entry.path)), [entry.reference]);
    }
  });

  test('a pinned default is pulled by its digest, even after its tag moved; an unknown pin is not taken by tag', async () => {
    await fresh();
    const layer = (data: string) => buildLayer([{ name: 'c', type: 'file', data }], 'gzip');
    const pinned = await pushImage(registry.host, 't/controller', [await layer('pinned')], 'amd64', 'v0.1.0');
    await pushImage(registry.host, 't/controller', [await layer('moved')], 'amd64', 'v0.1.0');
    const reference = `${registry.host}/t/controller:v0.1.0`;
    const gathered = await gatherImages([], [image('agent-sandbox', reference, pinned.digest)], deps());
    const root = await fs.mkdtemp(path.join(work, 'root-'));
    const written = await writeImages(gathered, root, store);
    assert.equal(written.images[0]?.digest, pinned.digest);
    assert.equal(written.images[0]?.reference, reference, 'named by its tag, as the manifest asks for it');
    assert.equal(written.inputs[0]?.source, `${reference}@${pinned.digest}`);
    // A pin the registry does not have is not replaced by whatever the tag names now.
    const unknown = `sha256:${'0'.repeat(64)}`;
    await assert.rejects(
      gatherImages([], [image('agent-sandbox', reference, unknown)], deps()),
      (err: unknown) => err instanceof HostError && err.message.includes(`@${unknown}: not found`),
    );
  });

  test('an --image archive of several images is refused (one is checked, k3s imports all); two written under one name are refused', async () => {
    await fresh();
    const several = path.join(work, 'several.tar');
    await writeDockerSave(several, ['first:1'], { moreEntries: [[`${registry.host}/t/gateway:v1`]] });
    await assert.rejects(
      gatherImages(
        [{ kind: 'archive', path: several }],
        [image('gateway', `${registry.host}/t/gateway:v1`)],
        deps(),
      ),
      /--image .*several\.tar: the archive holds 2 images; only one is checked/,
    );
    const a = path.join(await fs.mkdtemp(path.join(work, 'a-')), 'img.tar');
    const b = path.join(await fs.mkdtemp(path.join(work, 'b-')), 'img.tar');
    await dockerSave(a, ['a:1'], 'a');
    await dockerSave(b, ['b:1'], 'b');
    const gathered = await gatherImages(
      [
        { kind: 'archive', path: a },
        { kind: 'archive', path: b },
      ],
      [],
      deps(),
    );
    const root = await fs.mkdtemp(path.join(work, 'root-'));
    await assert.rejects(writeImages(gathered, root, store), /would both be written as img\.tar/);
  });

  test('an --image archive or oci:REF holding a default under its name replaces its pull', async () => {
    await fresh();
    const archive = path.join(work, 'gw.tar');
    await dockerSave(archive, [`${registry.host}/t/gateway:v1`, 'other:1']);
    const gathered = await gatherImages(
      [
        { kind: 'archive', path: archive },
        { kind: 'oci', ref: `${registry.host}/t/supervisor:v1` },
      ],
      [
        image('gateway', `${registry.host}/t/gateway:v1`),
        image('supervisor', `${registry.host}/t/supervisor:v1`),
      ],
      deps(),
    );
    assert.ok(progress.includes(`gateway image ${registry.host}/t/gateway:v1: given with --image`));
    assert.ok(!progress.some((m) => m.startsWith('pre-loading')), progress.join('\n'));
    const root = await fs.mkdtemp(path.join(work, 'root-'));
    const written = await writeImages(gathered, root, store);
    assert.deepEqual(
      written.images.map((i) => [i.reference, i.source, i.for, path.basename(i.path)]),
      [
        [`${registry.host}/t/gateway:v1`, 'given', 'gateway', 'gw.tar'],
        [
          `${registry.host}/t/supervisor:v1`,
          'given',
          'supervisor',
          `127.0.0.1_${registry.host.split(':')[1]}_t_supervisor_v1.tar`,
        ],
      ],
    );
    // An archive is copied as it is.
    assert.deepEqual(
      await fs.readFile(path.join(root, written.images[0]?.path ?? '')),
      await fs.readFile(archive),
    );
  });

  test('a registry out of reach: every image is named, and the registry is asked once', async () => {
    await fresh();
    // Accepts and hangs up at once: a connection reset, counted.
    let connections = 0;
    const server = net.createServer((socket) => {
      connections++;
      socket.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      const defaults = [
        image('gateway', `${host}/t/gateway:v1`),
        image('supervisor', `${host}/t/supervisor:v1`),
        image('sandbox', `${registry.host}/t/sandbox:v1`), // another registry, reachable: pulled
        image('agent-sandbox', `${host}/t/controller:v0.1.0`, `sha256:${'b'.repeat(64)}`),
      ];
      await assert.rejects(gatherImages([], defaults, deps()), (err: unknown) => {
        assert.ok(err instanceof HostError);
        const lines = err.message.split('\n');
        assert.equal(lines[0], '3 images the gateway runs could not be pulled to pre-load them:');
        assert.deepEqual(
          lines.slice(1).map((l) => l.replace(/\): .*/, ')')),
          [
            `  gateway image ${host}/t/gateway:v1 (a test's gateway)`,
            `  supervisor image ${host}/t/supervisor:v1 (a test's supervisor)`,
            `  agent-sandbox image ${host}/t/controller:v0.1.0 (a test's agent-sandbox)`,
          ],
        );
        assert.match(lines[1] ?? '', new RegExp(`cannot reach ${host}`));
        assert.match(err.hint ?? '', /--image FILE\.tar/);
        assert.match(err.hint ?? '', /--no-images/);
        return true;
      });
      assert.ok(
        connections >= 1 && connections <= 2,
        `one request (fetch may retry a reset once): ${connections}`,
      );
      assert.ok(
        progress.some((m) => m.includes('t/sandbox:v1: layer 1/1 downloaded')),
        'the reachable one was pulled',
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
