/**
 * A second local user (`nobody`) against root's instances: the socket directory fallback,
 * directory modes under umask 000, and run records / state files / locks planted to make root's
 * `list`, `status` and `stop` signal a process or delete a path of the attacker's choosing.
 * Runs as root (the project's tests do); skipped, saying so, otherwise.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readEnvironment } from '../../src/config/environment.ts';
import { HostError } from '../../src/errors.ts';
import { takeInstanceLock } from '../../src/instance/lock.ts';
import { createRun, finishRun } from '../../src/instance/runs.ts';
import { processStartTime } from '../../src/supervisor/identity.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'bin', 'openshell-vm');
const NOBODY = 65534;
const skip =
  process.getuid?.() !== 0 ? 'needs root (a second local user, nobody, plays the attacker)' : false;

/** A base directory nobody can reach (0755), with a sticky world-writable tmp/ like /tmp. */
function base(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-local-user-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  fs.mkdirSync(path.join(dir, 'tmp'));
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  return dir;
}

/** Runs a shell script as nobody; it must succeed. */
function asNobody(script: string): void {
  const r = spawnSync('sh', ['-c', script], { uid: NOBODY, gid: NOBODY, encoding: 'utf8' });
  assert.equal(r.status, 0, `as nobody: ${script}\n${r.stderr}`);
}

function cli(dataDir: string, home: string, ...argv: string[]): { status: number | null; out: string } {
  const r = spawnSync(CLI, argv, {
    encoding: 'utf8',
    env: { ...process.env, OPENSHELL_VM_DATA_DIR: dataDir, HOME: home, XDG_RUNTIME_DIR: '' },
    timeout: 60_000,
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Still the same live process (a killed child not yet reaped is a zombie: no start time). */
async function isRunning(d: { pid: number; startTime: string }): Promise<boolean> {
  return (await processStartTime(d.pid)) === d.startTime;
}

/** A root process the attacker would like killed, and its identity as a pid record gives it. */
async function decoy(t: TestContext): Promise<{ child: ChildProcess; pid: number; startTime: string }> {
  const child = spawn('sleep', ['120'], { stdio: 'ignore' });
  t.after(() => child.kill('SIGKILL'));
  const pid = child.pid as number;
  return { child, pid, startTime: (await processStartTime(pid)) as string };
}

test('nobody pre-creates the socket fallback dir $TMPDIR/ovm-0: root refuses it', { skip }, async (t) => {
  const dir = base(t);
  const env = readEnvironment({
    HOME: dir,
    TMPDIR: path.join(dir, 'tmp'),
    // Long enough that the sockets cannot live in the run directory (sun_path).
    OPENSHELL_VM_DATA_DIR: path.join(dir, 'd'.repeat(100)),
  });
  assert.equal(env.runtimeDir, path.join(dir, 'tmp', 'ovm-0'));
  asNobody(`mkdir -m 0777 '${env.runtimeDir}'`);
  await assert.rejects(createRun(env, 'default'), (err: unknown) => {
    assert.ok(err instanceof HostError, String(err));
    assert.match(err.message, /refusing to use .*ovm-0: it belongs to uid 65534/);
    assert.match(err.hint ?? '', /remove it .*or set XDG_RUNTIME_DIR/);
    return true;
  });
  assert.deepEqual(fs.readdirSync(env.runtimeDir), []);
});

test('nobody plants $TMPDIR/ovm-0 as a symlink to a directory of theirs: root refuses it', {
  skip,
}, async (t) => {
  const dir = base(t);
  const env = readEnvironment({
    HOME: dir,
    TMPDIR: path.join(dir, 'tmp'),
    OPENSHELL_VM_DATA_DIR: path.join(dir, 'd'.repeat(100)),
  });
  const theirs = path.join(dir, 'tmp', 'theirs');
  asNobody(`mkdir -m 0777 '${theirs}' && ln -s '${theirs}' '${env.runtimeDir}'`);
  await assert.rejects(createRun(env, 'default'), /refusing to use .*ovm-0: it is a symlink/);
  assert.deepEqual(fs.readdirSync(theirs), []);
});

test('under umask 000 nothing openshell-vm creates is open to nobody; instance dirs are 0700', {
  skip,
}, async (t) => {
  const dir = base(t);
  const before = process.umask(0);
  t.after(() => process.umask(before));
  const env = readEnvironment({
    HOME: dir,
    TMPDIR: path.join(dir, 'tmp'),
    OPENSHELL_VM_DATA_DIR: path.join(dir, 'data'),
  });
  const release = await takeInstanceLock(path.join(env.dataDir, 'instances', 'gw'), 'gw', 'testing');
  const run = await createRun(env, 'gw');
  fs.writeFileSync(run.consoleLog, 'boot', { mode: 0o600 }); // QEMU's, in real runs
  await finishRun(run, true);
  // A file of the rootfs that is readable by everyone inside (the gateway's client key).
  const k3sYaml = path.join(env.dataDir, 'instances', 'gw', 'rootfs', 'etc', 'k3s.yaml');
  fs.mkdirSync(path.dirname(k3sYaml), { recursive: true, mode: 0o755 });
  fs.writeFileSync(k3sYaml, 'client-key-data: secret', { mode: 0o644 });
  const open: string[] = [];
  const walk = (p: string) => {
    const st = fs.lstatSync(p);
    if (st.mode & 0o022 && !p.startsWith(path.dirname(k3sYaml)))
      open.push(`${p} ${(st.mode & 0o7777).toString(8)}`);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  walk(env.dataDir);
  await release();
  assert.deepEqual(open, []);
  for (const d of ['instances', 'instances/gw', 'instances/gw/runs', 'instances/gw/logs']) {
    assert.equal(fs.statSync(path.join(env.dataDir, d)).mode & 0o777, 0o700, d);
  }
  const read = spawnSync('cat', [k3sYaml], { uid: NOBODY, gid: NOBODY, encoding: 'utf8' });
  assert.notEqual(read.status, 0, 'nobody read the rootfs');
  assert.doesNotMatch(read.stdout, /secret/);
});

/** Plants, as nobody, a run record of a dead owner naming `pid` and `file`, and a state file doing the same. */
function plantRecords(dir: string, d: { pid: number; startTime: string }, files: string[]): void {
  const run = path.join(dir, 'runs', 'lzzzzzzz-deadbeef');
  const owner = JSON.stringify({ pid: 4194000, startTime: '1', extraPaths: [files[0]] });
  const pidRecord = JSON.stringify({ name: 'qemu', pid: d.pid, startTime: d.startTime, argv: ['qemu'] });
  const state = JSON.stringify({
    version: 1,
    instance: 'gw',
    mode: 'run',
    phase: 'running',
    supervisor: { name: 'openshell-vm', pid: 4194001, startTime: '1' },
    detached: true,
    backend: 'qemu',
    accel: 'tcg',
    arch: 'x86_64',
    vcpus: 1,
    memMib: 256,
    startedAt: new Date().toISOString(),
    runDir: run,
    control: path.join(run, 'ctl.sock'),
    processes: [{ name: 'qemu', pid: d.pid, startTime: d.startTime }],
    sockets: [files[1]],
    forwards: [],
    logs: {},
  });
  asNobody(
    `mkdir -p '${run}' && printf '%s' '${owner}' > '${run}/owner.json' && printf '%s' '${pidRecord}' > '${run}/qemu.pid' && printf '%s' '${state}' > '${dir}/state.json'`,
  );
}

test('nobody plants run records and a state file in a 0777 instance dir (umask 000): list/status/stop kill nothing, delete nothing', {
  skip,
}, async (t) => {
  const root = base(t);
  const data = path.join(root, 'data');
  const dir = path.join(data, 'instances', 'gw');
  fs.mkdirSync(path.join(dir, 'runs'), { recursive: true });
  for (const d of [data, path.join(data, 'instances'), dir, path.join(dir, 'runs')]) fs.chmodSync(d, 0o777);
  const files = [path.join(root, 'precious-dir'), path.join(root, 'precious.sock')];
  fs.mkdirSync(files[0] as string);
  fs.writeFileSync(files[1] as string, 'keep me');
  const d = await decoy(t);
  plantRecords(dir, d, files);
  for (const argv of [['list'], ['status', 'gw'], ['stop', 'gw', '--timeout', '1']]) {
    const r = cli(data, root, ...argv);
    assert.ok(await isRunning(d), `${argv.join(' ')} killed root's decoy:\n${r.out}`);
    for (const f of files) assert.ok(fs.existsSync(f), `${argv.join(' ')} deleted ${f}:\n${r.out}`);
  }
  const status = cli(data, root, 'status', 'gw');
  assert.match(status.out, /broken|refus|left alone/);
});

test('nobody-owned run records inside our own 0700 runs dir: the sweep kills nothing, deletes nothing', {
  skip,
}, async (t) => {
  const root = base(t);
  const data = path.join(root, 'data');
  const dir = path.join(data, 'instances', 'gw');
  const run = path.join(dir, 'runs', 'lzzzzzzz-cafecafe');
  fs.mkdirSync(run, { recursive: true, mode: 0o700 });
  const files = [path.join(root, 'precious-dir')];
  fs.mkdirSync(files[0] as string);
  const d = await decoy(t);
  fs.writeFileSync(
    path.join(run, 'owner.json'),
    JSON.stringify({ pid: 4194000, startTime: '1', extraPaths: files }),
  );
  fs.writeFileSync(
    path.join(run, 'qemu.pid'),
    JSON.stringify({ name: 'qemu', pid: d.pid, startTime: d.startTime, argv: ['qemu'] }),
  );
  for (const f of ['owner.json', 'qemu.pid']) fs.chownSync(path.join(run, f), NOBODY, NOBODY);
  for (const argv of [['list'], ['status', 'gw'], ['stop', 'gw', '--timeout', '1']]) {
    const r = cli(data, root, ...argv);
    assert.ok(await isRunning(d), `${argv.join(' ')} killed root's decoy:\n${r.out}`);
    assert.ok(fs.existsSync(files[0] as string), `${argv.join(' ')} deleted ${files[0]}:\n${r.out}`);
    assert.match(r.out, /left alone: .*owner\.json belongs to uid 65534/, argv.join(' '));
  }
});

test('nobody plants an instance lock naming a root process as a starting gateway: stop does not signal it', {
  skip,
}, async (t) => {
  const root = base(t);
  const data = path.join(root, 'data');
  const dir = path.join(data, 'instances', 'gw');
  fs.mkdirSync(dir, { recursive: true });
  for (const p of [data, path.join(data, 'instances'), dir]) fs.chmodSync(p, 0o777);
  const d = await decoy(t);
  const lock = JSON.stringify({ pid: d.pid, startTime: d.startTime, purpose: 'running the gateway' });
  asNobody(`printf '%s' '${lock}' > '${dir}/instance.lock'`);
  const r = cli(data, root, 'stop', 'gw', '--timeout', '1');
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok(await isRunning(d), `stop signalled root's decoy:\n${r.out}`);
  assert.equal(d.child.signalCode, null);
});
