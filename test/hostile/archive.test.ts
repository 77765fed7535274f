/**
 * Hostile image layers and archives (issue 13, item 6): each test builds its archive here with
 * tar-stream, extracts it into `<base>/root`, and checks that the sibling `<base>/host` (a file, a
 * directory with a child) and `<base>` itself are untouched: existence, type, mode, owner, mtime,
 * content, link count.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { extractTar } from '../../src/archive/tar-extract.ts';
import { HostError } from '../../src/errors.ts';
import { BlobStore } from '../../src/oci/blob-store.ts';
import type { ImageHandle } from '../../src/oci/image.ts';
import { unpackImage } from '../../src/oci/unpack.ts';

interface Member {
  readonly name: string;
  readonly type?: 'file' | 'directory' | 'symlink' | 'link';
  readonly mode?: number;
  readonly linkname?: string;
  readonly data?: string;
}

/** A tar of `members` in this order, names written exactly as given. */
async function hostileTar(members: readonly Member[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  for (const m of members) {
    const type = m.type ?? 'file';
    const header = {
      name: m.name,
      type,
      mode: m.mode ?? (type === 'directory' ? 0o755 : 0o644),
      mtime: new Date(0),
      uid: 0,
      gid: 0,
      ...(m.linkname === undefined ? {} : { linkname: m.linkname }),
    };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, Buffer.from(m.data ?? ''), cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

interface Scene {
  readonly base: string;
  readonly root: string;
  readonly host: string;
  readonly hostFile: string;
  readonly hostDir: string;
  /** Extracts `members` into the root (layer semantics by default). */
  extract(members: readonly Member[], layer?: boolean): Promise<unknown>;
  /** Asserts that nothing outside the root changed since the scene was set up. */
  assertHostUntouched(): Promise<void>;
}

async function scene(t: { after: (fn: () => Promise<void>) => void }): Promise<Scene> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-hostile-archive-'));
  t.after(async () => {
    await fs.chmod(base, 0o700).catch(() => undefined);
    await fs.rm(base, { recursive: true, force: true });
  });
  const root = path.join(base, 'root');
  const host = path.join(base, 'host');
  const hostFile = path.join(host, 'file');
  const hostDir = path.join(host, 'dir');
  await fs.mkdir(root);
  await fs.mkdir(hostDir, { recursive: true });
  await fs.writeFile(hostFile, 'host secret\n', { mode: 0o644 });
  await fs.writeFile(path.join(hostDir, 'child'), 'host child\n', { mode: 0o640 });
  for (const p of [hostFile, path.join(hostDir, 'child'), hostDir, host]) {
    await fs.utimes(p, new Date(1_000_000_000_000), new Date(1_000_000_000_000));
  }
  await fs.chmod(hostFile, 0o644);
  await fs.chmod(hostDir, 0o750);
  const before = await snapshot(base, root);
  return {
    base,
    root,
    host,
    hostFile,
    hostDir,
    async extract(members, layer = true) {
      return extractTar(Readable.from([await hostileTar(members)]), {
        root,
        layer,
        owners: process.getuid?.() === 0,
        label: 'hostile layer',
      });
    },
    async assertHostUntouched() {
      assert.deepEqual(await snapshot(base, root), before, 'something outside the extraction root changed');
    },
  };
}

/** Every path under `base` except inside `root`, with what an attack could change about it. */
async function snapshot(base: string, root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const visit = async (p: string): Promise<void> => {
    let st: Awaited<ReturnType<typeof fs.lstat>>;
    try {
      st = await fs.lstat(p);
    } catch {
      out[p] = 'missing';
      return;
    }
    const kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other';
    const content = st.isFile() ? await fs.readFile(p, 'utf8') : '';
    out[p] =
      `${kind} mode=${(st.mode & 0o7777).toString(8)} uid=${st.uid} gid=${st.gid} nlink=${st.nlink} ` +
      `mtime=${p === base ? '-' : st.mtimeMs} ${JSON.stringify(content)}`;
    if (st.isDirectory() && p !== root) {
      for (const name of (await fs.readdir(p)).sort()) await visit(path.join(p, name));
    }
  };
  await visit(base);
  out[root] = (await fs.lstat(root).catch(() => undefined))?.isDirectory()
    ? 'root is a directory'
    : 'root lost';
  return out;
}

// --- The two reproduced attacks -------------------------------------------------------------

test('deferred directory metadata: a directory d (04777) then a symlink d -> host file does not chmod the host file', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'd/', type: 'directory', mode: 0o4777 },
    { name: 'd', type: 'symlink', linkname: s.hostFile },
  ]);
  await s.assertHostUntouched();
  assert.equal(await fs.readlink(path.join(s.root, 'd')), s.hostFile);
});

test('deferred directory metadata: a directory d then a relative symlink d -> ../host/dir does not chmod or touch the host dir', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'd/', type: 'directory', mode: 0o6777 },
    { name: 'd', type: 'symlink', linkname: '../host/dir' },
  ]);
  await s.assertHostUntouched();
});

test('deferred directory metadata: a parent a/ replaced by a symlink a -> host after a/dir/ (04777) does not reach host/dir', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'a/', type: 'directory' },
    { name: 'a/dir/', type: 'directory', mode: 0o4777 },
    { name: 'a', type: 'symlink', linkname: s.host },
  ]);
  await s.assertHostUntouched();
});

test('deferred directory metadata: a directory later replaced by a file does not make the file setuid', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'x/', type: 'directory', mode: 0o6777 },
    { name: 'x', type: 'file', mode: 0o755, data: '#!/bin/sh\n' },
  ]);
  assert.equal((await fs.lstat(path.join(s.root, 'x'))).mode & 0o7777, 0o755);
  await s.assertHostUntouched();
});

for (const name of ['.wh...', '.wh..', '.wh.', 'sub/.wh...', 'sub/.wh..', '.wh./x', 'sub/.wh../x']) {
  test(`whiteout member '${name}' is refused by name and removes nothing (not the root, not its parent)`, async (t) => {
    const s = await scene(t);
    await s.extract([
      { name: 'sub/', type: 'directory' },
      { name: 'sub/keep', data: 'lower layer' },
    ]);
    const outcome = await s.extract([{ name }]).then(
      () => undefined,
      (err: unknown) => err,
    );
    await s.assertHostUntouched();
    assert.equal(await fs.readFile(path.join(s.root, 'sub/keep'), 'utf8'), 'lower layer');
    assert.ok(outcome instanceof HostError, `expected a HostError, got ${String(outcome)}`);
    assert.ok(outcome.message.includes(`'${name}'`), `the error names the member: ${outcome.message}`);
  });
}

// --- The containerd/umoci hardening list ---------------------------------------------------

test('absolute member names land inside the root', async (t) => {
  const s = await scene(t);
  await s.extract([{ name: s.hostFile, mode: 0o4755, data: 'evil' }], false);
  await s.assertHostUntouched();
  assert.equal(await fs.readFile(path.join(s.root, s.hostFile), 'utf8'), 'evil');
});

for (const name of ['../host/file', 'a/../../host/file', 'a/b/../../../host/file', './..', 'a/..']) {
  test(`a member with '..' anywhere ('${name}') is refused`, async (t) => {
    const s = await scene(t);
    await assert.rejects(s.extract([{ name, data: 'evil' }]), /climbs out of the root/);
    await s.assertHostUntouched();
  });
}

test('a file written through an absolute symlink to the host dir stays inside the root', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'l', type: 'symlink', linkname: s.host },
    { name: 'l/file', mode: 0o4755, data: 'evil' },
    { name: 'l/dir/child', data: 'evil' },
  ]);
  await s.assertHostUntouched();
  assert.equal(await fs.readFile(path.join(s.root, s.host, 'file'), 'utf8'), 'evil');
});

test('a file written through a relative symlink climbing out of the root stays inside it', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'deep/l', type: 'symlink', linkname: '../../../../../../host' },
    { name: 'deep/l/file', data: 'evil' },
  ]);
  await s.assertHostUntouched();
  assert.equal(await fs.readFile(path.join(s.root, 'host/file'), 'utf8'), 'evil');
});

test('a file written through a chain of symlinks ending outside the root stays inside it', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'a', type: 'symlink', linkname: 'b' },
    { name: 'b', type: 'symlink', linkname: 'c/..//c' },
    { name: 'c', type: 'symlink', linkname: '../host' },
    { name: 'a/file', data: 'evil' },
  ]);
  await s.assertHostUntouched();
  assert.equal(await fs.readFile(path.join(s.root, 'host/file'), 'utf8'), 'evil');
});

test('a symlink loop is refused, not followed', async (t) => {
  const s = await scene(t);
  await assert.rejects(
    s.extract([
      { name: 'a', type: 'symlink', linkname: 'b' },
      { name: 'b', type: 'symlink', linkname: 'a' },
      { name: 'a/file', data: 'evil' },
    ]),
    /too many levels of symbolic links/,
  );
  await s.assertHostUntouched();
});

test('a symlink replacing a parent directory later in the stream does not redirect later members outside', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'd/', type: 'directory' },
    { name: 'd/x', data: 'x' },
    { name: 'd', type: 'symlink', linkname: '../host' },
    { name: 'd/file', data: 'evil' },
    { name: 'd/dir/', type: 'directory', mode: 0o777 },
  ]);
  await s.assertHostUntouched();
});

test('a hard link to a symlink that points at a host file links the symlink, never the host file', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 's', type: 'symlink', linkname: s.hostFile },
    { name: 'h', type: 'link', linkname: 's' },
  ]);
  await s.assertHostUntouched();
  const h = await fs.lstat(path.join(s.root, 'h'));
  assert.ok(h.isSymbolicLink(), 'h is a link to the symlink, not to what it points at');
});

for (const linkname of ['../host/file', 'HOSTFILE']) {
  test(`a hard link to a path outside the root ('${linkname}') is refused`, async (t) => {
    const s = await scene(t);
    const target = linkname === 'HOSTFILE' ? s.hostFile : linkname;
    await assert.rejects(s.extract([{ name: 'h', type: 'link', linkname: target }]), HostError);
    await s.assertHostUntouched();
  });
}

test('a hard link whose target goes through a symlinked directory to the host is refused', async (t) => {
  const s = await scene(t);
  await assert.rejects(
    s.extract([
      { name: 'd', type: 'symlink', linkname: s.host },
      { name: 'h', type: 'link', linkname: 'd/file' },
    ]),
    HostError,
  );
  await s.assertHostUntouched();
});

test('a whiteout reached through a symlinked directory removes nothing outside the root', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'd', type: 'symlink', linkname: s.host },
    { name: 'r', type: 'symlink', linkname: '../host' },
  ]);
  await s.extract([{ name: 'd/.wh.file' }, { name: 'r/.wh.dir' }, { name: 'r/dir/.wh.child' }]);
  await s.assertHostUntouched();
});

test('an opaque marker under a symlinked directory empties nothing outside the root', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'd', type: 'symlink', linkname: '../host/dir' },
    { name: 'e', type: 'symlink', linkname: s.host },
  ]);
  await s.extract([{ name: 'd/.wh..wh..opq' }, { name: 'e/.wh..wh..opq' }]);
  await s.assertHostUntouched();
});

test('a file entry replacing a symlink to a host file replaces the link, never writes through it', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'x', type: 'symlink', linkname: s.hostFile },
    { name: 'x', mode: 0o4755, data: 'evil' },
  ]);
  await s.assertHostUntouched();
  const x = await fs.lstat(path.join(s.root, 'x'));
  assert.ok(x.isFile());
  assert.equal(x.mode & 0o7777, 0o4755, 'setuid kept as the tar says, on the file inside the root');
});

test('a directory entry replacing a symlink to a host dir replaces the link; its mode stays inside', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'x', type: 'symlink', linkname: s.hostDir },
    { name: 'x/', type: 'directory', mode: 0o4777 },
    { name: 'x/child', data: 'evil' },
  ]);
  await s.assertHostUntouched();
  assert.equal((await fs.lstat(path.join(s.root, 'x'))).mode & 0o7777, 0o4777);
});

test('a file written over a hard link to a lower file replaces the link, the lower file keeps its content', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: 'f', mode: 0o755, data: 'lower' },
    { name: 'h', type: 'link', linkname: 'f' },
  ]);
  await s.extract([{ name: 'h', mode: 0o4755, data: 'upper' }]);
  assert.equal(await fs.readFile(path.join(s.root, 'f'), 'utf8'), 'lower');
  assert.equal((await fs.stat(path.join(s.root, 'f'))).mode & 0o7777, 0o755);
  assert.equal(await fs.readFile(path.join(s.root, 'h'), 'utf8'), 'upper');
  await s.assertHostUntouched();
});

test('a member for the root itself (./ as a symlink to the host) does not replace the root', async (t) => {
  const s = await scene(t);
  await s.extract([
    { name: './', type: 'symlink', linkname: s.host },
    { name: '.', type: 'directory', mode: 0o4777 },
    { name: 'file', data: 'inside' },
  ]);
  await s.assertHostUntouched();
  assert.equal(await fs.readFile(path.join(s.root, 'file'), 'utf8'), 'inside');
});

// --- Through unpackImage (what prepare-rootfs runs) -----------------------------------------

/** An image in a fresh blob store whose only layer is `blob`, its diff_id `diffId`. */
async function oneLayerImage(dir: string, blob: Buffer, diffId: string): Promise<[ImageHandle, BlobStore]> {
  const store = new BlobStore(path.join(dir, 'store'));
  const { digest } = await store.ingestBuffer(blob, 'hostile layer');
  const image: ImageHandle = {
    source: 'hostile/image',
    manifest: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: blob.length },
    config: { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] } },
    configDigest: digest,
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: blob.length }],
    platform: { os: 'linux', architecture: 'amd64' },
  };
  return [image, store];
}

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

test("an image layer with '.wh...' is refused by unpackImage naming the layer; the instance dir above the root stays", async (t) => {
  const s = await scene(t);
  const layer = await hostileTar([{ name: '.wh...' }]);
  const [image, store] = await oneLayerImage(s.host, zlib.gzipSync(layer), sha256(layer));
  const before = await fs.readdir(s.host);
  await assert.rejects(
    unpackImage(image, store, s.root, { owners: false }),
    (err: unknown) =>
      err instanceof HostError &&
      /hostile\/image layer sha256:.*refusing the member '\.wh\.\.\.'/.test(err.message),
  );
  assert.deepEqual(await fs.readdir(s.host), before);
  assert.ok((await fs.lstat(s.root)).isDirectory());
});

test('a gzip layer that breaks off after a valid start is a HostError, not an unhandled stream error', async (t) => {
  const s = await scene(t);
  const layer = await hostileTar([{ name: 'big', data: 'x'.repeat(200_000) }]);
  const gz = zlib.gzipSync(layer);
  const broken = Buffer.concat([gz.subarray(0, 24), Buffer.alloc(256, 0xff)]);
  const [image, store] = await oneLayerImage(s.host, broken, sha256(layer));
  let uncaught: unknown;
  const onUncaught = (err: unknown) => {
    uncaught = err;
  };
  process.prependListener('uncaughtException', onUncaught);
  t.after(() => {
    process.removeListener('uncaughtException', onUncaught);
  });
  const outcome = await Promise.race([
    unpackImage(image, store, s.root, { owners: false }).then(
      () => 'extracted',
      (err: unknown) => err,
    ),
    new Promise((resolve) => setTimeout(() => resolve('still running after 5 s'), 5000).unref()),
  ]);
  assert.equal(uncaught, undefined, `the stream error escaped: ${String(uncaught)}`);
  assert.ok(outcome instanceof HostError, `expected a HostError, got ${String(outcome)}`);
  assert.match(outcome.message, /hostile\/image layer sha256:.*cannot extract/);
});
