import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { type OptionSpec, parseArgs, single } from './args.ts';

const SPECS: OptionSpec[] = [
  { name: 'exec', kind: 'value' },
  { name: 'args', kind: 'greedy-any' },
  { name: 'env', kind: 'greedy-plain', repeatable: true },
  { name: 'mem', kind: 'value' },
  { name: 'quiet', short: 'q', kind: 'flag' },
];

test('--args takes following words, even ones starting with -, up to our next option', () => {
  const a = parseArgs(
    ['--exec', '/bin/sh', '--args', '-c', 'echo -n hi', '--x', '--mem', '256'],
    SPECS,
    false,
  );
  assert.deepEqual(a.values.get('args'), ['-c', 'echo -n hi', '--x']);
  assert.equal(single(a, 'mem'), '256');
});

test('--args=WORD adds exactly one word, even one that names an option', () => {
  const a = parseArgs(['--args=--mem', '--args', 'x'], SPECS, false);
  assert.deepEqual(a.values.get('args'), ['--mem', 'x']);
});

test('--args with nothing after it means no arguments', () => {
  assert.deepEqual(parseArgs(['--exec', '/bin/true', '--args'], SPECS, false).values.get('args'), []);
});

test('--env is greedy for KEY=VALUE words and repeatable', () => {
  const a = parseArgs(['--env', 'A=1', 'B=2', '--env', 'C=3', 'run'], SPECS, true);
  assert.deepEqual(a.values.get('env'), ['A=1', 'B=2', 'C=3']);
  assert.deepEqual(a.rest, ['run']);
});

test('-- and the first positional word end the options when allowed', () => {
  assert.deepEqual(parseArgs(['-q', '--', '/bin/echo', '--mem'], SPECS, true).rest, ['/bin/echo', '--mem']);
  assert.deepEqual(parseArgs(['-q', '/bin/echo', '-n'], SPECS, true).rest, ['/bin/echo', '-n']);
});

test('bad usage is a UsageError naming the option', () => {
  const fails = (argv: string[], re: RegExp) =>
    assert.throws(
      () => parseArgs(argv, SPECS, false),
      (e: unknown) => e instanceof UsageError && re.test(e.message),
    );
  fails(['--bogus'], /unknown option '--bogus'/);
  fails(['--mem'], /--mem needs a value/);
  fails(['--mem', '1', '--mem', '2'], /--mem was given more than once/);
  fails(['--quiet=yes'], /--quiet takes no value/);
  fails(['stray'], /unexpected argument 'stray'/);
  fails(['--env'], /--env needs a value/);
});
