import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough, Readable, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { ensureAgent } from '../guest/agent-build.ts';
import { defaultGuestArch } from '../host/arch.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';
import { controlRequest, ExecSession } from './client.ts';
import { ControlServer } from './control.ts';
import { AgentLink } from './link.ts';
import {
  agentTimeMs,
  checkAgentFrame,
  encodeFrame,
  FRAME,
  FrameDecoder,
  MAX_FRAME_BYTES,
  parseAgentTime,
} from './protocol.ts';

/**
 * The real agent (compiled for this host) on its --stdio channel, behind the real link and
 * control socket: what `openshell-vm exec` does, without a VM.
 */
describe('guest agent, link, control socket and exec client', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-'));
  const socketPath = path.join(dir, 'ctl.sock');
  let agent: ChildProcess;
  let link: AgentLink;
  let control: ControlServer;
  const stops: number[] = [];

  before(async () => {
    const env = testEnvironment(dir, { searchPath: process.env.PATH ?? '' });
    const binary = await ensureAgent(env, defaultGuestArch());
    agent = spawn(binary.path, ['--stdio'], { stdio: ['pipe', 'pipe', 'inherit'] });
    link = new AgentLink();
    link.attach(Duplex.from({ readable: agent.stdout, writable: agent.stdin }));
    assert.ok(await link.waitHello(5_000), 'the agent said hello');
    control = await ControlServer.listen(socketPath, link, { onStop: (ms) => stops.push(ms) });
  });

  after(async () => {
    await control.close();
    await link.close();
    agent.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const collect = () => {
    const chunks: Buffer[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        chunks.push(chunk);
        cb();
      },
    });
    return {
      stream,
      text: () => Buffer.concat(chunks).toString(),
      bytes: () => Buffer.concat(chunks).length,
    };
  };

  async function exec(
    argv: string[],
    options: { env?: string[]; workdir?: string; tty?: boolean; stdin?: Readable } = {},
  ) {
    const out = collect();
    const err = collect();
    const session = await ExecSession.start(
      socketPath,
      'test',
      {
        argv,
        env: options.env ?? [],
        workdir: options.workdir ?? '',
        tty: options.tty ?? false,
        rows: 24,
        cols: 80,
      },
      { stdin: options.stdin, stdout: out.stream, stderr: err.stream },
    );
    return { session, out, err };
  }

  it('says hello with its architecture', () => {
    assert.equal(link.hello?.version, 'ovm-agent/1');
    assert.equal(link.hello?.arch, defaultGuestArch());
  });

  it('returns the exit code and keeps stdout and stderr apart', async () => {
    const { session, out, err } = await exec(['sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(await session.done, 7);
    assert.equal(out.text(), 'out\n');
    assert.equal(err.text(), 'err\n');
  });

  it('passes stdin through to its end', async () => {
    const { session, out } = await exec(['sh', '-c', 'cat; echo done'], {
      stdin: Readable.from([Buffer.from('hello '), Buffer.from('world\n')]),
    });
    assert.equal(await session.done, 0);
    assert.equal(out.text(), 'hello world\ndone\n');
  });

  it('sets the environment and the working directory', async () => {
    const { session, out } = await exec(['sh', '-c', 'echo "$FOO"; pwd'], {
      env: ['FOO=b a r'],
      workdir: '/tmp',
    });
    assert.equal(await session.done, 0);
    assert.equal(out.text(), 'b a r\n/tmp\n');
  });

  it('says why a command cannot run: 127 not found, 126 not executable, 125 bad workdir', async () => {
    const missing = await exec(['/no/such/command']);
    assert.equal(await missing.session.done, 127);
    assert.match(missing.err.text(), /cannot run '\/no\/such\/command': No such file or directory/);
    const plain = path.join(dir, 'plain-file');
    fs.writeFileSync(plain, 'x', { mode: 0o644 });
    const notExec = await exec([plain]);
    assert.equal(await notExec.session.done, 126);
    const badDir = await exec(['true'], { workdir: '/no/such/dir' });
    assert.equal(await badDir.session.done, 125);
    assert.match(badDir.err.text(), /cannot change to directory '\/no\/such\/dir'/);
  });

  it('streams large output whole', async () => {
    const { session, out, err } = await exec(['head', '-c', '3000000', '/dev/zero']);
    assert.equal(await session.done, 0, err.text());
    assert.equal(out.bytes(), 3_000_000, err.text());
  });

  it('runs sessions at once', async () => {
    const a = await exec(['sh', '-c', 'sleep 0.5; echo a']);
    const b = await exec(['sh', '-c', 'echo b']);
    assert.equal(await b.session.done, 0);
    assert.equal(a.out.text(), '', 'a is still running when b is done');
    assert.equal(await a.session.done, 0);
    assert.equal(a.out.text(), 'a\n');
  });

  it('forwards signals to the command: 128+N', async () => {
    const { session } = await exec(['sleep', '30']);
    await new Promise((r) => setTimeout(r, 200));
    session.signal('TERM');
    assert.equal(await session.done, 143);
  });

  it('kills the command when the client goes away', async () => {
    const pidFile = path.join(dir, 'sleeper.pid');
    const { session } = await exec(['sh', '-c', `echo $$ > ${pidFile}; exec sleep 100`]);
    for (let i = 0; i < 50 && !fs.existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 50));
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    const started = await processStartTime(pid);
    assert.ok(started);
    session.close();
    await assert.rejects(session.done);
    let alive = true;
    for (let i = 0; i < 50 && alive; i++) {
      await new Promise((r) => setTimeout(r, 50));
      alive = await isSameProcess(pid, started);
    }
    assert.equal(alive, false, 'the command was killed');
  });

  it('runs on a pseudo-terminal: a tty device, its size, and size changes', async () => {
    const stdin = new PassThrough();
    const { session, out } = await exec(['sh', '-c', 'tty; stty size; read x; stty size'], {
      tty: true,
      stdin,
    });
    for (let i = 0; i < 100 && !/\d+ \d+/.test(out.text()); i++) await new Promise((r) => setTimeout(r, 20));
    session.resize(40, 100);
    await new Promise((r) => setTimeout(r, 100));
    stdin.write('go\n');
    assert.equal(await session.done, 0);
    const lines = out.text().split(/\r?\n/);
    assert.match(lines[0] ?? '', /^\/dev\/pts\/\d+$/);
    assert.equal(lines[1], '24 80');
    assert.ok(lines.includes('40 100'), out.text());
  });

  it('reads the guest clock and forwards stop requests', async () => {
    const t0 = Date.now();
    const frame = await controlRequest(socketPath, 'test', FRAME.timeGet, '', 2_000);
    const guest = parseAgentTime(frame.payload.toString());
    assert.ok(Math.abs(guest - t0) < 2_000, `agent clock ${guest} vs host ${t0}`);
    const ack = await controlRequest(socketPath, 'test', FRAME.stop, '4500', 2_000);
    assert.equal(ack.type, FRAME.pong);
    assert.deepEqual(stops, [4500]);
  });
});

/**
 * How the agent runs under libkrun, whose init runs one command: started as that command with
 * --then, it forks itself off and execs the real command in its place, and dials the host (vsock
 * there; a Unix socket here: the same code but for the address family) again whenever it is lost.
 */
describe('the agent beside a command (--then) on a channel it dials (--unix, as --vsock)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-then-'));
  const agentSocket = path.join(dir, 'agent.sock');
  const controlSocket = path.join(dir, 'ctl.sock');
  let binary: string;
  const children: ChildProcess[] = [];

  before(async () => {
    binary = (
      await ensureAgent(testEnvironment(dir, { searchPath: process.env.PATH ?? '' }), defaultGuestArch())
    ).path;
  });
  after(() => {
    for (const c of children) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Processes whose command line names this test's socket (the agent and its keeper). */
  const agentsAlive = () =>
    fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(agentSocket) && !isZombie(p);
        } catch {
          return false;
        }
      });
  const isZombie = (pid: string) =>
    / Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ' '));

  function start(command: string[]) {
    const child = spawn(binary, ['--unix', agentSocket, '--then', ...command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LEAK: 'from-the-caller' },
    });
    children.push(child);
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return { child, exited, out: () => out, err: () => err };
  }

  async function execVia(argv: string[]) {
    const chunks: Buffer[] = [];
    const session = await ExecSession.start(
      controlSocket,
      'test',
      { argv, env: [], workdir: '', tty: false, rows: 24, cols: 80 },
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
    return { session, text: () => Buffer.concat(chunks).toString() };
  }

  it('runs the command in its own place, serves exec, dials again when lost, stops the command', async () => {
    const script = 'echo "started $$ $LEAK"; trap "echo stopping; exit 3" TERM; while :; do sleep 0.1; done';
    const cmd = start(['/bin/sh', '-c', script]);
    let link = await AgentLink.listen(agentSocket);
    let control = await ControlServer.listen(controlSocket, link, { onStop: () => undefined });
    try {
      assert.ok(await link.waitHello(5_000), 'the agent dialled in and said hello');
      for (let i = 0; i < 100 && !cmd.out().includes('started'); i++)
        await new Promise((r) => setTimeout(r, 20));
      // The command kept the caller's pid and environment; the agent's sessions get a clean one.
      assert.equal(cmd.out(), `started ${cmd.child.pid} from-the-caller\n`);
      const first = await execVia(['sh', '-c', 'echo "[$LEAK] $HOME"; exit 5']);
      assert.equal(await first.session.done, 5);
      assert.equal(first.text(), '[] /root\n');

      // The host side goes away (the VMM's connection dropped) with a session running: the
      // session's command is killed, and the agent dials again.
      const marker = path.join(dir, 'sleeper.pid');
      const inFlight = await execVia(['sh', '-c', `echo $$ > ${marker}; exec sleep 60`]);
      for (let i = 0; i < 100 && !fs.existsSync(marker); i++) await new Promise((r) => setTimeout(r, 20));
      const sleeper = Number(fs.readFileSync(marker, 'utf8'));
      const sleeperStart = await processStartTime(sleeper);
      await link.close(); // first: the control socket would otherwise close the session itself
      await inFlight.session.done.catch(() => undefined);
      await control.close();
      link = await AgentLink.listen(agentSocket);
      control = await ControlServer.listen(controlSocket, link, { onStop: () => undefined });
      assert.ok(await link.waitHello(5_000), 'the agent dialled again');
      for (let i = 0; i < 100 && (await isSameProcess(sleeper, sleeperStart)); i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.equal(await isSameProcess(sleeper, sleeperStart), false, 'the lost session was killed');
      const second = await execVia(['echo', 'again']);
      assert.equal(await second.session.done, 0);
      assert.equal(second.text(), 'again\n');

      // SHUTDOWN stops the command (not PID 1); the agent goes with it.
      assert.equal(link.shutdown(), true);
      assert.equal(await cmd.exited, 3);
      assert.match(cmd.out(), /stopping\n$/);
      let alive = agentsAlive();
      for (let i = 0; i < 100 && alive.length; i++) {
        await new Promise((r) => setTimeout(r, 20));
        alive = agentsAlive();
      }
      assert.deepEqual(alive, [], 'no agent process outlives the command');
    } finally {
      await control.close();
      await link.close();
    }
  });

  it('gives the exit status of a command that cannot run: 127 not found, 126 not executable', async () => {
    const missing = start(['/no/such/command']);
    assert.equal(await missing.exited, 127);
    assert.match(missing.err(), /\/no\/such\/command: No such file or directory/);
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, 'x', { mode: 0o644 });
    const notExec = start([plain]);
    assert.equal(await notExec.exited, 126);
    const usage = spawn(binary, ['--vsock', 'x'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    usage.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    assert.equal(await new Promise((r) => usage.on('exit', r)), 2);
    assert.match(err, /--vsock: PORT must be a number/);
  });
});

describe('frames from the agent are checked before use', () => {
  const frame = (type: number, channel: number, payload: Buffer | string = '') => ({
    type,
    channel,
    payload: Buffer.from(payload),
  });

  it('skips a frame over the maximum as it streams by, reports it, and stays in step', () => {
    const reasons: string[] = [];
    const decoder = new FrameDecoder({ onDiscard: (r) => reasons.push(r) });
    const huge = encodeFrame(FRAME.stdout, 1, Buffer.alloc(MAX_FRAME_BYTES, 1));
    const next = encodeFrame(FRAME.pong, 2, 'ok');
    const got = [];
    for (let off = 0; off < huge.length; off += 65_536)
      got.push(...decoder.push(huge.subarray(off, off + 65_536)));
    assert.ok(decoder.pendingBytes < 2 * 65_536, 'the oversized frame is not buffered');
    got.push(...decoder.push(Buffer.concat([encodeFrame(FRAME.stdout, 1).subarray(0, 4).fill(0), next])));
    assert.deepEqual(
      got.map((f) => [f.type, f.channel, f.payload.toString()]),
      [[FRAME.pong, 2, 'ok']],
    );
    assert.equal(reasons.length, 2, reasons.join('; '));
    assert.match(reasons[0] ?? '', /a frame of 1048581 bytes/);
    assert.match(reasons[1] ?? '', /a frame of 0 bytes/);
  });

  it('without a discard handler (our own peers), a bad length throws', () => {
    assert.throws(
      () => new FrameDecoder().push(Buffer.from([0xff, 0xff, 0xff, 0xff, 0])),
      /bad frame length/,
    );
  });

  it('checks every kind the agent sends, and refuses the rest', () => {
    assert.equal(checkAgentFrame(frame(FRAME.hello, 0, 'ovm-agent/1 aarch64')), undefined);
    assert.match(checkAgentFrame(frame(FRAME.hello, 0, 'ovm-agent/1 \u001b[2J')) ?? '', /malformed HELLO/);
    assert.match(checkAgentFrame(frame(FRAME.hello, 3, 'ovm-agent/1 x86_64')) ?? '', /HELLO on channel 3/);
    assert.equal(checkAgentFrame(frame(FRAME.stdout, 1, 'x')), undefined);
    assert.match(checkAgentFrame(frame(FRAME.stderr, 0, 'x')) ?? '', /output on channel 0/);
    assert.equal(checkAgentFrame(frame(FRAME.exit, 1, Buffer.alloc(4))), undefined);
    assert.match(checkAgentFrame(frame(FRAME.exit, 1, Buffer.alloc(5))) ?? '', /EXIT of 5 bytes/);
    assert.match(checkAgentFrame(frame(FRAME.pong, 1, 'x'.repeat(65))) ?? '', /PONG of 65 bytes/);
    for (const type of [FRAME.error, FRAME.stop, FRAME.open, FRAME.shutdown, 200]) {
      assert.match(checkAgentFrame(frame(type, 1)) ?? '', /does not send/, `type ${type}`);
    }
  });

  it('takes only clock values a Date can hold', () => {
    assert.equal(agentTimeMs(Buffer.from('1700000000.500000000')), 1_700_000_000_500);
    assert.ok(
      Number.isFinite(agentTimeMs(Buffer.from('-5.000000001'))),
      'before the epoch is a clock value too',
    );
    for (const bad of [
      '',
      'garbage',
      '1e9.0',
      '1.',
      '.5',
      '99999999999999.0',
      '1.0000000000',
      ' 1.0',
      '1.0\n',
    ]) {
      assert.equal(agentTimeMs(Buffer.from(bad)), undefined, JSON.stringify(bad));
    }
  });
});

describe('the agent against hostile host frames (--stdio)', () => {
  it('a frame length out of range ends the agent cleanly (exit 1), with its sessions', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-len-'));
    try {
      const binary = await ensureAgent(
        testEnvironment(dir, { searchPath: process.env.PATH ?? '' }),
        defaultGuestArch(),
      );
      for (const len of [0, 4, MAX_FRAME_BYTES + 1, 0xffffffff]) {
        const agent = spawn(binary.path, ['--stdio'], { stdio: ['pipe', 'ignore', 'ignore'] });
        const head = Buffer.alloc(9);
        head.writeUInt32BE(len, 0);
        agent.stdin?.on('error', () => undefined);
        agent.stdin?.write(head);
        const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
          agent.once('exit', (c, s) => resolve([c, s])),
        );
        assert.deepEqual([code, signal], [1, null], `length ${len}`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
