import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type OptionSpec, parseArgs } from './args.ts';
import { supervisorArgv } from './detach.ts';

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
