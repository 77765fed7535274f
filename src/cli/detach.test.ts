import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type OptionSpec, parseArgs } from './args.ts';
import { CLI_MAIN, supervisorArgv, supervisorExitCode } from './detach.ts';

// The shapes of main.ts's options that matter here.
const SPECS: OptionSpec[] = [
  { name: 'exec', kind: 'value' },
  { name: 'args', kind: 'greedy-any' },
  { name: 'name', kind: 'value' },
  { name: 'detach', short: 'd', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
];

/** main.ts's parse of `run`: options, `run`, more options, then the guest's command. */
function guestCommand(argv: readonly string[]): readonly string[] {
  const first = parseArgs(argv, SPECS, true);
  assert.equal(first.rest[0], 'run');
  return parseArgs(first.rest.slice(1), SPECS, true).rest;
}

test("--detach: the supervisor's argv keeps the guest's own --detach and -d", () => {
  for (const argv of [
    ['run', '--detach', '--', '/bin/echo', 'a', '--detach', 'b'],
    ['-d', 'run', '-q', '--', '/bin/echo', '-d', '--detach'],
    ['run', '--detach', '/bin/echo', 'a', '--detach'],
  ]) {
    const guest = guestCommand(argv);
    const result = supervisorArgv(argv, guest.length);
    assert.deepEqual(guestCommand(result), guest, `the guest's command is kept whole: ${argv.join(' ')}`);
    const own = result.slice(0, result.length - guest.length);
    assert.ok(
      !own.includes('--detach') && !own.includes('-d'),
      `our own --detach is gone: ${result.join(' ')}`,
    );
  }
  assert.deepEqual(supervisorArgv(['run', '--detach', '--', '/bin/echo', 'a', '--detach', 'b'], 4), [
    'run',
    '--',
    '/bin/echo',
    'a',
    '--detach',
    'b',
  ]);
});

test('--detach: without a guest command (the gateway, --exec/--args) every --detach is ours', () => {
  assert.deepEqual(supervisorArgv(['--name', 'gw', '--detach', '-q', '-d'], 0), ['--name', 'gw', '-q']);
  // --args stops at our own options, so a --detach after it is the flag.
  assert.deepEqual(supervisorArgv(['--exec', '/bin/echo', '--args', 'a', '--detach'], 0), [
    '--exec',
    '/bin/echo',
    '--args',
    'a',
  ]);
  assert.deepEqual(supervisorArgv(['--detach'], 5), ['--detach'], 'a count past the start keeps every word');
});

test('--detach: a supervisor that dies of signal N gives 128+N, not 143 for every signal', async () => {
  for (const [signal, code] of [
    ['SIGKILL', 137],
    ['SIGINT', 130],
    ['SIGHUP', 129],
    ['SIGTERM', 143],
  ] as const) {
    // A real child that dies of the signal, as the 'exit' event reports it.
    const child = spawn(process.execPath, [
      '-e',
      `process.kill(process.pid, '${signal}'); setTimeout(() => {}, 5000)`,
    ]);
    const [exitCode, exitSignal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    assert.equal(exitSignal, signal);
    assert.equal(supervisorExitCode(exitCode, exitSignal), code, signal);
  }
  assert.equal(supervisorExitCode(3, null), 3, "the supervisor's own code is kept");
  assert.equal(supervisorExitCode(0, null), 0);
  assert.equal(supervisorExitCode(null, null), 125, 'neither a code nor a signal is our failure');
});

test("the detached supervisor runs the CLI's main module beside detach.ts, not process.argv[1]", () => {
  // process.argv[1] is whatever program loaded this code: here the test file, in a user's program
  // the user's own script.
  assert.equal(CLI_MAIN, fileURLToPath(new URL('./main.ts', import.meta.url)));
  assert.ok(fs.existsSync(CLI_MAIN));
  assert.notEqual(CLI_MAIN, process.argv[1]);
});
