import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { AWKWARD_ARGS as AWKWARD } from '../../test/fixtures/awkward.ts';
import { describeStatus, mergeEnv, parseStatus, renderRequestScript, shQuote } from './request.ts';

test('the request script hands argv, env and workdir to a POSIX sh byte for byte', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-req-'));
  try {
    const file = path.join(dir, 'request.sh');
    fs.writeFileSync(
      file,
      renderRequestScript({ exec: '/bin/x', args: AWKWARD, env: [['K', "v 'q' \n$X"]], workdir: "/w d/'x'" }),
    );
    // The guest runs busybox sh; the host's sh has the same POSIX quoting rules.
    const out = execFileSync(
      'sh',
      ['-c', `. "$1"; ovm_setenv; printf '%s\\0' "$ovm_exec" "$ovm_workdir" "$K" "$@"`, 'sh', file],
      {
        env: {},
      },
    );
    assert.deepEqual(out.toString('utf8').split('\0').slice(0, -1), [
      '/bin/x',
      "/w d/'x'",
      "v 'q' \n$X",
      ...AWKWARD,
    ]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('shQuote quotes single quotes', () => {
  assert.equal(shQuote("a'b"), `'a'\\''b'`);
});

test('mergeEnv keeps the defaults unless a user variable replaces one', () => {
  const env = new Map(
    mergeEnv([
      ['PATH', '/x'],
      ['FOO', '1'],
    ]),
  );
  assert.equal(env.get('PATH'), '/x');
  assert.equal(env.get('HOME'), '/root');
  assert.equal(env.get('FOO'), '1');
});

test('parseStatus reads "CODE REASON" and rejects anything else', () => {
  assert.deepEqual(parseStatus('137 exited\n'), { code: 137, reason: 'exited' });
  assert.deepEqual(parseStatus('127 not-found\n'), { code: 127, reason: 'not-found' });
  assert.equal(parseStatus(''), undefined);
  assert.equal(parseStatus('x exited'), undefined);
});

test('describeStatus explains every way the command did not run', () => {
  const req = { exec: '/nope', args: [], env: [], workdir: '/w' } as const;
  assert.equal(describeStatus({ code: 3, reason: 'exited' }, req), undefined);
  assert.match(describeStatus({ code: 127, reason: 'not-found' }, req) ?? '', /\/nope: not found/);
  assert.match(describeStatus({ code: 126, reason: 'not-executable' }, req) ?? '', /not executable/);
  assert.match(describeStatus({ code: 125, reason: 'workdir-missing' }, req) ?? '', /--workdir \/w/);
  assert.match(describeStatus({ code: 125, reason: 'no-stdout-port' }, req) ?? '', /guest init failed/);
});
