import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startHint } from './exec-into.ts';

const MAIN = new URL('./main.ts', import.meta.url).pathname;

test('exec on a stopped run instance suggests running its command again, not booting a gateway', () => {
  const hint = startHint('web', { mode: 'run', command: ['python3', '-m', 'http.server', "it's"] }, false);
  assert.match(hint, /openshell-vm run --name web --detach -- python3 -m http\.server 'it'\\''s'/);
  assert.doesNotMatch(hint, /openshell-vm start web/);
  // Without a state file: no rootfs means it can only have been a command.
  const bare = startHint('web', undefined, false);
  assert.match(bare, /openshell-vm run --name web --detach -- CMD/);
  assert.doesNotMatch(bare, /start the gateway \(/);
  assert.match(startHint('gw', { mode: 'gateway', command: undefined }, true), /openshell-vm start gw\b/);
  const both = startHint('gw', undefined, true);
  assert.match(both, /openshell-vm start gw\b/);
  assert.match(both, /openshell-vm run --name gw --detach -- CMD/);
});

test('exec web (no VM): an instance with no rootfs and no state gets the run command in its hint', async (t) => {
  const data = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-exec-hint-'));
  t.after(() => fs.rm(data, { recursive: true, force: true }));
  await fs.mkdir(path.join(data, 'instances', 'web'), { recursive: true, mode: 0o700 });
  const r = spawnSync(process.execPath, [MAIN, 'exec', 'web', '--', 'true'], {
    env: { ...process.env, OPENSHELL_VM_DATA_DIR: data },
    encoding: 'utf8',
  });
  assert.equal(r.status, 125, r.stderr);
  assert.match(r.stderr, /instance 'web' is not running/);
  assert.match(r.stderr, /hint: start a command in it \(openshell-vm run --name web --detach -- CMD/);
});
