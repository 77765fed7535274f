// The CLI conventions users expect from Lima, Colima, podman machine and minikube, through the
// installed launcher (bin/openshell-vm): start/create, shell, version, did-you-mean, global flags
// anywhere, --help per command, completion, and errors as JSON in --json mode. Only the shell
// test boots a microVM (run it under flock /tmp/ovm-vm.lock).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { isSameProcess } from '../../src/supervisor/identity.ts';
import { CLI, sandbox } from './harness.ts';

const box = sandbox();
after(() => box.cleanup());

interface Result {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: readonly string[], options: { input?: string; env?: NodeJS.ProcessEnv } = {}): Result {
  const r = spawnSync(CLI, args, {
    env: { ...box.env, ...options.env },
    input: options.input ?? '',
    encoding: 'utf8',
    timeout: 600_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** stdout as the one JSON error object --json mode prints. */
function jsonError(r: Result): { message: string; hint?: string } {
  const parsed = JSON.parse(r.stdout) as { error: { message: string; hint?: string } };
  assert.equal(typeof parsed.error.message, 'string', r.stdout);
  return parsed.error;
}

describe('did you mean', () => {
  test('an unknown command or option names the closest one, exit 2', () => {
    for (const [args, typed, meant] of [
      [['lsit'], 'lsit', 'list'],
      [['stauts', 'gw'], 'stauts', 'status'],
      [['--detatch'], '--detatch', '--detach'],
      [['run', '--cpu', '2', '--', 'true'], '--cpu', '--cpus'],
      [['exec', 'gw', '--workdri', '/', '--', 'true'], '--workdri', '--workdir'],
      [['list', '--jsno'], '--jsno', '--json'],
    ] as const) {
      const r = cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      const kind = typed.startsWith('-') ? 'option' : 'command';
      assert.ok(
        r.stderr.startsWith(
          `openshell-vm: error: unknown ${kind} '${typed}' (did you mean ${meant}?)\n  hint: `,
        ),
        r.stderr,
      );
    }
    const far = cli(['frobnicate']);
    assert.equal(far.code, 2);
    assert.match(far.stderr, /unknown command 'frobnicate'\n {2}hint: see openshell-vm --help/);
  });
});

describe('version and help', () => {
  test('version, --version and -V print the same; version --json is {"version"}', () => {
    const [a, b, c] = [cli(['version']), cli(['--version']), cli(['-V'])];
    assert.equal(a.code, 0);
    assert.match(a.stdout, /^openshell-vm \d+\.\d+\.\d+\n$/);
    assert.equal(b.stdout, a.stdout);
    assert.equal(c.stdout, a.stdout);
    const json = cli(['version', '--json']);
    assert.deepEqual(JSON.parse(json.stdout), { version: a.stdout.trim().split(' ')[1] });
    assert.equal(cli(['--json', 'version']).stdout, json.stdout, '--json before the command');
  });

  test('COMMAND --help and help COMMAND: that command only, exit 0', () => {
    const overview = cli(['--help']).stdout;
    for (const command of [
      'run',
      'start',
      'exec',
      'shell',
      'status',
      'list',
      'stop',
      'logs',
      'delete',
      'version',
      'completion',
    ]) {
      const own = cli([command, '--help']);
      assert.equal(own.code, 0, `${command} --help: ${own.stderr}`);
      assert.match(own.stdout, new RegExp(`^Usage: openshell-vm ${command}\\b`));
      assert.ok(
        !own.stdout.includes('Global options, before or after'),
        `${command} --help is not the overview`,
      );
      const viaHelp = cli(['help', command]);
      assert.equal(viaHelp.code, 0);
      assert.equal(viaHelp.stdout, own.stdout, `help ${command}`);
      assert.equal(cli(['-h', command]).stdout, own.stdout, `-h before ${command}`);
    }
    const exec = cli(['exec', '--help']).stdout;
    assert.match(exec, /--workdir/);
    assert.doesNotMatch(exec, /--ready-timeout|--boot-timeout|--source/, "other commands' options");
    assert.doesNotMatch(cli(['status', '--help']).stdout, /--timeout|--follow/);
    assert.match(cli(['create', '--help']).stdout, /^Usage: openshell-vm start/);
    assert.equal(cli(['help']).stdout, overview);
    assert.equal(cli(['help', 'lsit']).code, 2);
  });
});

describe('global flags anywhere, never from the guest command', () => {
  test('--json, --debug, -q and --help before or after the command', () => {
    const after = cli(['list', '--json']);
    assert.equal(after.code, 0, after.stderr);
    assert.deepEqual(JSON.parse(after.stdout), []);
    assert.equal(cli(['--json', 'list']).stdout, after.stdout);
    assert.equal(cli(['-q', '--debug', 'list', '--json', '-q']).stdout, after.stdout);
    assert.equal(cli(['status', '--help', 'gw']).code, 0);
    const debug = cli(['status', 'nosuch', '--debug']);
    assert.equal(debug.code, 125);
    assert.match(debug.stderr, /there is no instance 'nosuch'/);
  });

  test("a --json or --help after run's command is the guest's", () => {
    // --vcpus 0 is refused before anything starts; --json there would have made it JSON.
    const guest = cli(['run', '--vcpus', '0', '--', '/bin/echo', '--json', '--help']);
    assert.equal(guest.code, 2, guest.stderr);
    assert.equal(guest.stdout, '', "the error is not JSON: --json is the guest command's");
    assert.match(guest.stderr, /--vcpus: 0 is out of range/);
    const alsoGuest = cli(['-q', 'run', '--vcpus', '0', '/bin/echo', '--json']);
    assert.equal(alsoGuest.code, 2);
    assert.equal(alsoGuest.stdout, '');
  });

  test('--cpus and --memory are --vcpus and --mem', () => {
    const r = cli(['run', '--cpus', '0', '--', 'true']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--vcpus: 0 is out of range/);
    const both = cli(['run', '--cpus', '1', '--vcpus', '1', '--', 'true']);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /--vcpus \(or --cpus\) was given more than once/);
    assert.equal(cli(['run', '--memory', '1', '--', 'true']).code, 2, 'below the minimum, as --mem 1');
  });
});

describe('errors in --json mode', () => {
  test('JSON on stdout, the exit code unchanged, usage errors too', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-noruntime-'));
    after(() => fs.rmSync(empty, { recursive: true, force: true }));
    const runtime = cli(['runtime', '--json'], { env: { OPENSHELL_VM_RUNTIME_DIR: empty } });
    assert.equal(runtime.code, 125, runtime.stderr);
    const e = jsonError(runtime);
    assert.match(e.message, /libkrun/);
    assert.ok(e.hint, 'the hint too');
    assert.match(runtime.stderr, /^openshell-vm: error: /, 'and the human lines on stderr');

    const status = cli(['status', '--json', 'nosuch']);
    assert.equal(status.code, 125);
    assert.deepEqual(jsonError(status), {
      message: "there is no instance 'nosuch'",
      hint: 'see: openshell-vm list',
    });

    for (const args of [
      ['list', '--json', '--bogus'],
      ['--json', 'lsit'],
      ['status', '--json', 'bad/name'],
      ['--json', '--exec', '/bin/true'],
      ['--json', 'run', '--', 'true'],
      ['start', 'gw', '--json', '--', 'x'],
    ]) {
      const r = cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.ok(jsonError(r).hint, args.join(' '));
    }
    // Without --json, stdout stays empty.
    assert.equal(cli(['status', 'nosuch']).stdout, '');
  });
});

describe('start, create and shell without a VM', () => {
  test('start of an instance with no rootfs: the build command; with a command: refused', () => {
    for (const word of ['start', 'create']) {
      const r = cli([word, 'gw']);
      assert.equal(r.code, 125, r.stderr);
      assert.match(r.stderr, /there is no rootfs at .*instances\/gw\/rootfs/);
      assert.match(r.stderr, /hint: build it: openshell-vm prepare-rootfs --name gw/);
    }
    const command = cli(['start', 'gw', '--exec', '/bin/true']);
    assert.equal(command.code, 2);
    assert.match(command.stderr, /start boots the gateway and takes no command/);
    assert.match(command.stderr, /run --name NAME --detach/);
    const two = cli(['start', 'gw', '--name', 'other']);
    assert.equal(two.code, 2);
    assert.match(two.stderr, /two names given/);
    assert.equal(fs.existsSync(path.join(box.dataDir, 'instances', 'gw')), false, 'nothing was created');
  });

  test('shell: an unknown instance and a stopped one, each with what to do', () => {
    const unknown = cli(['shell', 'nosuch']);
    assert.equal(unknown.code, 125);
    assert.match(
      unknown.stderr,
      /error: there is no instance 'nosuch'\n {2}hint: see: openshell-vm list; start one/,
    );
    fs.mkdirSync(path.join(box.dataDir, 'instances', 'idle'), { recursive: true, mode: 0o700 });
    const stopped = cli(['shell', 'idle']);
    assert.equal(stopped.code, 125);
    assert.match(stopped.stderr, /error: instance 'idle' is not running\n {2}hint: start a command in it/);
    const withCommand = cli(['shell', 'idle', '--', 'ls']);
    assert.equal(withCommand.code, 2);
    assert.match(withCommand.stderr, /shell takes no command/);
  });
});

describe('completion', () => {
  test('bash sources the script from the launcher', () => {
    const r = spawnSync('bash', ['-c', `source <("${CLI}" completion bash) && complete -p openshell-vm`], {
      env: box.env,
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /-F _openshell_vm openshell-vm/);
    const bad = cli(['completion', 'tcsh']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /no script for shell 'tcsh'/);
  });
});

describe('a running instance (boots a microVM)', () => {
  test('shell runs a login shell: its commands from stdin, its exit code; start leaves it running', async () => {
    const name = 'sh1';
    const started = cli([
      'run',
      '--name',
      name,
      '--detach',
      '-q',
      '--cpus',
      '1',
      '--memory',
      '256',
      '--',
      'sleep',
      '600',
    ]);
    assert.equal(started.code, 0, started.stderr);
    const state = JSON.parse(
      fs.readFileSync(path.join(box.dataDir, 'instances', name, 'state.json'), 'utf8'),
    );
    try {
      assert.equal(state.vcpus, 1);
      assert.equal(state.memMib, 256);
      const shell = cli(['shell', name], { input: 'echo hi; echo "login: $0"; exit 4\n' });
      assert.equal(shell.code, 4, shell.stderr);
      assert.match(shell.stdout, /^hi\n/);
      assert.match(shell.stdout, /login: -?\/?(bin\/)?sh/);
      const again = cli(['start', name]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(
        again.stderr,
        new RegExp(`instance '${name}' is already running \\(pid ${state.supervisor.pid}\\)`),
      );
      const json = cli(['start', name, '--json']);
      assert.deepEqual(JSON.parse(json.stdout), {
        name,
        status: 'running',
        pid: state.supervisor.pid,
        alreadyRunning: true,
      });
      const stop = cli(['stop', name, '--json']);
      assert.equal(stop.code, 0, stop.stderr);
      assert.deepEqual(JSON.parse(stop.stdout), { name, wasRunning: true, forced: false });
    } finally {
      cli(['stop', name]);
    }
    for (const p of [state.supervisor, ...state.processes]) {
      assert.equal(await isSameProcess(p.pid, p.startTime), false, `${p.name} (pid ${p.pid}) still runs`);
    }
    const gone = cli(['shell', name]);
    assert.equal(gone.code, 125);
    assert.match(
      gone.stderr,
      /instance 'sh1' is not running\n {2}hint: start its command again \(openshell-vm run --name sh1 --detach -- sleep 600\)|instance 'sh1' is not running/,
    );
  });
});
