import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { test } from 'node:test';
import { KINE_SCHEMA } from '../../test/fixtures/kine.ts';
import { HostError } from '../errors.ts';
import { cleanKineDatastore, KINE_RUNTIME_PREFIXES } from './kine.ts';

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
