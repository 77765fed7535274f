import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import {
  leadingGlobalFlags,
  MAIN_OPTIONS,
  type OptionSpec,
  ownOptionWords,
  parseArgs,
  single,
  startArgv,
  subcommandArgv,
} from './args.ts';

const MAIN = new URL('./main.ts', import.meta.url).pathname;

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

test('global flags: --debug and -q are taken by every parser, and before a subcommand go where its options begin', () => {
  const own: OptionSpec[] = [{ name: 'json', kind: 'flag' }];
  const a = parseArgs(['-q', '--debug', '--json'], own, false);
  assert.deepEqual([...a.flags].sort(), ['debug', 'json', 'quiet']);
  assert.deepEqual(leadingGlobalFlags(['--debug', '-q', 'list', '-q']), {
    flags: ['--debug', '-q'],
    rest: ['list', '-q'],
  });
  assert.deepEqual(leadingGlobalFlags(['--name', 'gw', 'list']).flags, []);
  assert.deepEqual(subcommandArgv(['--debug'], ['web', '--', 'ls'], false), ['--debug', 'web', '--', 'ls']);
  assert.deepEqual(subcommandArgv(['-q'], ['check', '--json'], true), ['check', '-q', '--json']);
  assert.deepEqual(subcommandArgv(['-q'], [], true), [], 'no verb: only the usage is printed');
  assert.deepEqual(subcommandArgv(['--help'], [], true), ['--help'], 'no verb: --help is the usage');
  assert.deepEqual(leadingGlobalFlags(['--json', '-h', 'status', 'gw']).flags, ['--json', '-h']);
});

test('global flags before a subcommand (no VM): --debug list and -q doctor are accepted', async (t) => {
  const data = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-globals-'));
  t.after(() => fs.rm(data, { recursive: true, force: true }));
  const cli = (...argv: string[]) =>
    spawnSync(process.execPath, [MAIN, ...argv], {
      env: { ...process.env, OPENSHELL_VM_DATA_DIR: data },
      encoding: 'utf8',
    });
  for (const argv of [
    ['--debug', 'list'],
    ['-q', 'list', '--json'],
    ['-q', '--debug', 'doctor', '--json'],
  ]) {
    const r = cli(...argv);
    assert.doesNotMatch(r.stderr, /unexpected argument|unknown option/, `${argv.join(' ')}: ${r.stderr}`);
    assert.ok(
      r.status === 0 || (argv.includes('doctor') && r.status === 1),
      `${argv.join(' ')}: ${r.status} ${r.stderr}`,
    );
  }
  const missing = cli('--debug', 'status', 'nosuch');
  assert.equal(missing.status, 125);
  assert.match(missing.stderr, /there is no instance 'nosuch'/);
});

test("own option words: --debug and --json are openshell-vm's only before the guest's command", () => {
  const own = (...argv: string[]) => ownOptionWords(argv, MAIN_OPTIONS, 'run');
  assert.deepEqual(own('--debug', '--json'), ['--debug', '--json']);
  assert.deepEqual(own('run', '--debug', '--', 'prog', '--json'), ['--debug']);
  assert.deepEqual(
    own('-q', 'run', '--json', 'prog', '--debug'),
    ['-q', '--json'],
    'the command from PATH on',
  );
  assert.deepEqual(own('run', '--', 'prog', '--', '--debug'), []);
  // Values are skipped, greedy --args up to our next option, --env's KEY=VALUE words.
  assert.deepEqual(own('--name', 'gw', '--json'), ['--name', '--json']);
  assert.deepEqual(own('--exec', '/bin/sh', '--args', '-c', 'x', '--json'), ['--exec', '--args', '--json']);
  assert.deepEqual(own('--env', 'A=1', 'B=2', '--debug'), ['--env', '--debug']);
  // Unknown options do not stop the scan: the error they cause is still reported as JSON.
  assert.deepEqual(own('--bogus', '--json'), ['--bogus', '--json']);
});

test('aliases: --cpus and --memory land in --vcpus and --mem; both spellings at once is twice', () => {
  const a = parseArgs(['--cpus', '4', '--memory', '4GiB'], MAIN_OPTIONS, false);
  assert.equal(single(a, 'vcpus'), '4');
  assert.equal(single(a, 'mem'), '4GiB');
  assert.equal(single(parseArgs(['--vcpus=2', '--mem=4096M'], MAIN_OPTIONS, false), 'mem'), '4096M');
  assert.throws(
    () => parseArgs(['--cpus', '2', '--vcpus', '3'], MAIN_OPTIONS, false),
    /--vcpus \(or --cpus\) was given more than once/,
  );
});

test('an unknown option names the closest known one and the command whose help to read', () => {
  const fails = (argv: string[], command: string | undefined, message: RegExp, hint: RegExp) =>
    assert.throws(
      () => parseArgs(argv, MAIN_OPTIONS, false, command),
      (e: unknown) => e instanceof UsageError && message.test(e.message) && hint.test(e.hint ?? ''),
    );
  fails(
    ['--detatch'],
    undefined,
    /unknown option '--detatch' \(did you mean --detach\?\)/,
    /^use --detach; see openshell-vm --help$/,
  );
  fails(['--cpu', '2'], 'run', /did you mean --cpus\?/, /see openshell-vm run --help/);
  fails(['--memroy', '2G'], 'run', /did you mean --memory\?/, /use --memory/);
  fails(['--frobnicate'], 'run', /^unknown option '--frobnicate'$/, /^see openshell-vm run --help$/);
});

test('start NAME OPTIONS is the gateway with --name NAME --detach (what --detach starts again)', () => {
  const none = { name: false, detach: false };
  assert.deepEqual(startArgv(['gw', '--cpus', '2'], 0, 'gw', none), [
    '--name',
    'gw',
    '--cpus',
    '2',
    '--detach',
  ]);
  assert.deepEqual(startArgv(['-q', '--cpus', '2', 'gw', '--json'], 3, 'gw', none), [
    '--name',
    'gw',
    '-q',
    '--cpus',
    '2',
    '--json',
    '--detach',
  ]);
  assert.deepEqual(startArgv(['--name', 'gw', '-d'], undefined, 'gw', { name: true, detach: true }), [
    '--name',
    'gw',
    '-d',
  ]);
  assert.deepEqual(startArgv([], undefined, 'default', none), ['--name', 'default', '--detach']);
});
