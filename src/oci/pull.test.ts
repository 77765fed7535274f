import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import {
  buildLayer,
  pushImage,
  pushManifest,
  registryMissing,
  sha256,
  startRegistry,
  startTokenFront,
  storedBlobPath,
  type TestRegistry,
} from '../../test/fixtures/registry.ts';
import { snapshotTree } from '../../test/fixtures/tree.ts';
import { type PackEntry, packTarBuffer } from '../archive/tar-pack.ts';
import { loadImageArchive } from './archive.ts';
import { BlobStore, DigestMismatchError } from './blob-store.ts';
import { platformFor, pullImage } from './image.ts';
import { writeOciArchive } from './layout-writer.ts';
import { parseImageReference } from './reference.ts';
import { RegistryClient } from './registry.ts';
import { unpackImage } from './unpack.ts';

const owners = process.getuid?.() === 0;
const missing = await registryMissing();

// Layer 1 lays down a tree; layer 2 (zstd) deletes a file with a whiteout, makes a directory
// opaque and adds files; layer 3 (uncompressed) adds a setuid binary.
const LAYER1: PackEntry[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/os-release', type: 'file', data: 'ID=test\n' },
  { name: 'etc/remove-me', type: 'file', data: 'soon gone' },
  { name: 'bin/', type: 'directory' },
  { name: 'bin/tool', type: 'file', mode: 0o755, data: '#!/bin/sh\necho tool\n' },
  { name: 'bin/link', type: 'symlink', linkname: 'tool' },
  { name: 'bin/hard', type: 'link', linkname: 'bin/tool' },
  { name: 'opq/', type: 'directory' },
  { name: 'opq/old', type: 'file', data: 'old' },
];
const LAYER2: PackEntry[] = [
  { name: 'etc/.wh.remove-me', type: 'file', data: '' },
  { name: 'opq/', type: 'directory' },
  { name: 'opq/.wh..wh..opq', type: 'file', data: '' },
  { name: 'opq/new', type: 'file', data: 'new' },
  { name: 'etc/added', type: 'file', mode: 0o600, data: 'added' },
];
const LAYER3: PackEntry[] = [{ name: 'bin/su', type: 'file', mode: 0o4755, data: 'setuid' }];

const EXPECTED_AMD64 = [
  'bin dir 0755',
  'bin/hard file 0755 links=2 "#!/bin/sh\\necho tool\\n"',
  'bin/link symlink -> tool',
  'bin/su file 4755 links=1 "setuid"',
  'bin/tool file 0755 links=2 "#!/bin/sh\\necho tool\\n"',
  'etc dir 0755',
  'etc/added file 0600 links=1 "added"',
  'etc/os-release file 0644 links=1 "ID=test\\n"',
  'opq dir 0755',
  'opq/new file 0644 links=1 "new"',
];

describe('OCI pulls from a real registry on loopback', { skip: missing }, () => {
  let registry: TestRegistry;
  let work: string;
  let indexDigest: string;
  let zstdLayerDigest: string;

  before(async () => {
    registry = await startRegistry();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-pull-'));
    const layers = await Promise.all([
      buildLayer(LAYER1, 'gzip'),
      buildLayer(LAYER2, 'zstd'),
      buildLayer(LAYER3, 'none'),
    ]);
    zstdLayerDigest = `sha256:${createHash('sha256')
      .update((layers[1] as { blob: Buffer }).blob)
      .digest('hex')}`;
    const amd64 = await pushImage(registry.host, 'test/multi', layers, 'amd64');
    const arm64 = await pushImage(
      registry.host,
      'test/multi',
      [await buildLayer([{ name: 'etc/arch', type: 'file', data: 'arm64' }], 'gzip')],
      'arm64',
    );
    // An attestation manifest, as BuildKit adds to indexes: platform unknown/unknown.
    const attestation = await pushImage(
      registry.host,
      'test/multi',
      [await buildLayer([], 'none')],
      'unknown',
    );
    const index = await pushManifest(
      registry.host,
      'test/multi',
      'v1',
      'application/vnd.oci.image.index.v1+json',
      {
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            ...pick(attestation),
            platform: { os: 'unknown', architecture: 'unknown' },
          },
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            ...pick(arm64),
            platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
          },
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            ...pick(amd64),
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      },
    );
    indexDigest = index.digest;
  });
  after(async () => {
    await registry?.stop();
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  const fresh = async (name: string) => {
    const dir = path.join(work, name);
    await fs.mkdir(path.join(dir, 'root'), { recursive: true });
    return { store: new BlobStore(path.join(dir, 'blobs')), root: path.join(dir, 'root') };
  };

  test('a multi-arch index through token auth unpacks to the expected tree for each platform', async () => {
    const front = await startTokenFront(registry.host);
    try {
      const ref = parseImageReference(`${front.host}/test/multi:v1`);
      const client = new RegistryClient(ref.registry);
      const { store, root } = await fresh('amd64');
      const messages: string[] = [];
      const image = await pullImage(client, ref, platformFor('x86_64'), store, (m) => messages.push(m));
      assert.equal(image.layers.length, 3);
      assert.ok(front.tokensIssued() >= 1, 'the client fetched a token');
      assert.ok(
        messages.some((m) => /layer 3\/3 downloaded/.test(m)),
        messages.join('\n'),
      );
      const reports = await unpackImage(image, store, root, { owners });
      assert.equal(reports[1]?.whiteouts, 2);
      assert.deepEqual(await snapshotTree(root), EXPECTED_AMD64);

      const arm = await fresh('arm64');
      const armImage = await pullImage(client, ref, platformFor('aarch64'), arm.store);
      await unpackImage(armImage, arm.store, arm.root, { owners });
      assert.deepEqual(await snapshotTree(arm.root), ['etc dir 0755', 'etc/arch file 0644 links=1 "arm64"']);

      // Pinned by digest: the index digest is checked too.
      const byDigest = await pullImage(
        client,
        parseImageReference(`${front.host}/test/multi@${indexDigest}`),
        platformFor('x86_64'),
        store,
      );
      assert.equal(byDigest.manifest.digest, image.manifest.digest);
    } finally {
      await front.stop();
    }
  });

  test('a tampered blob in the registry is refused and not kept', async () => {
    const stored = storedBlobPath(registry.storage, zstdLayerDigest);
    const original = await fs.readFile(stored);
    const tampered = Buffer.from(original);
    tampered[tampered.length - 5] = (tampered[tampered.length - 5] as number) ^ 0xff;
    await fs.writeFile(stored, tampered);
    try {
      const ref = parseImageReference(`${registry.host}/test/multi:v1`);
      const { store } = await fresh('tampered');
      await assert.rejects(
        pullImage(new RegistryClient(ref.registry), ref, platformFor('x86_64'), store),
        (err: unknown) =>
          err instanceof DigestMismatchError && /does not match its digest/.test((err as Error).message),
      );
      assert.equal(await store.has(zstdLayerDigest), false);
      const leftovers = (await fs.readdir(store.dir)).filter((n) => n.startsWith('.tmp'));
      assert.deepEqual(leftovers, []);
    } finally {
      await fs.writeFile(stored, original);
    }
  });

  test('an unknown tag and an unreachable registry fail with messages that say so', async () => {
    const ref = parseImageReference(`${registry.host}/test/multi:nope`);
    const { store } = await fresh('errors');
    await assert.rejects(
      pullImage(new RegistryClient(ref.registry), ref, platformFor('x86_64'), store),
      /not found in 127\.0\.0\.1/,
    );
    const dead = parseImageReference('127.0.0.1:9/test/multi:v1');
    await assert.rejects(
      pullImage(new RegistryClient(dead.registry), dead, platformFor('x86_64'), store),
      /cannot reach 127\.0\.0\.1:9/,
    );
  });

  test('an image written as an OCI layout tarball loads back to the same tree', async () => {
    const ref = parseImageReference(`${registry.host}/test/multi:v1`);
    const { store } = await fresh('layout');
    const image = await pullImage(new RegistryClient(ref.registry), ref, platformFor('x86_64'), store);
    const archive = path.join(work, 'image.oci.tar');
    await writeOciArchive(image, store, `${registry.host}/test/multi:v1`, archive);
    const other = await fresh('layout-reload');
    const loaded = await loadImageArchive(archive, other.store, platformFor('x86_64'));
    assert.equal(loaded.manifest.digest, image.manifest.digest);
    await unpackImage(loaded, other.store, other.root, { owners });
    assert.deepEqual(await snapshotTree(other.root), EXPECTED_AMD64);
  });
});

test('a docker save tarball (legacy layout, symlinked layer) loads and unpacks; a wrong architecture is refused', async (t) => {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-save-'));
  t.after(() => fs.rm(work, { recursive: true, force: true }));
  const l1 = (await buildLayer(LAYER1, 'none')).tar;
  const l2 = (await buildLayer(LAYER2, 'none')).tar;
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [sha256(l1), sha256(l2), sha256(l1)] },
    }),
  );
  const configName = `${sha256(config).slice(7)}.json`;
  const save = await packTarBuffer([
    { name: configName, type: 'file', data: config },
    { name: 'aaa/layer.tar', type: 'file', data: l1 },
    { name: 'bbb/layer.tar', type: 'file', data: l2 },
    { name: 'ccc/layer.tar', type: 'symlink', linkname: '../aaa/layer.tar' },
    {
      name: 'manifest.json',
      type: 'file',
      data: JSON.stringify([
        {
          Config: configName,
          RepoTags: ['test:1'],
          Layers: ['aaa/layer.tar', 'bbb/layer.tar', 'ccc/layer.tar'],
        },
      ]),
    },
  ]);
  const file = path.join(work, 'save.tar.zst');
  await fs.writeFile(file, zstdCompressSync(save));
  const store = new BlobStore(path.join(work, 'blobs'));
  const image = await loadImageArchive(file, store, platformFor('x86_64'));
  assert.equal(image.layers.length, 3);
  const root = path.join(work, 'root');
  await fs.mkdir(root);
  await unpackImage(image, store, root, { owners });
  const tree = await snapshotTree(root);
  assert.ok(tree.includes('etc/added file 0600 links=1 "added"'), tree.join('\n'));
  assert.ok(
    tree.includes('etc/remove-me file 0644 links=1 "soon gone"'),
    'the third layer (layer 1 again) restores it',
  );
  await assert.rejects(
    loadImageArchive(file, store, platformFor('aarch64')),
    /linux\/amd64 image, but the guest is linux\/arm64/,
  );
  // A config that does not hash to its file name is refused.
  const forged = await packTarBuffer([
    { name: `${'0'.repeat(64)}.json`, type: 'file', data: config },
    {
      name: 'manifest.json',
      type: 'file',
      data: JSON.stringify([{ Config: `${'0'.repeat(64)}.json`, Layers: [] }]),
    },
  ]);
  await fs.writeFile(path.join(work, 'forged.tar'), forged);
  await assert.rejects(
    loadImageArchive(path.join(work, 'forged.tar'), store, platformFor('x86_64')),
    /does not hash to its name/,
  );
});

function pick(d: { digest: string; size: number }) {
  return { digest: d.digest, size: d.size };
}
