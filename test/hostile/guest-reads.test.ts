// Hostile guest → host through the files the host reads from a guest-owned tree (issue 13, item 2,
// review follow-up): the gateway rootfs's build record and guest scripts (read before every boot,
// by run --rootfs, rootfs info and prepare-rootfs), and the kine datastore SQLite cleans. Planting
// from the host here is what a guest writes through virtio-fs. The last test (a run whose agent
// dies under its command, and console escapes) boots a real microVM under QEMU (TCG here): run
// with flock /tmp/ovm-vm.lock.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, test } from 'node:test';
import { prepareRootfsForBoot } from '../../src/rootfs/boot-prep.ts';
import { ROOTFS_PATHS } from '../../src/rootfs/layout.ts';
import { readRootfsRecord } from '../../src/rootfs/record.ts';
import { sandbox } from '../e2e/harness.ts';
import { writeGatewayRootfs } from '../fixtures/gateway-rootfs.ts';
import { KINE_SCHEMA } from '../fixtures/kine.ts';

const SECRET = 'host-secret-4f1c9a: the content of a host file';
/** The call must settle well within this (a FIFO must not block it). */
const PROMPT_MS = 5_000;

interface World {
  readonly rootfs: string;
  readonly host: string;
}

async function world(t: { after: (fn: () => Promise<void>) => void }): Promise<World> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-hostile-reads-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const rootfs = path.join(base, 'instances', 'gw', 'rootfs');
  const host = path.join(base, 'host');
  await fs.mkdir(host, { recursive: true });
  await fs.mkdir(rootfs, { recursive: true });
  await writeGatewayRootfs(rootfs, { instance: 'gw', staged: false });
  return { rootfs, host };
}

/** Settles `p` or fails the test after PROMPT_MS (a read that blocks on a FIFO). */
async function promptly<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still waiting after ${PROMPT_MS} ms: blocked`)), PROMPT_MS);
  });
  try {
    return { ok: true, value: await Promise.race([p, deadline]) };
  } catch (error) {
    if (error instanceof Error && /still waiting after/.test(error.message)) throw error;
    return { ok: false, error };
  } finally {
    clearTimeout(timer);
  }
}

/** Every message and hint along the cause chain. */
function texts(err: unknown): string {
  const out: string[] = [];
  for (let at: unknown = err; at instanceof Error; at = at.cause) {
    out.push(at.message, (at as { hint?: string }).hint ?? '');
  }
  return out.join('\n');
}

async function plantRecord(w: World, make: (file: string) => Promise<void>): Promise<void> {
  const file = path.join(w.rootfs, ROOTFS_PATHS.record);
  await fs.rm(file, { force: true });
  await make(file);
}

/** A FIFO opened for writing by nobody: a plain read of it blocks forever. */
async function mkfifo(file: string): Promise<void> {
  execFileSync('mkfifo', [file]);
}

test('build record as a symlink to a host JSON file: refused, the host file content not echoed', async (t) => {
  const w = await world(t);
  const hostJson = path.join(w.host, 'config.json');
  await fs.writeFile(hostJson, JSON.stringify({ format: 1, token: SECRET }));
  await plantRecord(w, (file) => fs.symlink(hostJson, file));
  for (const read of [
    (): Promise<unknown> => readRootfsRecord(w.rootfs),
    () => prepareRootfsForBoot(w.rootfs),
  ]) {
    const result = await promptly(read());
    assert.equal(result.ok, false, 'a symlinked record was accepted');
    if (result.ok) continue;
    assert.match(texts(result.error), /symlink/);
    assert.ok(!texts(result.error).includes(SECRET), `host content echoed: ${texts(result.error)}`);
  }
});

test('build record as a FIFO: refused promptly (the boot does not hang holding the instance lock)', async (t) => {
  const w = await world(t);
  await plantRecord(w, mkfifo);
  for (const read of [
    (): Promise<unknown> => readRootfsRecord(w.rootfs),
    () => prepareRootfsForBoot(w.rootfs),
  ]) {
    const result = await promptly(read());
    assert.equal(result.ok, false);
    if (!result.ok) assert.match(texts(result.error), /FIFO|not a regular file/);
  }
});

test('build record as a symlink to /dev/zero: refused without reading it', async (t) => {
  const w = await world(t);
  await plantRecord(w, (file) => fs.symlink('/dev/zero', file));
  const result = await promptly(readRootfsRecord(w.rootfs));
  assert.equal(result.ok, false);
  if (!result.ok) assert.match(texts(result.error), /symlink/);
});

test('build record of 64 MiB: refused by its size, not read into memory', async (t) => {
  const w = await world(t);
  await plantRecord(w, async (file) => {
    const handle = await fs.open(file, 'w');
    await handle.truncate(64 * 1024 * 1024); // sparse: no disk used
    await handle.close();
  });
  const result = await promptly(readRootfsRecord(w.rootfs));
  assert.equal(result.ok, false);
  if (!result.ok) assert.match(texts(result.error), /larger than 1 MiB/);
});

test('build record that is a host secret copied in (not JSON): refused, its content not echoed', async (t) => {
  const w = await world(t);
  await plantRecord(w, (file) => fs.writeFile(file, SECRET));
  const result = await promptly(readRootfsRecord(w.rootfs));
  assert.equal(result.ok, false);
  if (!result.ok) {
    assert.match(texts(result.error), /rootfs\.json is not a valid build record/);
    assert.ok(!texts(result.error).includes(SECRET.slice(0, 8)), texts(result.error));
  }
});

test('a guest script as a FIFO: the boot check refuses it promptly', async (t) => {
  const w = await world(t);
  const file = path.join(w.rootfs, 'sbin/ovm-gateway-init');
  await fs.rm(file);
  await mkfifo(file);
  const result = await promptly(prepareRootfsForBoot(w.rootfs));
  assert.equal(result.ok, false);
  if (!result.ok) assert.match(texts(result.error), /ovm-gateway-init/);
});

test('a guest script as a symlink to the host copy of itself: refused, not followed', async (t) => {
  const w = await world(t);
  // The host file holds exactly the right bytes: only following the link could make it pass.
  const hostCopy = path.join(w.host, 'ovm-gateway-init');
  await fs.copyFile(path.join(w.rootfs, 'sbin/ovm-gateway-init'), hostCopy);
  const file = path.join(w.rootfs, 'sbin/ovm-gateway-init');
  await fs.rm(file);
  await fs.symlink(hostCopy, file);
  const result = await promptly(prepareRootfsForBoot(w.rootfs));
  assert.equal(result.ok, false, 'a guest script symlinked to a host file passed the boot check');
  if (!result.ok) assert.match(texts(result.error), /ovm-gateway-init.*symlink|symlink.*ovm-gateway-init/s);
});

test('a guest script as a symlink to /dev/zero: refused promptly, not read without end', async (t) => {
  const w = await world(t);
  const file = path.join(w.rootfs, 'usr/local/bin/ovm-check-capabilities');
  await fs.rm(file);
  await fs.symlink('/dev/zero', file);
  const result = await promptly(prepareRootfsForBoot(w.rootfs));
  assert.equal(result.ok, false);
  if (!result.ok) assert.match(texts(result.error), /ovm-check-capabilities is a symlink/);
});

/** A kine database with runtime rows (what the cleaning deletes). */
function kineDb(file: string): void {
  const db = new DatabaseSync(file);
  db.exec(KINE_SCHEMA);
  const insert = db.prepare(
    'INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 1, 0, 0, ?, NULL)',
  );
  for (let i = 0; i < 5; i++) insert.run(`/registry/pods/default/p-${i}`, Buffer.from('x'));
  insert.run('/registry/namespaces/default', Buffer.from('keep'));
  db.close();
}

const sha = async (file: string) =>
  createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');

test('kine db dir swapped for a symlink to a host dir between the check and the open: the host db is untouched', async (t) => {
  const w = await world(t);
  const dbDir = path.join(w.rootfs, path.dirname(ROOTFS_PATHS.kineDb));
  await fs.mkdir(dbDir, { recursive: true });
  kineDb(path.join(dbDir, 'state.db'));
  const hostDir = path.join(w.host, 'db');
  await fs.mkdir(hostDir);
  kineDb(path.join(hostDir, 'state.db'));
  const before = await sha(path.join(hostDir, 'state.db'));

  // The guest's move, timed at the host's first open of the database (after every check): the
  // real directory goes aside and a symlink to the host's takes its name.
  let swapped = false;
  const realOpen = fs.open;
  t.mock.method(fs, 'open', async (file: Parameters<typeof fs.open>[0], ...rest: [never]) => {
    if (!swapped && String(file).endsWith('state.db')) {
      swapped = true;
      await fs.rename(dbDir, `${dbDir}.real`);
      await fs.symlink(hostDir, dbDir);
    }
    return realOpen(file, ...rest);
  });
  await prepareRootfsForBoot(w.rootfs).catch(() => undefined);
  t.mock.restoreAll();
  assert.ok(swapped, 'the host never opened the database');
  assert.equal(await sha(path.join(hostDir, 'state.db')), before, 'the host database was changed');
  assert.deepEqual(await fs.readdir(hostDir), ['state.db'], 'SQLite made side files in the host directory');
});

const box = sandbox();
after(() => box.cleanup());

// The run's command is an agent session now: there is no handoff dir or status file the guest
// could swap (the test that swapped it for a symlink to a host dir saying "0 exited" is gone with
// them). What remains to attack is the session: guest root kills the agent under its command and
// writes escapes to the console. The host must not make up an exit code, and must show the
// console's tail with the escapes as visible text.
test('guest root kills the agent under its command and writes OSC 52/title/clear escapes to the console: the run fails, no exit code made up, the escapes not printed', async () => {
  const script = [
    "printf '\\033]52;c;b3duZWQ=\\007\\033]0;owned\\007\\033[2J\\n' >/dev/console",
    // $PPID is the agent: it forked and exec'ed this shell. The init starts it again.
    'kill -9 "$PPID"',
    'sleep 30',
    'exit 0',
  ].join('\n');
  const result = await box.run([
    '-q',
    '--vcpus',
    '1',
    '--mem',
    '256',
    '--net',
    'none',
    'run',
    '--',
    '/bin/sh',
    '-c',
    script,
  ]);
  assert.equal(result.code, 125, `the run did not fail as openshell-vm's own failure: ${result.stderr}`);
  assert.ok(
    !result.stderr.includes('\x1b'),
    `an escape sequence reached the terminal: ${JSON.stringify(result.stderr)}`,
  );
  assert.ok(!result.stderr.includes('\x07'), 'BEL reached the terminal');
  assert.match(
    result.stderr,
    /session ended without its exit code: the guest agent restarted/,
    result.stderr,
  );
  assert.match(result.stderr, /\\x1b\]52;c;/, 'the console tail is shown, its escapes made visible');
  await box.assertClean(result);
});
