// The libkrun backend end to end through the CLI, with a TEST DOUBLE of libkrun's C ABI
// (test/fixtures/libkrun-double.c, compiled here) as the runtime: not libkrun, which cannot run
// on these machines. The double records the calls and then runs the workload as libkrun's init
// would, but on the host: the real guest agent (<root>/sbin/ovm-agent --workload) from the root it
// was given, dialling the host's agent socket where libkrun would connect its vsock port. So the
// agent path runs end to end (sessions, stdin, exit codes, SHUTDOWN, stop), and the commands the
// agent runs are host commands: the tests pick commands that mean the same on the host.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import type { InstanceState } from '../../src/instance/state.ts';
import { findGvproxy } from '../../src/net/gvproxy.ts';
import { isSameProcess, processStartTime } from '../../src/supervisor/identity.ts';
import { buildLibkrunDouble } from '../fixtures/libkrun-double.ts';
import { CLI, type CliRun, sandbox } from './harness.ts';

const box = sandbox();
const bundle = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krun-e2e-'));
after(() => {
  box.cleanup();
  fs.rmSync(bundle, { recursive: true, force: true });
});
buildLibkrunDouble(bundle);
fs.symlinkSync(await findGvproxy(readEnvironment()), path.join(bundle, 'gvproxy'));

const KRUN = ['--backend', 'libkrun', '--net', 'none'];

const calls = (log: string) =>
  fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { fn: string; args: unknown[] });

function krunEnv(extra: Record<string, string> = {}) {
  const log = path.join(bundle, `calls-${Date.now()}-${Math.random()}.ndjson`);
  return { log, env: { OPENSHELL_VM_RUNTIME_DIR: bundle, KRUN_DOUBLE_LOG: log, ...extra } };
}

/** A marker file a command writes its pid to (`echo $$ > FILE`), and that pid once it is there. */
function pidMarker() {
  const file = path.join(bundle, `pid-${Date.now()}-${Math.random()}`);
  return {
    file,
    async read(): Promise<{ pid: number; startTime: string | undefined }> {
      // The shell creates the file (its redirection) before it writes the pid: wait for the whole line.
      const line = () => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '');
      for (let i = 0; i < 500 && !/^\d+\n$/.test(line()); i++) await new Promise((r) => setTimeout(r, 20));
      const pid = Number(line());
      return { pid, startTime: await processStartTime(pid) };
    },
  };
}

async function assertGone(p: { pid: number; startTime: string | undefined }, what: string): Promise<void> {
  assert.ok(p.startTime, `${what} ran`);
  assert.equal(await isSameProcess(p.pid, p.startTime), false, `${what} (pid ${p.pid}) is still running`);
}

test('--backend libkrun: the workload is the agent, the command an agent session with its env and workdir', async () => {
  const { log, env } = krunEnv();
  const r = await box.run(
    [...KRUN, '--env', 'A=1', '--workdir', '/tmp', 'run', '--', '/bin/sh', '-c', 'echo "$A"; pwd; exit 42'],
    { env },
  );
  assert.equal(r.code, 42, r.stderr);
  assert.equal(r.stdout.toString(), '1\n/tmp\n');
  assert.match(r.stderr, /backend: libkrun \(requested with --backend libkrun \(runtime .*\)\)/);
  assert.match(r.stderr, /libkrunfw: libkrunfw.so.5/);
  assert.match(r.stderr, /type: stock/);
  assert.deepEqual(
    r.processes.map((p) => p.name),
    ['libkrun'],
  );
  const recorded = calls(log);
  const exec = recorded.find((c) => c.fn === 'krun_set_exec');
  assert.ok(exec, 'krun_set_exec was called');
  // libkrun's init runs the guest agent and nothing else: no user command, no user environment.
  assert.deepEqual(exec.args.slice(1), [
    '/sbin/ovm-agent',
    ['--vsock', '10000', '--workload'],
    ['HOME=/root', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'TERM=xterm'],
  ]);
  assert.equal(recorded.find((c) => c.fn === 'krun_set_workdir')?.args[1], '/');
  const vsock = recorded.find((c) => c.fn === 'krun_add_vsock_port2');
  assert.ok(vsock, 'krun_add_vsock_port2 was called');
  assert.equal(vsock.args[1], 10000);
  assert.match(String(vsock.args[2]), /\/agent\.sock$/);
  assert.equal(vsock.args[3], false);
  assert.ok(
    recorded.findIndex((c) => c.fn === 'krun_add_vsock') < recorded.indexOf(vsock),
    'the vsock device exists before its port is added',
  );
  // The guest console (here: the agent's own messages) goes to the run's console log.
  assert.match(String(recorded.find((c) => c.fn === 'krun_set_console_output')?.args[1]), /\/console\.log$/);
  assert.equal(recorded.at(-1)?.fn, 'krun_start_enter');
  await box.assertClean(r);
});

test('exit codes come through the agent session: 0, 127 not found, 126 not executable, 128+N', async () => {
  for (const [argv, code, stderr] of [
    [['/bin/true'], 0, undefined],
    [['/no/such/command'], 127, /cannot run '\/no\/such\/command': No such file or directory/],
    [['/etc/passwd'], 126, /cannot run '\/etc\/passwd': Permission denied/],
    [['/bin/sh', '-c', 'kill -KILL $$'], 137, undefined],
  ] as const) {
    const r = await box.run(['-q', ...KRUN, 'run', '--', ...argv], krunEnv());
    assert.equal(r.code, code, `${argv.join(' ')}: ${r.stderr}`);
    if (stderr) assert.match(r.stderr, stderr);
    await box.assertClean(r);
  }
});

test('a call libkrun refuses ends the VM before the agent connects: an error naming the call (125)', async () => {
  const r = await box.run(
    ['-q', ...KRUN, 'run', '--', '/bin/true'],
    krunEnv({ KRUN_DOUBLE_FAIL: 'krun_set_root:-2' }),
  );
  assert.equal(r.code, 125);
  assert.match(
    r.stderr,
    /error: the microVM ended before the guest agent connected \(the VMM exited with code 125\)/,
  );
  assert.match(r.stderr, /libkrun did not start the VM: krun_set_root failed: -2 \(ENOENT\)/);
  await box.assertClean(r);
});

test('stdin is passed through run: echo hi | run -- cat prints hi; 3 MB through cat arrive whole', async () => {
  const { env } = krunEnv();
  const hi = spawnSync(CLI, ['-q', ...KRUN, 'run', '--', 'cat'], {
    env: { ...box.env, ...env },
    input: 'hi\n',
  });
  assert.equal(hi.status, 0, hi.stderr.toString());
  assert.equal(hi.stdout.toString(), 'hi\n');

  const big = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 12)) & 0xff;
  const child = spawn(CLI, ['-q', ...KRUN, 'run', '--', 'cat'], { env: { ...box.env, ...env } });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdin.end(big);
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.equal(code, 0, err);
  assert.ok(Buffer.concat(out).equals(big), 'the 3 MB came back byte for byte');
});

const commandStarted = (e: Record<string, unknown>) =>
  e.type === 'progress' && /command started/.test(String(e.message));

/** A long command whose pid is known; `signal` to the CLI once it runs. */
async function runAndSignal(signal: NodeJS.Signals) {
  const marker = pidMarker();
  let sent = false;
  let command: { pid: number; startTime: string | undefined } | undefined;
  const r: CliRun = await box.run(
    ['-q', ...KRUN, 'run', '--', '/bin/sh', '-c', `echo $$ > ${marker.file}; exec sleep 60`],
    {
      ...krunEnv(),
      onEvent: (e, child) => {
        if (sent || !commandStarted(e)) return;
        sent = true;
        void marker.read().then((p) => {
          command = p;
          child.kill(signal);
        });
      },
    },
  );
  assert.ok(sent && command, `the command started and got ${signal}`);
  return { r, command };
}

test('Ctrl-C (SIGINT) during a run stops everything and exits 130: no process is left', async () => {
  const { r, command } = await runAndSignal('SIGINT');
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGINT: stopping the microVM/);
  await assertGone(command, "the run's command");
  await box.assertClean(r);
});

test('SIGTERM during a run stops everything and exits 143: no process is left', async () => {
  const { r, command } = await runAndSignal('SIGTERM');
  assert.equal(r.code, 143, r.stderr);
  await assertGone(command, "the run's command");
  await box.assertClean(r);
});

test('--detach, exec and stop: stop ends the command (SIGTERM) and the VM with it', async () => {
  const marker = pidMarker();
  const { env } = krunEnv();
  const started = await box.run(
    [
      'run',
      '--name',
      'kd',
      '--detach',
      '-q',
      ...KRUN,
      '--',
      '/bin/sh',
      '-c',
      `echo $$ > ${marker.file}; exec sleep 3600`,
    ],
    { env },
  );
  assert.equal(started.code, 0, started.stderr);
  assert.match(started.stdout.toString(), /Started: .* in instance 'kd' \(libkrun\/kvm\)/);
  const command = await marker.read();
  const state = JSON.parse(
    fs.readFileSync(path.join(box.dataDir, 'instances', 'kd', 'state.json'), 'utf8'),
  ) as InstanceState;
  assert.equal(state.phase, 'running');
  assert.equal(state.backend, 'libkrun');
  try {
    const r = await box.run(
      ['exec', 'kd', '--env', 'B=2', '--', 'sh', '-c', 'echo "out $B"; echo err >&2; exit 7'],
      {
        env,
      },
    );
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout.toString(), 'out 2\n');
    assert.equal(r.stderr, 'err\n');
  } finally {
    const stop = await box.run(['stop', 'kd'], { env });
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout.toString(), /instance 'kd' stopped/);
  }
  await assertGone(command, "the run's command");
  for (const p of [state.supervisor, ...state.processes]) await assertGone(p, p.name);
  for (const s of state.sockets) assert.equal(fs.existsSync(s), false, `socket ${s} left`);
  const logs = await box.run(['logs', 'kd', '--source', 'console'], { env });
  assert.equal(logs.code, 0, logs.stderr);
  assert.match(logs.stdout.toString(), /ovm-agent: shutdown requested by the host[\s\S]*ovm-agent: stopped/);
});

test("with gvproxy, libkrun gets the frame filter's stream socket (never gvproxy's own) and the fixed MAC", async () => {
  const { log, env } = krunEnv();
  const r = await box.run(['-q', '--backend', 'libkrun', '--exec', '/bin/true'], { env });
  assert.equal(r.code, 0, r.stderr);
  const net = calls(log).find((c) => c.fn === 'krun_add_net_unixstream');
  assert.ok(net, 'krun_add_net_unixstream was called');
  // The supervisor's frame filter (net/frame-relay.ts) listens there and relays to gvproxy.
  assert.match(String(net.args[1]), /gv-vm\.sock$/);
  assert.deepEqual(net.args.slice(3), ['5a:94:ef:e4:0c:ee', 19587, 0]);
  assert.deepEqual(r.processes.map((p) => p.name).sort(), ['gvproxy', 'libkrun']);
  await box.assertClean(r);
});

test('by default, a runtime on a host without a working KVM means QEMU, and the reason is printed', async (t) => {
  if (fs.existsSync('/dev/kvm') && !fs.existsSync('/sys/module/kvm_pvm')) {
    t.skip('this host has a usable /dev/kvm: the default would be libkrun, which the double cannot boot');
    return;
  }
  const r = await box.run(['--net', 'none', '--vcpus', '1', '--mem', '256', '--exec', '/bin/true'], {
    env: { OPENSHELL_VM_RUNTIME_DIR: bundle },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /backend: qemu \(libkrun runtime at .*, but \/dev\/kvm/);
  await box.assertClean(r);
});

test('libkrun refuses what it cannot do: another architecture, --accel tcg, --net user', async () => {
  for (const [args, re] of [
    [['--arch', 'aarch64'], /--arch aarch64: libkrun runs guests of the host's architecture only/],
    [['--accel', 'tcg'], /--accel tcg: libkrun has no software emulation/],
    [['--net', 'user'], /--net user is QEMU's own network/],
  ] as const) {
    const r = await box.run(['--backend', 'libkrun', ...args, '--exec', '/bin/true'], {
      env: { OPENSHELL_VM_RUNTIME_DIR: bundle },
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, re);
    assert.deepEqual(r.processes, []);
  }
  const none = await box.run(['--backend', 'libkrun', '--exec', '/bin/true'], {
    env: { OPENSHELL_VM_RUNTIME_DIR: '/nonexistent' },
  });
  assert.equal(none.code, 125);
  assert.match(none.stderr, /runtime \/nonexistent: is not a directory/);
});

test("--net tsi (libkrun only): -p becomes libkrun's port map and no NIC is added; QEMU refuses it", async () => {
  const { log, env } = krunEnv();
  const r = await box.run(
    ['-q', '--backend', 'libkrun', '--net', 'tsi', '-p', '38051:30051', '--exec', '/bin/true'],
    { env },
  );
  assert.equal(r.code, 0, r.stderr);
  const recorded = calls(log);
  assert.deepEqual(recorded.find((c) => c.fn === 'krun_set_port_map')?.args, [7, ['38051:30051']]);
  assert.ok(!recorded.some((c) => c.fn.startsWith('krun_add_net') || c.fn === 'krun_disable_implicit_vsock'));
  await box.assertClean(r);
  const qemu = await box.run(['--backend', 'qemu', '--net', 'tsi', '--exec', '/bin/true']);
  assert.equal(qemu.code, 2);
  assert.match(qemu.stderr, /--net tsi is libkrun's network/);
});

test('libkrun (no read-only lower layer) boots a private copy of the shared default rootfs, removed after the run', async () => {
  const { log, env } = krunEnv();
  const r = await box.run([...KRUN, 'run', '--', '/bin/true'], { env });
  assert.equal(r.code, 0, r.stderr);
  const root = String(calls(log).find((c) => c.fn === 'krun_set_root')?.args[1]);
  const runs = path.join(box.dataDir, 'instances', 'default', 'runs');
  assert.ok(root.startsWith(`${runs}/`) && root.endsWith('/share/rootfs'), `krun_set_root got ${root}`);
  assert.equal(fs.existsSync(root), false, 'the private copy is removed after the run');
  await box.assertClean(r);
});
