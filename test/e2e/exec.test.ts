// End-to-end: real microVMs under QEMU (TCG on these machines), through the installed CLI.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, test } from 'node:test';
import { AWKWARD_ARGS } from '../fixtures/awkward.ts';
import { CLI, type CliRun, ROOT, sandbox } from './harness.ts';

const PTY_DRIVE = path.join(ROOT, 'test', 'fixtures', 'pty-drive.py');

const box = sandbox();
after(() => box.cleanup());
const LIGHT = ['-q', '--vcpus', '1', '--mem', '256'];

async function exec(args: string[]): Promise<CliRun> {
  const result = await box.run(args);
  await box.assertClean(result);
  return result;
}

test('/bin/true exits 0 with the seed defaults (2 vCPUs, 2048 MiB), printing the accelerator', async () => {
  const r = await exec(['--exec', '/bin/true']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /accelerator: (kvm|hvf|tcg) \(/);
  assert.match(r.stderr, /\(2 vCPU, 2048 MiB\)/);
  assert.deepEqual(r.processes.map((p) => p.name).sort(), ['gvproxy', 'qemu', 'virtiofsd']);
  assert.equal(r.stdout.length, 0);
});

test('the default rootfs runs from memory: the root is a tmpfs copy, no virtio-fs stays mounted, writes vanish', async () => {
  // Under TCG, code in pages virtiofsd wrote straight into guest memory may run stale (the guest
  // agent crashed at random); the guest copies the small default root into a tmpfs instead.
  const r = await exec([
    ...LIGHT,
    'run',
    '--',
    '/bin/sh',
    '-c',
    'cat /proc/mounts; echo x > /probe && cat /probe',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout.toString();
  const mounts = out.split('\n').map((l) => l.split(' '));
  assert.deepEqual(mounts.find((m) => m[1] === '/')?.[2], 'tmpfs', `the root is not a tmpfs:\n${out}`);
  assert.equal(
    mounts.find((m) => m[2] === 'virtiofs'),
    undefined,
    `a virtio-fs share is still mounted:\n${out}`,
  );
  assert.match(out, /\nx\n$/);
  const again = await exec([...LIGHT, 'run', '--', '/bin/sh', '-c', 'test ! -e /probe']);
  assert.equal(again.code, 0, 'a write of one run is seen by the next');
});

test("sh -c 'exit 7' exits 7 and exit 42 exits 42", async () => {
  const seven = await exec([...LIGHT, '--exec', '/bin/sh', '--args', '-c', 'exit 7']);
  assert.equal(seven.code, 7, seven.stderr);
  const fortyTwo = await exec([...LIGHT, 'run', '--', '/bin/sh', '-c', 'exit 42']);
  assert.equal(fortyTwo.code, 42, fortyTwo.stderr);
});

test('a command killed by SIGKILL gives 137', async () => {
  const r = await exec([...LIGHT, 'run', '--', '/bin/sh', '-c', 'kill -9 $$']);
  assert.equal(r.code, 137, r.stderr);
});

// The guest agent alone looks the command up and says why it cannot run it (on the command's stderr).
test('a missing executable gives 127 and says so', async () => {
  const r = await exec([...LIGHT, '--exec', '/no/such/program']);
  assert.equal(r.code, 127);
  assert.match(r.stderr, /cannot run '\/no\/such\/program': No such file or directory/);
});

test('a non-executable file gives 126 and says so; a name is looked up in PATH', async () => {
  const r = await exec([...LIGHT, '--exec', '/etc/passwd']);
  assert.equal(r.code, 126);
  assert.match(r.stderr, /cannot run '\/etc\/passwd': Permission denied/);
  const byName = await exec([...LIGHT, 'run', '--', 'no-such-name']);
  assert.equal(byName.code, 127);
});

test('argv survives the trip byte for byte: spaces, quotes, empty strings, newlines, non-ASCII', async () => {
  const awkward = AWKWARD_ARGS;
  const r = await exec([...LIGHT, 'run', '--', '/bin/sh', '-c', 'printf "%s\\0" "$@"', 'argv0', ...awkward]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.toString('utf8').split('\0').slice(0, -1), awkward);
});

test('--args values may begin with - and --args/--env/--workdir apply', async () => {
  const r = await exec([
    ...LIGHT,
    '--exec',
    '/bin/sh',
    '--args',
    '-c',
    'printf "%s|%s|%s|%s\\n" "$(pwd)" "$GREETING" "$HOME" "$PATH"; env | sort >&2',
    '--env',
    'GREETING=hello world',
    'HOME=/tmp',
    '--workdir',
    '/etc',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout.toString(),
    `/etc|hello world|/tmp|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n`,
  );
  // Exactly the requested environment (sh itself adds PWD and SHLVL).
  const names = r.stderr
    .split('\n')
    .filter((l) => /^[A-Z_]+=/.test(l))
    .map((l) => l.split('=')[0]);
  assert.deepEqual(names, ['GREETING', 'HOME', 'PATH', 'PWD', 'SHLVL', 'TERM']);
});

test('a missing --workdir is reported as a failure to start the command (125)', async () => {
  const r = await exec([...LIGHT, '--workdir', '/nope', '--exec', '/bin/true']);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /cannot change to directory '\/nope': No such file or directory/);
});

test('stdin is passed through: echo hi | run -- cat prints hi; 3 MB round trip through cat arrives whole', async () => {
  const hi = spawnSync(CLI, [...LIGHT, 'run', '--', 'cat'], { env: box.env, input: 'hi\n' });
  assert.equal(hi.status, 0, hi.stderr.toString());
  assert.equal(hi.stdout.toString(), 'hi\n');
  const big = randomBytes(3 * 1024 * 1024);
  const r = await new Promise<{ code: number | null; out: Buffer; err: string }>((resolve) => {
    const child = spawn(CLI, [...LIGHT, '--net', 'none', 'run', '--', 'cat'], { env: box.env });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
    child.stdin.end(big);
  });
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out.length, big.length);
  assert.equal(
    createHash('sha256').update(r.out).digest('hex'),
    createHash('sha256').update(big).digest('hex'),
  );
});

test('run with a terminal gets a pseudo-terminal in the guest (window size, one CR per line, exit code)', () => {
  const pty = spawnSync(
    'python3',
    [
      PTY_DRIVE,
      'READY',
      '40',
      '100',
      '--',
      CLI,
      ...LIGHT,
      '--net',
      'none',
      'run',
      '--',
      'sh',
      '-c',
      'tty; stty size; echo READY; read x; stty size; exit 4',
    ],
    { env: box.env, timeout: 120_000 },
  );
  const out = pty.stdout.toString().replaceAll('\r', '');
  assert.equal(pty.status, 4, out + pty.stderr.toString());
  assert.match(pty.stdout.toString(), /^24 80\r\n/m);
  assert.doesNotMatch(pty.stdout.toString(), /\r\r\n/);
  assert.match(out, /^\/dev\/pts\/\d+$/m);
  assert.match(out, /^40 100$/m, 'the resize reached the guest');
});

test('stdout and stderr stay separate and apart from kernel and init output, and large output arrives whole', async () => {
  const r = await exec([
    ...LIGHT,
    'run',
    '--',
    '/bin/sh',
    '-c',
    'head -c 1048576 /dev/urandom > /tmp/r; base64 /tmp/r; base64 /tmp/r | sha256sum | cut -d" " -f1 >&2',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.length, 1_416_501); // base64 of 1 MiB with line breaks every 76 characters
  assert.doesNotMatch(r.stdout.toString(), /ovm-init|Linux version|\[\s*\d+\.\d+\]/);
  assert.equal(r.stderr.trim(), createHash('sha256').update(r.stdout).digest('hex'));
});

test('aarch64 guest under TCG: exit code and argv', async () => {
  const r = await exec([
    ...LIGHT,
    '--arch',
    'aarch64',
    'run',
    '--',
    '/bin/sh',
    '-c',
    'uname -m; printf "<%s>" "$@"; exit 42',
    '_',
    'a b',
    '',
  ]);
  assert.equal(r.code, 42, r.stderr);
  assert.equal(r.stdout.toString(), 'aarch64\n<a b><>');
  const t = await exec([...LIGHT, '--arch', 'aarch64', '--exec', '/bin/true']);
  assert.equal(t.code, 0);
});

const qemuStarted = (e: Record<string, unknown>) =>
  e.type === 'process' && e.action === 'started' && (e.process as { name: string }).name === 'qemu';
const commandStarted = (e: Record<string, unknown>) =>
  e.type === 'progress' && /command started/.test(String(e.message));

/** Runs a long command and sends `signal` to the CLI at the first event matching `when`. */
async function runAndSignal(
  when: (e: Record<string, unknown>) => boolean,
  signal: NodeJS.Signals,
): Promise<CliRun> {
  let sent = false;
  const r = await box.run([...LIGHT, '--exec', '/bin/sleep', '--args', '60'], {
    onEvent: (e, child) => {
      if (!sent && when(e)) {
        sent = true;
        child.kill(signal);
      }
    },
  });
  assert.ok(sent, `the event to send ${signal} at happened`);
  return r;
}

test('Ctrl-C while the VM boots stops everything and exits 130', async () => {
  const r = await runAndSignal(qemuStarted, 'SIGINT');
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: stopping the microVM/);
  await box.assertClean(r);
});

test('SIGTERM while the command runs stops everything and exits 143', async () => {
  const r = await runAndSignal(commandStarted, 'SIGTERM');
  assert.equal(r.code, 143, r.stderr);
  await box.assertClean(r);
});

test('after kill -9 of the CLI, the next run reaps the orphaned VM by pid and start time', async () => {
  const crashed = await runAndSignal(commandStarted, 'SIGKILL');
  assert.equal(crashed.signal, 'SIGKILL');
  assert.equal(crashed.processes.length, 3);
  const next = await box.run([...LIGHT, '--exec', '/bin/true']);
  assert.equal(next.code, 0, next.stderr);
  assert.match(next.stderr, /cleaned up 1 run\(s\) left by a CLI that died; stopped .*qemu \(pid \d+\)/);
  await box.assertClean(crashed);
  await box.assertClean(next);
});

test('a guest whose agent does not connect in time is stopped, with the console lines in the error', async () => {
  const r = await exec([...LIGHT, '--boot-timeout', '1', '--exec', '/bin/true']);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /error: the guest agent did not connect within 1 s/);
  assert.match(r.stderr, /hint: (last console lines:[\s\S]*)?see .*console\.log/);
});
