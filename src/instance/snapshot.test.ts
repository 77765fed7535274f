import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  changedInputs,
  commitSnapshot,
  findSnapshot,
  newSnapshotDir,
  removeSnapshot,
  SNAPSHOT_FILES,
  type SnapshotInputs,
  syncPath,
} from './snapshot.ts';

const inputs: SnapshotInputs = {
  format: 'f1',
  rootfs: 'r1',
  rootfsFiles: 'h1',
  credentials: 'c1',
  kernel: 'k1',
  initramfs: 'i1',
  vmm: 'q1',
  machine: 'x86_64 tcg 2 vCPU 2048 MiB',
};

async function saved(dir: string) {
  const fresh = await newSnapshotDir(dir);
  assert.equal((await fs.stat(fresh)).mode & 0o777, 0o700);
  await fs.writeFile(path.join(fresh, SNAPSHOT_FILES.disk), 'disk bytes');
  await fs.writeFile(path.join(fresh, SNAPSHOT_FILES.state), 'state bytes');
  return commitSnapshot(dir, fresh, { inputs, savedAt: 'now', pausedMs: 5, coldReadyMs: 30_000 });
}

test('a committed snapshot is found with the same inputs; each changed input is named', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-snap-'));
  assert.deepEqual(await findSnapshot(dir, inputs), { kind: 'none' });
  const meta = await saved(dir);
  assert.equal(meta.stateBytes, 11);
  const found = await findSnapshot(dir, inputs);
  assert.equal(found.kind, 'found');
  assert.equal((await fs.stat(path.join(dir, 'snapshot', SNAPSHOT_FILES.meta))).mode & 0o777, 0o600);
  const stale = await findSnapshot(dir, { ...inputs, rootfs: 'r2', machine: 'x86_64 tcg 4 vCPU 2048 MiB' });
  assert.deepEqual(stale, {
    kind: 'stale',
    reason:
      'changed since it was saved: the rootfs (its build record), the machine (architecture, accelerator, vCPUs, memory)',
  });
  assert.equal(changedInputs(inputs, inputs), '');
  // No half-made directory is left beside it.
  assert.deepEqual(await fs.readdir(dir), ['snapshot']);
  await fs.rm(dir, { recursive: true });
});

test('a disk written after the save, a cut state or a foreign snapshot.json is stale, never restored', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-snap-'));
  await saved(dir);
  const disk = path.join(dir, 'snapshot', SNAPSHOT_FILES.disk);
  await fs.appendFile(disk, 'more');
  assert.match(JSON.stringify(await findSnapshot(dir, inputs)), /disk image is missing or was written after/);

  await saved(dir);
  await fs.truncate(path.join(dir, 'snapshot', SNAPSHOT_FILES.state), 3);
  assert.match(JSON.stringify(await findSnapshot(dir, inputs)), /saved state is missing or cut short/);

  await saved(dir);
  const metaFile = path.join(dir, 'snapshot', SNAPSHOT_FILES.meta);
  for (const text of ['{', '{"format":99}', JSON.stringify({ format: 1, inputs: { rootfs: 1 } })]) {
    await fs.writeFile(metaFile, text);
    assert.match(JSON.stringify(await findSnapshot(dir, inputs)), /not one this version/);
  }
  await fs.rm(metaFile);
  assert.match(JSON.stringify(await findSnapshot(dir, inputs)), /no snapshot.json/);
  await removeSnapshot(dir);
  assert.deepEqual(await fs.readdir(dir), []);
  await fs.rm(dir, { recursive: true });
});

test('removeSnapshot takes half-made snapshots too, and keeps what it is told to', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-snap-'));
  const a = await newSnapshotDir(dir);
  const b = await newSnapshotDir(dir);
  await fs.mkdir(path.join(dir, 'rootfs'));
  await removeSnapshot(dir, { keep: b });
  assert.deepEqual((await fs.readdir(dir)).sort(), ['rootfs', path.basename(b)].sort());
  assert.equal(
    await fs.stat(a).then(
      () => true,
      () => false,
    ),
    false,
  );
  await fs.rm(dir, { recursive: true });
});

test('unfinishedOnly takes the half-made snapshots and leaves the committed one', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-snap-'));
  await saved(dir);
  const half = await newSnapshotDir(dir);
  await fs.writeFile(path.join(half, SNAPSHOT_FILES.disk), 'partial');
  assert.deepEqual(await removeSnapshot(dir, { unfinishedOnly: true }), [half]);
  assert.deepEqual(await fs.readdir(dir), ['snapshot']);
  assert.equal((await findSnapshot(dir, inputs)).kind, 'found');
  assert.deepEqual(await removeSnapshot(dir), [path.join(dir, 'snapshot')]);
  await fs.rm(dir, { recursive: true });
});

test('the image, the state, snapshot.json and the directory are fsynced before the rename that commits them', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-snap-'));
  const fresh = await newSnapshotDir(dir);
  await fs.writeFile(path.join(fresh, SNAPSHOT_FILES.disk), 'disk bytes');
  await fs.writeFile(path.join(fresh, SNAPSHOT_FILES.state), 'state bytes');
  const synced: { file: string; committed: boolean }[] = [];
  await commitSnapshot(dir, fresh, { inputs, savedAt: 'now', pausedMs: 5, coldReadyMs: 1 }, async (file) => {
    const committed = await fs.stat(path.join(dir, 'snapshot')).then(
      () => true,
      () => false,
    );
    synced.push({ file: path.relative(dir, file), committed });
    await syncPath(file);
  });
  const before = synced.filter((s) => !s.committed).map((s) => s.file);
  const rel = (f: string) => path.join(path.basename(fresh), f);
  for (const f of [SNAPSHOT_FILES.disk, SNAPSHOT_FILES.state, SNAPSHOT_FILES.meta]) {
    assert.ok(before.includes(rel(f)), `${f} was not fsynced before the commit`);
  }
  assert.ok(before.includes(path.basename(fresh)), 'the new directory was not fsynced before the commit');
  // The rename itself: the instance directory afterwards.
  assert.deepEqual(synced.at(-1), { file: '', committed: true });
  await fs.rm(dir, { recursive: true });
});
