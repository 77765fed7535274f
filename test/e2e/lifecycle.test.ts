// End-to-end instance lifecycle with real microVMs (TCG): detached runs, status/list, the lock,
// exec through the guest agent (streams, stdin, exit codes, a PTY), crash recovery after kill -9
// with a decoy that must survive, and a soak of start/exec/stop cycles.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import type { InstanceState } from '../../src/instance/state.ts';
import { isSameProcess, processStartTime } from '../../src/supervisor/identity.ts';
import { CLI, freePort, ROOT, sandbox } from './harness.ts';

const box = sandbox();
after(() => box.cleanup());
const LIGHT = ['-q', '--vcpus', '1', '--mem', '256'];
const PTY_DRIVE = path.join(ROOT, 'test', 'fixtures', 'pty-drive.py');

function stateOf(name: string): InstanceState | undefined {
  const file = path.join(box.dataDir, 'instances', name, 'state.json');
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as InstanceState) : undefined;
}

async function start(name: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const r = await box.run(['run', '--name', name, '--detach', ...LIGHT, ...extra, '--', 'sleep', '3600'], {
    env,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout.toString(), new RegExp(`Started: 'sleep 3600' in instance '${name}'`));
  const state = stateOf(name);
  assert.ok(state, 'state file written');
  assert.equal(state.phase, 'running');
  return state;
}

async function assertGone(state: InstanceState): Promise<void> {
  for (const p of [state.supervisor, ...state.processes]) {
    assert.equal(await isSameProcess(p.pid, p.startTime), false, `${p.name} (pid ${p.pid}) still runs`);
  }
  for (const s of state.sockets) assert.equal(fs.existsSync(s), false, `socket ${s} left`);
}

function sockets(): string[] {
  const out: string[] = [];
  for (const dir of [box.dataDir, box.runtimeDir]) {
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (e.isSocket()) out.push(path.join(e.parentPath, e.name));
    }
  }
  return out;
}

describe('instances', () => {
  test('run --detach --events to a FIFO starts, warns, and does not hang', async () => {
    // The starting command hands what it recorded to the supervisor; reading a FIFO never ends.
    const fifo = path.join(box.dataDir, '..', 'events.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // A reader that opens it again after each writer closes (the Reporter appends line by line).
    const reader = spawn('sh', ['-c', 'while :; do cat "$0" >/dev/null; done', fifo], {
      stdio: 'ignore',
      detached: true,
    });
    try {
      const r = spawnSync(
        CLI,
        ['run', '--name', 'ev', '--detach', ...LIGHT, '--events', fifo, '--', 'sleep', '3600'],
        { env: box.env, encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      assert.equal(r.error, undefined, `the start hung: ${r.error?.message}`);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /--events .*events\.fifo is not a regular file/);
    } finally {
      process.kill(-(reader.pid as number), 'SIGKILL');
    }
    const stop = await box.run(['stop', 'ev']);
    assert.equal(stop.code, 0, stop.stderr);
  });

  test('two named instances at once with different forwards; list --json; the lock names its holder', async () => {
    const [pa, pb] = [await freePort(), await freePort()];
    const [a, b] = await Promise.all([
      start('one', ['-p', `${pa}:8080`]),
      start('two', ['-p', `${pb}:8080`]),
    ]);
    try {
      const list = await box.run(['list', '--json']);
      assert.equal(list.code, 0, list.stderr);
      const all = JSON.parse(list.stdout.toString()) as {
        name: string;
        status: string;
        forwards: string[];
      }[];
      const byName = new Map(all.map((i) => [i.name, i]));
      assert.equal(byName.get('one')?.status, 'running');
      assert.equal(byName.get('two')?.status, 'running');
      assert.match(byName.get('one')?.forwards.join() ?? '', new RegExp(`127.0.0.1:${pa}`));
      assert.match(byName.get('two')?.forwards.join() ?? '', new RegExp(`127.0.0.1:${pb}`));

      const status = await box.run(['status', 'one', '--json']);
      const s = JSON.parse(status.stdout.toString()) as { status: string; clockDiffMs: number; pid: number };
      assert.equal(s.status, 'running');
      assert.equal(s.pid, a.supervisor.pid);
      assert.ok(Math.abs(s.clockDiffMs) < 2_000, `clock offset ${s.clockDiffMs} ms`);

      // A second start of the same instance fails at once, naming the holder; the first runs on.
      const again = await box.run(['run', '--name', 'one', ...LIGHT, '--', 'true']);
      assert.equal(again.code, 125);
      assert.match(
        again.stderr,
        new RegExp(`instance 'one' is in use: openshell-vm \\(pid ${a.supervisor.pid}\\)`),
      );
      const detachedAgain = await box.run(['run', '--name', 'one', '--detach', ...LIGHT, '--', 'true']);
      assert.equal(detachedAgain.code, 125);
      assert.match(detachedAgain.stderr, new RegExp(`pid ${a.supervisor.pid}`));
      assert.equal((await box.run(['exec', 'one', '--', 'true'])).code, 0, 'the first still answers');
    } finally {
      for (const n of ['one', 'two']) {
        const stop = await box.run(['stop', n]);
        assert.equal(stop.code, 0, stop.stderr);
        assert.match(stop.stdout.toString(), new RegExp(`instance '${n}' stopped`));
      }
    }
    await assertGone(a);
    await assertGone(b);
    const after = JSON.parse((await box.run(['status', 'one', '--json'])).stdout.toString()) as {
      status: string;
    };
    assert.equal(after.status, 'stopped');
    const logs = await box.run(['logs', 'one', '--source', 'console']);
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stdout.toString(), /ovm-init: stop requested/);
  });

  test('exec: exit code, separate streams, stdin, env, workdir, a PTY with window-size changes', async () => {
    const state = await start('ex');
    try {
      const r = await box.run(['exec', 'ex', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
      assert.equal(r.code, 7);
      assert.equal(r.stdout.toString(), 'out\n');
      assert.equal(r.stderr, 'err\n');

      const env = await box.run([
        'exec',
        'ex',
        '--env',
        'FOO=a b',
        '--workdir',
        '/tmp',
        '--',
        'sh',
        '-c',
        'echo "$FOO"; pwd',
      ]);
      assert.equal(env.stdout.toString(), 'a b\n/tmp\n');
      const missing = await box.run(['exec', 'ex', '--', '/no/such']);
      assert.equal(missing.code, 127);
      assert.match(missing.stderr, /cannot run '\/no\/such'/);

      const cat = spawnSync(CLI, ['exec', 'ex', '--', 'sh', '-c', 'cat; echo end'], {
        env: box.env,
        input: 'line one\nline two\n',
      });
      assert.equal(cat.status, 0, cat.stderr.toString());
      assert.equal(cat.stdout.toString(), 'line one\nline two\nend\n');

      const pty = spawnSync(
        'python3',
        [
          PTY_DRIVE,
          'READY',
          '40',
          '100',
          '--',
          CLI,
          'exec',
          'ex',
          '--',
          'sh',
          '-c',
          'tty; stty size; echo READY; read x; stty size; exit 4',
        ],
        { env: box.env, timeout: 60_000 },
      );
      const out = pty.stdout.toString().replaceAll('\r', '');
      assert.equal(pty.status, 4, out + pty.stderr.toString());
      // One CR per line, from the guest's pty; the local terminal adds none (no "\r\r\n").
      assert.match(pty.stdout.toString(), /^24 80\r\n/m);
      assert.doesNotMatch(pty.stdout.toString(), /\r\r\n/);
      assert.match(out, /^\/dev\/pts\/\d+$/m);
      assert.match(out, /^24 80$/m);
      assert.match(out, /^40 100$/m, 'the resize reached the guest');

      const noCmd = await box.run(['exec', 'ex']);
      assert.equal(noCmd.code, 2);
      assert.match(noCmd.stderr, /no command given/);
      const notRunning = await box.run(['exec', 'nope', '--', 'true']);
      assert.equal(notRunning.code, 125);
      assert.match(notRunning.stderr, /there is no instance 'nope'/);
      for (const command of ['status', 'stop', 'logs', 'delete']) {
        const none = await box.run([command, 'nope']);
        assert.equal(none.code, 125, `${command}: ${none.stderr}`);
        assert.match(none.stderr, /error: there is no instance 'nope'\n {2}hint: see: openshell-vm list/);
        assert.equal(none.stdout.toString(), '');
      }
    } finally {
      await box.run(['stop', 'ex']);
    }
    await assertGone(state);
  });

  test('clock: a guest clock set wrong is set from the host again; status shows the offset', async () => {
    const state = await start('clock', [], { OPENSHELL_VM_CLOCK_CHECK_MS: '500' });
    try {
      const set = await box.run(['exec', 'clock', '--', 'date', '-s', '@1000000000']);
      assert.equal(set.code, 0, set.stderr);
      let offset = Number.POSITIVE_INFINITY;
      for (let i = 0; i < 20 && Math.abs(offset) > 2_000; i++) {
        await new Promise((r) => setTimeout(r, 500));
        offset = JSON.parse((await box.run(['status', 'clock', '--json'])).stdout.toString()).clockDiffMs;
      }
      assert.ok(Math.abs(offset) < 2_000, `guest clock offset ${offset} ms`);
      const log = fs.readFileSync(
        path.join(box.dataDir, 'instances', 'clock', 'logs', 'supervisor.log'),
        'utf8',
      );
      assert.match(log, /guest clock was -\d+\.\d s off the host's; set from the host/);
    } finally {
      await box.run(['stop', 'clock']);
    }
    await assertGone(state);
  });

  test('exec into an aarch64 guest (the agent cross-compiled for it)', async () => {
    const state = await start('arm', ['--arch', 'aarch64']);
    try {
      const r = await box.run(['exec', 'arm', '--', 'sh', '-c', 'uname -m; echo e >&2; exit 5']);
      assert.equal(r.code, 5);
      assert.equal(r.stdout.toString(), 'aarch64\n');
      assert.equal(r.stderr, 'e\n');
    } finally {
      await box.run(['stop', 'arm']);
    }
    await assertGone(state);
  });

  test('kill -9 of the CLI during boot and after ready: the next status/start reaps; a decoy survives', async () => {
    // Decoys named like our helpers, started by the test: never ours, never touched.
    const decoyDir = fs.mkdtempSync(path.join(box.runtimeDir, 'decoy-'));
    const decoys = ['gvproxy', 'qemu-system-x86_64', 'virtiofsd'].map((name) => {
      fs.copyFileSync('/bin/sleep', path.join(decoyDir, name));
      fs.chmodSync(path.join(decoyDir, name), 0o755);
      return spawn(path.join(decoyDir, name), ['600'], { stdio: 'ignore' });
    });
    try {
      // During boot: the CLI (foreground) is killed as soon as QEMU has started.
      let killed = false;
      const boot = await box.run(['run', '--name', 'crash', ...LIGHT, '--', 'sleep', '3600'], {
        onEvent: (e, child) => {
          if (!killed && e.type === 'process' && (e.process as { name: string }).name === 'qemu') {
            killed = true;
            child.kill('SIGKILL');
          }
        },
      });
      assert.equal(boot.signal, 'SIGKILL');
      assert.ok(boot.processes.length >= 2, 'helpers had started');
      const status = await box.run(['status', 'crash', '--json']);
      assert.equal(JSON.parse(status.stdout.toString()).status, 'stopped');
      // The helpers may already be gone by then: the frame filter died with the CLI, so a QEMU that
      // had not connected yet fails and virtiofsd and gvproxy follow it (or the sweep stops them).
      assert.match(status.stderr, /cleaned up \d+ run\(s\) left by a CLI that died/);
      for (const p of boot.processes) {
        assert.equal(await processStartTime(p.pid), undefined, `${p.name} (pid ${p.pid}) leaked`);
      }
      assert.deepEqual(sockets(), []);

      // After ready: the detached supervisor is killed; the next start recovers by itself.
      const state = await start('crash');
      process.kill(state.supervisor.pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
      const again = await start('crash');
      try {
        for (const p of state.processes) {
          assert.equal(await isSameProcess(p.pid, p.startTime), false, `${p.name} (pid ${p.pid}) leaked`);
        }
        for (const s of state.sockets.filter((s) => !again.sockets.includes(s))) {
          assert.equal(fs.existsSync(s), false, `old socket ${s} left`);
        }
        assert.equal((await box.run(['exec', 'crash', '--', 'true'])).code, 0);
      } finally {
        await box.run(['stop', 'crash']);
      }
      await assertGone(again);
      for (const d of decoys) assert.equal(d.exitCode, null, `decoy ${d.spawnfile} was killed`);
      assert.deepEqual(sockets(), []);
    } finally {
      for (const d of decoys) d.kill('SIGKILL');
    }
  });

  test('soak: 20 start/exec/stop cycles leave no process, socket or descriptor; supervisor memory flat', async () => {
    const cycles = Number(process.env.OPENSHELL_VM_SOAK_CYCLES || 20);
    const fdsBefore = fs.readdirSync('/proc/self/fd').length;
    const rss: number[] = [];
    const times: number[] = [];
    for (let i = 0; i < cycles; i++) {
      const t0 = performance.now();
      const state = await start('soak');
      const r = await box.run(['exec', 'soak', '--', 'sh', '-c', `echo cycle ${i}`]);
      assert.equal(r.stdout.toString(), `cycle ${i}\n`);
      const status = fs.readFileSync(`/proc/${state.supervisor.pid}/status`, 'utf8');
      rss.push(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024);
      const stop = await box.run(['stop', 'soak']);
      assert.equal(stop.code, 0, stop.stderr);
      await assertGone(state);
      times.push(performance.now() - t0);
    }
    assert.deepEqual(sockets(), []);
    assert.equal(fs.readdirSync('/proc/self/fd').length, fdsBefore, 'descriptors of the test process');
    const first = rss.slice(0, 3).reduce((a, b) => a + b, 0) / 3;
    const last = rss.slice(-3).reduce((a, b) => a + b, 0) / 3;
    const summary = {
      cycles,
      supervisorRssMiB: {
        first: +first.toFixed(1),
        last: +last.toFixed(1),
        max: +Math.max(...rss).toFixed(1),
      },
      cycleSeconds: {
        min: +(Math.min(...times) / 1000).toFixed(1),
        max: +(Math.max(...times) / 1000).toFixed(1),
        mean: +(times.reduce((a, b) => a + b, 0) / times.length / 1000).toFixed(1),
      },
    };
    process.stderr.write(`soak: ${JSON.stringify(summary)}\n`);
    // Each cycle is a new supervisor: its memory must not grow with the cycles before it.
    assert.ok(last < first * 1.25 + 5, `supervisor RSS grew from ${first} MiB to ${last} MiB`);
  });
});
