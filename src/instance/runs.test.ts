import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { isAlive, processStartTime } from '../supervisor/identity.ts';
import { createRun, finishRun, RUN_FILES, socketDirFor, sweepStaleRuns } from './runs.ts';

function env(t: { after: (fn: () => void) => void }): HostEnvironment {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-runs-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return testEnvironment(base, {
    cacheDir: path.join(base, 'cache'),
    dataDir: path.join(base, 'data'),
    runtimeDir: path.join(base, 'rt'),
  });
}

test('a long run directory puts its sockets in the short runtime directory', () => {
  assert.equal(socketDirFor('/short/run', '/rt', 'id'), '/short/run');
  assert.equal(socketDirFor(`/${'x'.repeat(100)}/run`, '/rt', 'id'), '/rt/id');
});

test('a finished run is removed, a failed one keeps its logs but not its sockets', async (t) => {
  const e = env(t);
  const ok = await createRun(e, 'default');
  await finishRun(ok, false);
  assert.equal(fs.existsSync(ok.dir), false);
  const bad = await createRun(e, 'default');
  fs.writeFileSync(bad.consoleLog, 'panic');
  fs.writeFileSync(path.join(bad.dir, 'vfs.sock'), '');
  await finishRun(bad, true);
  assert.deepEqual(fs.readdirSync(bad.dir).sort(), [RUN_FILES.consoleLog, RUN_FILES.kept]);
});

test("sweep reaps a dead owner's run, stopping its helper only while pid and start time match", async (t) => {
  const e = env(t);
  const run = await createRun(e, 'default');
  // Pretend the owner died: rewrite owner.json with a pid that does not exist.
  const owner = JSON.parse(fs.readFileSync(path.join(run.dir, RUN_FILES.owner), 'utf8'));
  fs.writeFileSync(path.join(run.dir, RUN_FILES.owner), JSON.stringify({ ...owner, pid: 2 ** 22 + 17 }));
  const helper = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.after(() => helper.kill('SIGKILL'));
  const pid = helper.pid as number;
  fs.writeFileSync(
    path.join(run.dir, 'qemu.pid'),
    JSON.stringify({ name: 'qemu', pid, startTime: await processStartTime(pid), argv: ['sleep'] }),
  );
  // A pid record whose start time does not match must not be touched.
  const other = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.after(() => other.kill('SIGKILL'));
  fs.writeFileSync(
    path.join(run.dir, 'virtiofsd.pid'),
    JSON.stringify({ name: 'virtiofsd', pid: other.pid, startTime: 'not-its-start-time', argv: [] }),
  );

  const live = await createRun(e, 'default'); // owned by this (live) process: left alone
  const report = await sweepStaleRuns(e, 'default');
  assert.deepEqual(report.removedRuns, [run.id]);
  assert.deepEqual(
    report.stoppedProcesses.map((p) => p.pid),
    [pid],
  );
  if (helper.exitCode === null && helper.signalCode === null)
    await new Promise((r) => helper.once('exit', r));
  assert.equal(helper.signalCode, 'SIGTERM');
  assert.equal(isAlive(other.pid as number), true);
  assert.equal(fs.existsSync(run.dir), false);
  assert.equal(fs.existsSync(live.dir), true);
});
