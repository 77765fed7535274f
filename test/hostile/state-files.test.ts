/**
 * Malformed state files (a wrong shape, truncated, a directory, oversized) and a full disk under
 * the instance lock: each reported by path with the fix, `list` still working for the others,
 * `stop` cleaning a broken one up, and nothing half-written left behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HostError } from '../../src/errors.ts';
import { takeInstanceLock } from '../../src/instance/lock.ts';
import { reapStaleInstance } from '../../src/instance/reap.ts';
import { testEnvironment } from '../fixtures/env.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'bin', 'openshell-vm');

function dataDir(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-state-files-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const name of ['bad', 'good'])
    fs.mkdirSync(path.join(dir, 'instances', name), { recursive: true, mode: 0o700 });
  return dir;
}

function cli(data: string, ...argv: string[]): { status: number | null; out: string } {
  const r = spawnSync(CLI, argv, {
    encoding: 'utf8',
    env: { ...process.env, OPENSHELL_VM_DATA_DIR: data, HOME: data },
    timeout: 60_000,
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

const SHAPES: Record<string, (file: string) => void> = {
  'a state.json of the wrong shape ({"version":1,"supervisor":{"pid":999999}})': (f) =>
    fs.writeFileSync(f, '{"version":1,"supervisor":{"pid":999999}}', { mode: 0o600 }),
  'a truncated state.json': (f) =>
    fs.writeFileSync(f, '{"version":1,"instance":"bad","mode":"run","phase":"runn', { mode: 0o600 }),
  'a directory in the place of state.json': (f) => fs.mkdirSync(f, { mode: 0o700 }),
  'an oversized state.json (2 MiB)': (f) =>
    fs.writeFileSync(f, `{"version":1,"pad":"${'x'.repeat(2 * 1024 * 1024)}"}`, { mode: 0o600 }),
};

for (const [shape, plant] of Object.entries(SHAPES)) {
  test(`${shape}: list shows it broken (the other instance too), status names the file, stop removes it, run refuses with the fix`, async (t) => {
    const data = dataDir(t);
    const file = path.join(data, 'instances', 'bad', 'state.json');
    plant(file);

    const list = cli(data, 'list');
    assert.equal(list.status, 0, list.out);
    assert.match(list.out, /^bad\s+broken: .*state\.json/m);
    assert.match(list.out, /^good\s+stopped/m);
    assert.doesNotMatch(list.out, /internal error/);

    const status = cli(data, 'status', 'bad');
    assert.equal(status.status, 0, status.out);
    assert.match(status.out, /bad: broken/);
    assert.match(status.out, new RegExp(`${file.replaceAll('/', '\\/')} .*openshell-vm stop bad`));

    // What `run` and the gateway do before they start.
    await assert.rejects(
      reapStaleInstance(testEnvironment(data, { dataDir: data }), 'bad'),
      (err: unknown) =>
        err instanceof HostError && err.message.includes(file) && /stop bad/.test(err.hint ?? ''),
    );

    const stop = cli(data, 'stop', 'bad');
    assert.equal(stop.status, 0, stop.out);
    assert.match(stop.out, /removed the broken state file/);
    assert.equal(fs.existsSync(file), false);
    assert.match(cli(data, 'status', 'bad').out, /bad: stopped/);
  });
}

test('a full disk (ENOSPC) while taking the lock: a HostError with a hint, and no lock file left behind', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to mount a small tmpfs');
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-enospc-'));
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { encoding: 'utf8' });
  if (mount.status !== 0) return t.skip(`cannot mount a tmpfs here: ${mount.stderr.trim()}`);
  t.after(() => {
    spawnSync('umount', [mnt]);
    fs.rmSync(mnt, { recursive: true, force: true });
  });
  fs.chmodSync(mnt, 0o700);
  const dir = path.join(mnt, 'instances', 'gw');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(path.join(mnt, 'instances'), 0o700);
  assert.throws(() => fs.writeFileSync(path.join(mnt, 'fill'), Buffer.alloc(256 * 1024)), /ENOSPC/);
  await assert.rejects(takeInstanceLock(dir, 'gw', 'testing'), (err: unknown) => {
    assert.ok(err instanceof HostError, String(err));
    assert.match(err.message, /no space left/);
    assert.match(err.hint ?? '', /free some space/);
    return true;
  });
  assert.deepEqual(fs.readdirSync(dir), []);
  // With space again, the lock is taken (nothing stale in the way).
  fs.rmSync(path.join(mnt, 'fill'));
  const release = await takeInstanceLock(dir, 'gw', 'testing');
  await release();
  assert.deepEqual(fs.readdirSync(dir), []);
});
