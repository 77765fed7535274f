import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, test } from 'node:test';
import { HostError } from '../errors.ts';
import { Reporter } from './reporter.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-reporter-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const MAIN = new URL('./main.ts', import.meta.url).pathname;

const reporter = (eventsFile: string) => new Reporter({ stderr: new PassThrough(), quiet: true, eventsFile });

test('--events in a directory that does not exist: a HostError naming the path and the fix', () => {
  const file = path.join(dir, 'no', 'such', 'events.ndjson');
  assert.throws(
    () => reporter(file),
    (e: unknown) =>
      e instanceof HostError &&
      e.message.includes(file) &&
      e.message.includes('does not exist') &&
      (e.hint ?? '').includes(`mkdir -p ${path.dirname(file)}`),
  );
});

test('--events naming a directory: a HostError saying so', () => {
  assert.throws(
    () => reporter(dir),
    (e: unknown) => e instanceof HostError && e.message.includes(dir) && /is a directory/.test(e.message),
  );
});

test('--events FILE: created empty, one JSON object per event', () => {
  const file = path.join(dir, 'events.ndjson');
  fs.writeFileSync(file, 'old\n');
  const r = reporter(file);
  r.progress('hello', 1);
  assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')), {
    type: 'progress',
    message: 'hello',
    elapsedMs: 1,
  });
});

test('the CLI with --events /nonexistent/dir/file: a clear error before anything starts, no internal error', () => {
  const dataDir = path.join(dir, 'data');
  for (const argv of [
    ['run', '--events', '/nonexistent/dir/file', '--', '/bin/true'],
    ['--events', '/nonexistent/dir/file', '--exec', '/bin/true'],
    ['--events', '/nonexistent/dir/file'],
  ]) {
    const r = spawnSync(process.execPath, [MAIN, ...argv], {
      env: { ...process.env, OPENSHELL_VM_DATA_DIR: dataDir, XDG_RUNTIME_DIR: dir },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(r.status, 125, `${argv.join(' ')}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /internal error/);
    assert.match(r.stderr, /error: --events: cannot create the events file \/nonexistent\/dir\/file/);
    assert.match(r.stderr, /hint: create it \(mkdir -p \/nonexistent\/dir\)/);
    assert.equal(fs.existsSync(dataDir), false, 'nothing was started (no instance directory)');
  }
});
