/**
 * Roots and records (issue 13, items 3 and 8, review follow-up): a `run` on libkrun writing into a
 * prepared rootfs; a --rootfs another local user can reach; another user's entries in an instance
 * directory that was open (umask 000), among them an `api-port` FIFO that hung the gateway.
 * No VM boots: libkrun is the test double (test/fixtures/libkrun-double.c), and every refusal comes
 * before QEMU would start. The second local user is `nobody`; runs as root, skipped otherwise.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { findGvproxy } from '../../src/net/gvproxy.ts';
import { type CliRun, sandbox } from '../e2e/harness.ts';
import { writeGatewayRootfs } from '../fixtures/gateway-rootfs.ts';
import { buildLibkrunDouble } from '../fixtures/libkrun-double.ts';

const NOBODY = 65534;
const skip =
  process.getuid?.() !== 0 ? 'needs root (a second local user, nobody, plays the attacker)' : false;

const box = sandbox();
/** The sandbox's base directory: reachable by nobody (0755), as a home directory usually is. */
const base = path.dirname(box.dataDir);
fs.chmodSync(base, 0o755);
const bundle = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-roots-krun-'));
after(() => {
  box.cleanup();
  fs.rmSync(bundle, { recursive: true, force: true });
});
buildLibkrunDouble(bundle);
fs.symlinkSync(await findGvproxy(readEnvironment()), path.join(bundle, 'gvproxy'));

/** The libkrun double as the runtime, logging its calls to a file of its own. */
function krun(): { log: string; env: NodeJS.ProcessEnv } {
  const log = path.join(bundle, `calls-${Date.now()}-${Math.random()}.ndjson`);
  return { log, env: { OPENSHELL_VM_RUNTIME_DIR: bundle, KRUN_DOUBLE_LOG: log } };
}

/** A rootfs as prepare-rootfs leaves it, as far as a boot checks it (build record, guest scripts). */
async function preparedRootfs(root: string, instance: string): Promise<void> {
  const arch = os.arch() === 'arm64' ? 'aarch64' : 'x86_64';
  await writeGatewayRootfs(root, { instance, arch, staged: false });
}

/** Every path under `dir` with its type, size and mode: what a run may have changed. */
function snapshot(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .sort()
    .map((rel) => {
      const st = fs.lstatSync(path.join(dir, rel));
      return `${rel} ${st.isDirectory() ? 'd' : st.size} ${(st.mode & 0o7777).toString(8)}`;
    });
}

function chownR(p: string, uid: number): void {
  for (const rel of ['', ...fs.readdirSync(p, { recursive: true, encoding: 'utf8' })]) {
    fs.lchownSync(path.join(p, rel), uid, uid);
  }
}

function asNobody(script: string): void {
  const r = spawnSync('sh', ['-c', script], { uid: NOBODY, gid: NOBODY, encoding: 'utf8' });
  assert.equal(r.status, 0, `as nobody: ${script}\n${r.stderr}`);
}

/** Nothing was booted: no helper process reported, the libkrun double never called. */
function assertNothingStarted(run: CliRun, log?: string): void {
  assert.deepEqual(
    run.processes.map((p) => p.name),
    [],
    `processes started:\n${run.stderr}`,
  );
  if (log) assert.equal(fs.existsSync(log), false, 'the libkrun double was called');
}

test('run --rootfs on libkrun (no read-only lower layer): refused before anything starts, the rootfs untouched', {
  skip,
}, async () => {
  const closed = fs.mkdtempSync(path.join(base, 'closed-'));
  const rootfs = path.join(closed, 'rootfs');
  await preparedRootfs(rootfs, 'krun');
  const before = snapshot(rootfs);
  const { log, env } = krun();
  const run = await box.run(
    ['--backend', 'libkrun', '--net', 'none', '--name', 'krun', '--rootfs', rootfs, '--exec', '/bin/true'],
    { env, timeoutMs: 120_000 },
  );
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /--rootfs .*: the libkrun backend has no read-only lower layer/);
  assert.match(run.stderr, /hint: use --backend qemu/);
  assertNothingStarted(run, log);
  assert.deepEqual(snapshot(rootfs), before, 'nothing was written into the rootfs');
});

test('gateway --rootfs below a 0755 chain (nobody can enter it): refused naming the directory; below a 0700 parent: accepted', {
  skip,
}, async () => {
  const parent = fs.mkdtempSync(path.join(base, 'open-'));
  fs.chmodSync(parent, 0o755);
  const rootfs = path.join(parent, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'opt'), { recursive: true });
  // What nobody would do once the guest's root has left a setuid-root shell there.
  asNobody(`test -x '${rootfs}/opt'`);
  const refused = await box.run(['--name', 'loc', '--rootfs', rootfs], { timeoutMs: 60_000 });
  assert.equal(refused.code, 125, refused.stderr);
  assert.match(
    refused.stderr,
    new RegExp(`refusing --rootfs ${rootfs}: ${parent} \\(owner uid 0, mode 0755\\)`),
  );
  assert.match(refused.stderr, new RegExp(`hint: chmod 700 ${parent}`));
  assertNothingStarted(refused);

  fs.chmodSync(parent, 0o700);
  const accepted = await box.run(['--name', 'loc', '--rootfs', rootfs], { timeoutMs: 60_000 });
  assert.equal(accepted.code, 125, accepted.stderr);
  assert.doesNotMatch(accepted.stderr, /refusing --rootfs/);
  assert.match(accepted.stderr, /has no build record/, 'the location passed; the next check speaks');
  assertNothingStarted(accepted);
});

test('run --rootfs below a directory nobody owns, or a 0777 one inside a 0700 parent: refused before boot', {
  skip,
}, async () => {
  const theirs = fs.mkdtempSync(path.join(base, 'theirs-'));
  fs.chownSync(theirs, NOBODY, NOBODY);
  const inTheirs = path.join(theirs, 'rootfs');
  fs.mkdirSync(inTheirs);
  // nobody can swap the rootfs for one of theirs at any time.
  asNobody(`mv '${inTheirs}' '${inTheirs}.aside' && mv '${inTheirs}.aside' '${inTheirs}'`);
  const closed = fs.mkdtempSync(path.join(base, 'closed-'));
  const shared = path.join(closed, 'shared');
  fs.mkdirSync(shared);
  fs.chmodSync(shared, 0o777);
  const inShared = path.join(shared, 'rootfs');
  fs.mkdirSync(inShared);
  for (const [rootfs, bad, why] of [
    [inTheirs, theirs, `owner uid ${NOBODY}, mode 0700\\) belongs to uid ${NOBODY}`],
    [inShared, shared, 'owner uid 0, mode 0777\\) is writable by its group and others'],
  ] as const) {
    const run = await box.run(
      ['--backend', 'qemu', '--net', 'none', '--rootfs', rootfs, '--exec', '/bin/true'],
      {
        timeoutMs: 120_000,
      },
    );
    assert.equal(run.code, 125, run.stderr);
    assert.match(run.stderr, new RegExp(`refusing --rootfs ${rootfs}: ${bad} \\(${why}`));
    assertNothingStarted(run);
  }
});

/** An instance directory made under umask 000 (0777 up from the data dir), into which nobody planted a rootfs/ and an api-port FIFO. */
async function plantedInstance(name: string): Promise<{ dir: string; rootfs: string; fifo: string }> {
  const dir = path.join(box.dataDir, 'instances', name);
  fs.mkdirSync(dir, { recursive: true });
  for (const d of [box.dataDir, path.dirname(dir), dir]) fs.chmodSync(d, 0o777);
  const rootfs = path.join(dir, 'rootfs');
  await preparedRootfs(rootfs, name);
  chownR(rootfs, NOBODY);
  const fifo = path.join(dir, 'api-port');
  asNobody(`mkfifo '${fifo}'`);
  return { dir, rootfs, fifo };
}

test("gateway in a 0777 instance dir holding nobody's rootfs/ and api-port FIFO: refused at once (no hang), nothing booted", {
  skip,
  timeout: 60_000,
}, async () => {
  const { dir } = await plantedInstance('planted-gw');
  const t0 = Date.now();
  // node itself (not the sh launcher), so a hang is ended by the timeout's SIGKILL.
  const run = await box.run(['--name', 'planted-gw'], { timeoutMs: 20_000, direct: true });
  assert.notEqual(run.signal, 'SIGKILL', `the gateway hung (killed after 20 s):\n${run.stderr}`);
  assert.ok(Date.now() - t0 < 15_000, 'refused promptly');
  assert.equal(run.code, 125, run.stderr);
  assert.match(
    run.stderr,
    new RegExp(
      `refusing to use ${dir}: it was open to other users \\(mode 0777\\), and ${dir}/(rootfs|api-port) in it belongs to uid ${NOBODY}`,
    ),
  );
  assert.match(run.stderr, /hint: another user may have planted it: remove it \(rm -rf /);
  assertNothingStarted(run);
  // Still refused the next time: the directory was not made to look trusted.
  const again = await box.run(['--name', 'planted-gw'], { timeoutMs: 20_000, direct: true });
  assert.equal(again.code, 125, again.stderr);
  assert.match(again.stderr, /refusing to use .*planted-gw: it was open to other users/);
});

test("run in a 0777 instance dir holding nobody's rootfs/ and api-port FIFO: refused, the libkrun double never called", {
  skip,
  timeout: 120_000,
}, async () => {
  const { dir } = await plantedInstance('planted-run');
  const { log, env } = krun();
  const run = await box.run(
    ['--backend', 'libkrun', '--net', 'none', '--name', 'planted-run', '--exec', '/bin/true'],
    {
      env,
      timeoutMs: 100_000,
    },
  );
  assert.equal(run.code, 125, run.stderr);
  assert.match(run.stderr, new RegExp(`refusing to use ${dir}: it was open to other users`));
  assertNothingStarted(run, log);
});
