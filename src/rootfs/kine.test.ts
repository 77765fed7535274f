import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { test } from 'node:test';
import { KINE_SCHEMA } from '../../test/fixtures/kine.ts';
import { HostError } from '../errors.ts';
import { cleanKineDatastore, cleanRootfsKineDatastore, KINE_RUNTIME_PREFIXES } from './kine.ts';
import { ROOTFS_PATHS } from './layout.ts';

const KEEP = [
  '/registry/namespaces/openshell',
  '/registry/secrets/openshell/openshell-server-tls',
  '/registry/podtemplates/x',
  '/registry/pods_like_but_not/x',
];

function makeDb(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-kine-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state.db');
  const db = new DatabaseSync(file);
  db.exec('PRAGMA journal_mode = WAL');
  db.exec(KINE_SCHEMA);
  const insert = db.prepare(
    'INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 1, 0, 0, ?, NULL)',
  );
  for (const prefix of KINE_RUNTIME_PREFIXES) {
    for (let i = 0; i < 3; i++) insert.run(`${prefix}ns/item-${i}`, Buffer.alloc(4096, i));
  }
  for (const name of KEEP) insert.run(name, Buffer.from('keep'));
  db.close();
  return file;
}

test('runtime records and the bootstrap lock go; everything else stays; WAL checkpointed', async (t) => {
  const file = makeDb(t);
  const report = await cleanKineDatastore(file);
  assert.ok(report);
  for (const prefix of KINE_RUNTIME_PREFIXES) assert.equal(report.deleted[prefix], 3, prefix);
  assert.equal(report.rowsBefore, KINE_RUNTIME_PREFIXES.length * 3 + KEEP.length);
  assert.equal(report.rowsAfter, KEEP.length);
  const db = new DatabaseSync(file);
  const names = (db.prepare('SELECT name FROM kine ORDER BY name').all() as { name: string }[]).map(
    (r) => r.name,
  );
  db.close();
  assert.deepEqual(names, [...KEEP].sort());
  assert.ok(!fs.existsSync(`${file}-wal`) || fs.statSync(`${file}-wal`).size === 0, 'WAL checkpointed');
  assert.ok(report.bytesAfter < report.bytesBefore, 'VACUUM shrank the file');
});

test('no database yet (a rootfs that never booted) is not an error', async () => {
  assert.equal(await cleanKineDatastore('/nonexistent/state.db'), undefined);
});

test('a corrupt database is refused with the --reset hint: bad header, damaged pages, no kine table', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-kine-bad-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const isCorrupt = (re: RegExp) => (e: unknown) =>
    e instanceof HostError &&
    /is corrupt/.test(e.message) &&
    re.test(e.message) &&
    /--reset/.test(e.hint ?? '');

  const garbage = path.join(dir, 'garbage.db');
  fs.writeFileSync(garbage, 'this is not a database at all, just text');
  await assert.rejects(cleanKineDatastore(garbage), isCorrupt(/bad header/));

  const damaged = makeDb(t);
  const bytes = fs.readFileSync(damaged);
  // Keep the header, scribble over the rest of the first pages' b-tree data.
  bytes.fill(0xa5, 100, Math.min(bytes.length, 8192));
  fs.writeFileSync(damaged, bytes);
  await assert.rejects(cleanKineDatastore(damaged), isCorrupt(/./));

  const empty = path.join(dir, 'empty.db');
  const other = new DatabaseSync(empty);
  other.exec('CREATE TABLE other (x)');
  other.close();
  await assert.rejects(cleanKineDatastore(empty), isCorrupt(/no kine table/));
});

/** A rootfs whose datastore holds runtime rows, some committed only to its WAL (k3s killed). */
function rootfsWithWalOnlyRows(t: { after: (fn: () => void) => void }): { rootfs: string; dbDir: string } {
  const rootfs = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-kine-rootfs-'));
  t.after(() => fs.rmSync(rootfs, { recursive: true, force: true }));
  const dbDir = path.join(rootfs, path.dirname(ROOTFS_PATHS.kineDb));
  fs.mkdirSync(dbDir, { recursive: true });
  const live = makeDb(t);
  const db = new DatabaseSync(live);
  db.exec('PRAGMA journal_mode = WAL');
  db.exec('PRAGMA wal_autocheckpoint = 0');
  const insert = db.prepare(
    'INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 1, 0, 0, ?, NULL)',
  );
  insert.run('/registry/pods/ns/only-in-wal', Buffer.from('x'));
  insert.run('/registry/configmaps/ns/only-in-wal', Buffer.from('keep'));
  // Copied while open: the two rows are in state.db-wal only, as after a killed k3s.
  for (const suffix of ['', '-wal'])
    fs.copyFileSync(`${live}${suffix}`, path.join(dbDir, `state.db${suffix}`));
  db.close();
  return { rootfs, dbDir };
}

test('rootfs datastore: cleaned on a private copy (its WAL included) and written back; no side file left', async (t) => {
  const { rootfs, dbDir } = rootfsWithWalOnlyRows(t);
  assert.ok(fs.statSync(path.join(dbDir, 'state.db-wal')).size > 0);
  fs.chmodSync(path.join(dbDir, 'state.db'), 0o640);
  const report = await cleanRootfsKineDatastore(rootfs);
  assert.ok(report);
  assert.equal(report.database, path.join(dbDir, 'state.db'), 'reported by its path in the rootfs');
  assert.equal(report.deleted['/registry/pods/'], 4, 'three from the database, one from its WAL');
  assert.deepEqual(fs.readdirSync(dbDir), ['state.db'], 'no WAL, shm, journal or temporary file left');
  assert.equal(fs.statSync(path.join(dbDir, 'state.db')).mode & 0o777, 0o640, 'mode kept');
  const db = new DatabaseSync(path.join(dbDir, 'state.db'));
  const names = (db.prepare('SELECT name FROM kine ORDER BY name').all() as { name: string }[]).map(
    (r) => r.name,
  );
  db.close();
  assert.deepEqual(names, [...KEEP, '/registry/configmaps/ns/only-in-wal'].sort());
});

test('rootfs datastore: the host opens the guest files only through the pinned directory, never by host path', async (t) => {
  const { rootfs, dbDir } = rootfsWithWalOnlyRows(t);
  const opened: string[] = [];
  const realOpen = fsp.open;
  // node:sqlite opens in C (not through fs), so watch what the host opens and check the database
  // SQLite worked on afterwards: every open of the guest's files is through the pinned directory.
  t.mock.method(fsp, 'open', (file: Parameters<typeof fsp.open>[0], ...rest: [never]) => {
    opened.push(String(file));
    return realOpen(file, ...rest);
  });
  assert.ok(await cleanRootfsKineDatastore(rootfs));
  const inGuest = opened.filter((f) => f.startsWith(`${rootfs}/`));
  assert.deepEqual(inGuest, [], `opened by host path inside the rootfs: ${inGuest.join(', ')}`);
  assert.ok(
    opened.some((f) => /^\/proc\/self\/fd\/\d+\/state\.db$/.test(f)),
    opened.join(', '),
  );
  assert.ok(fs.existsSync(path.join(dbDir, 'state.db')));
});

test('rootfs datastore: a FIFO or a directory in place of a side file is refused, not waited on', async (t) => {
  const { rootfs, dbDir } = rootfsWithWalOnlyRows(t);
  execFileSync('mkfifo', [path.join(dbDir, 'state.db-journal')]);
  await assert.rejects(
    cleanRootfsKineDatastore(rootfs),
    (e: unknown) => e instanceof HostError && /state\.db-journal is not a regular file/.test(e.message),
  );
  fs.rmSync(path.join(dbDir, 'state.db-journal'));
  fs.mkdirSync(path.join(dbDir, 'state.db-shm'));
  await assert.rejects(cleanRootfsKineDatastore(rootfs), /state\.db-shm is not a regular file/);
});
