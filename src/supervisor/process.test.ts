import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { CommandError, HostError } from '../errors.ts';
import { isAlive } from './identity.ts';
import { SupervisedProcess } from './process.ts';

const HELPER = new URL('../../test/fixtures/helper.ts', import.meta.url).pathname;

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-sup-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const spec = (dir: string, mode: string, extra: object = {}) => ({
  name: `helper-${mode}`,
  command: process.execPath,
  args: [HELPER, mode, path.join(dir, 'h.sock')],
  logFile: path.join(dir, 'h.log'),
  pidFile: path.join(dir, 'h.pid'),
  ...extra,
});

test('start waits for a socket that appears late, records identity, stop removes the pid file', async (t) => {
  const dir = tempDir(t);
  const proc = await SupervisedProcess.start(
    spec(dir, 'late-socket', { ready: { kind: 'socket', path: path.join(dir, 'h.sock') } }),
  );
  assert.ok(fs.statSync(path.join(dir, 'h.sock')).isSocket());
  const record = JSON.parse(fs.readFileSync(path.join(dir, 'h.pid'), 'utf8'));
  assert.equal(record.pid, proc.pid);
  if (process.platform === 'linux') assert.ok(record.startTime);
  const result = await proc.stop();
  assert.equal(result.signal, 'SIGTERM');
  assert.equal(result.forced, false);
  assert.equal(isAlive(proc.pid), false);
  assert.equal(fs.existsSync(path.join(dir, 'h.pid')), false);
  assert.deepEqual(await proc.stop(), result, 'stop is idempotent');
});

test('a helper that crashes before ready fails fast with its argv, exit code and output', async (t) => {
  const dir = tempDir(t);
  const started = Date.now();
  await assert.rejects(
    SupervisedProcess.start(
      spec(dir, 'crash', {
        ready: { kind: 'socket', path: path.join(dir, 'h.sock') },
        readyTimeoutMs: 20_000,
      }),
    ),
    (e: unknown) =>
      e instanceof CommandError &&
      e.failure.exitCode === 3 &&
      /exited before it was ready/.test(e.message) &&
      /cannot open \/dev\/imaginary/.test(e.message),
  );
  assert.ok(Date.now() - started < 5_000, 'did not wait for the deadline');
  assert.equal(fs.existsSync(path.join(dir, 'h.pid')), false);
});

test('a helper that never becomes ready is stopped at the deadline', async (t) => {
  const dir = tempDir(t);
  let pid = 0;
  await assert.rejects(
    SupervisedProcess.start(
      spec(dir, 'never-ready', {
        ready: {
          kind: 'check',
          describe: 'a marker',
          check: async () => {
            pid = Number(JSON.parse(fs.readFileSync(path.join(dir, 'h.pid'), 'utf8')).pid);
            return false;
          },
        },
        readyTimeoutMs: 400,
      }),
    ),
    (e: unknown) =>
      e instanceof HostError && /did not become ready within 400 ms \(waited for a marker\)/.test(e.message),
  );
  assert.ok(pid > 0);
  assert.equal(isAlive(pid), false);
});

test('a helper that ignores SIGTERM is killed after the grace period', async (t) => {
  const dir = tempDir(t);
  const proc = await SupervisedProcess.start(
    spec(dir, 'ignore-term', { ready: { kind: 'socket', path: path.join(dir, 'h.sock') }, graceMs: 300 }),
  );
  const result = await proc.stop();
  assert.equal(result.signal, 'SIGKILL');
  assert.equal(result.forced, true);
  assert.equal(isAlive(proc.pid), false);
});

test('aborting during the readiness wait stops the helper', async (t) => {
  const dir = tempDir(t);
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error('user pressed Ctrl-C')), 100);
  await assert.rejects(
    SupervisedProcess.start(
      spec(dir, 'never-ready', { ready: { kind: 'socket', path: path.join(dir, 'h.sock') } }),
      { signal: controller.signal },
    ),
    /Ctrl-C/,
  );
  assert.equal(fs.existsSync(path.join(dir, 'h.pid')), false);
});

test('a missing binary is a HostError naming it', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(
    SupervisedProcess.start({ ...spec(dir, 'crash'), command: path.join(dir, 'no-such-binary') }),
    (e: unknown) => e instanceof HostError && /cannot start helper-crash/.test(e.message),
  );
});
