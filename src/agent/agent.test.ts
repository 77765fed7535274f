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
 * How the agent runs under libkrun: it is the VM's workload (--workload), which libkrun's init runs
 * and whose exit ends the VM. It dials the host (vsock there; a Unix socket here: the same code but
 * for the address family) again whenever it is lost, and ends itself on SHUTDOWN or SIGTERM after
 * stopping its sessions' commands in order.
 */
describe('the agent as the VM workload (--workload) on a channel it dials (--unix, as --vsock)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-workload-'));
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

  function start() {
    const child = spawn(binary, ['--unix', agentSocket, '--workload'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      // What libkrun's init may pass on besides PATH, HOME and TERM: none of it reaches a command.
      env: {
        PATH: '/usr/bin:/bin',
        HOME: '/home/x',
        TERM: 'vt100',
        LEAK: 'from-the-caller',
        KRUN_INIT: '/x',
      },
    });
    children.push(child);
    let err = '';
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.on('exit', (code, signal) => resolve([code, signal])),
    );
    return { child, exited, err: () => err };
  }

  async function serve() {
    const link = await AgentLink.listen(agentSocket);
    const control = await ControlServer.listen(controlSocket, link, { onStop: () => undefined });
    return {
      link,
      async close() {
        await control.close();
        await link.close();
      },
    };
  }

  async function execVia(argv: string[]) {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const sink = (chunks: Buffer[]) =>
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          chunks.push(chunk);
          cb();
        },
      });
    const session = await ExecSession.start(
      controlSocket,
      'test',
      { argv, env: [], workdir: '', tty: false, rows: 24, cols: 80 },
      { stdout: sink(out), stderr: sink(err) },
    );
    return {
      session,
      text: () => Buffer.concat(out).toString(),
      err: () => Buffer.concat(err).toString(),
    };
  }

  /** Waits for a session's command to write its pid to `file`; returns the pid and its start time. */
  async function pidOf(file: string) {
    for (let i = 0; i < 200 && !fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 20));
    const pid = Number(fs.readFileSync(file, 'utf8'));
    return { pid, startTime: await processStartTime(pid) };
  }

  async function gone(p: { pid: number; startTime: string | undefined }) {
    for (let i = 0; i < 100 && (await isSameProcess(p.pid, p.startTime)); i++)
      await new Promise((r) => setTimeout(r, 20));
    return !(await isSameProcess(p.pid, p.startTime));
  }

  it('serves sessions from a clean environment, dials again when lost, and SHUTDOWN ends it (exit 0)', async () => {
    const agent = start();
    let host = await serve();
    try {
      assert.ok(await host.link.waitHello(5_000), 'the agent dialled in and said hello');
      const first = await execVia(['sh', '-c', 'echo "[$LEAK$KRUN_INIT] $HOME $TERM $PATH"; exit 5']);
      assert.equal(await first.session.done, 5);
      assert.equal(first.text(), '[] /home/x vt100 /usr/bin:/bin\n');

      // The host side goes away (the VMM's connection dropped) with a session running: the
      // session's command is killed, and the agent dials again.
      const marker = path.join(dir, 'sleeper.pid');
      const inFlight = await execVia(['sh', '-c', `echo $$ > ${marker}; exec sleep 60`]);
      const sleeper = await pidOf(marker);
      await host.link.close(); // first: the control socket would otherwise close the session itself
      await inFlight.session.done.catch(() => undefined);
      await host.close();
      host = await serve();
      assert.ok(await host.link.waitHello(5_000), 'the agent dialled again');
      assert.ok(await gone(sleeper), 'the lost session was killed');
      const second = await execVia(['echo', 'again']);
      assert.equal(await second.session.done, 0);
      assert.equal(second.text(), 'again\n');

      // SHUTDOWN with a session running: its command gets SIGTERM (its trap answers), its EXIT
      // reaches the host, and then the agent ends by itself with 0 (libkrun then ends the VM).
      const trapped = await execVia([
        'sh',
        '-c',
        'trap "echo stopping; exit 3" TERM; while :; do sleep 0.1; done',
      ]);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(host.link.shutdown(), true);
      assert.equal(await trapped.session.done, 3);
      assert.equal(trapped.text(), 'stopping\n');
      assert.deepEqual(await agent.exited, [0, null], agent.err());
      assert.match(agent.err(), /ovm-agent: stopped\n$/);
    } finally {
      await host.close();
    }
  });

  it('a command that ignores SIGTERM gets SIGKILL after the grace period; no new session meanwhile', async () => {
    const agent = start();
    const host = await serve();
    try {
      assert.ok(await host.link.waitHello(5_000));
      const marker = path.join(dir, 'stubborn.pid');
      const stubborn = await execVia([
        'sh',
        '-c',
        `trap "" TERM; echo $$ > ${marker}; while :; do sleep 0.1; done`,
      ]);
      const shell = await pidOf(marker);
      const t0 = performance.now();
      assert.equal(host.link.shutdown(), true);
      await new Promise((r) => setTimeout(r, 300));
      const late = await execVia(['echo', 'too late']);
      assert.equal(await late.session.done, 125);
      assert.match(late.err(), /ovm-agent: the guest is stopping/);
      assert.equal(await stubborn.session.done, 137);
      const waitedMs = performance.now() - t0;
      assert.ok(
        waitedMs >= 2_900 && waitedMs < 6_000,
        `SIGKILL after ${Math.round(waitedMs)} ms (grace 3 s)`,
      );
      assert.deepEqual(await agent.exited, [0, null], agent.err());
      assert.ok(await gone(shell), 'the stubborn command is gone');
    } finally {
      await host.close();
    }
  });

  it('SIGTERM to the agent stops it the same way, also while it is still dialling', async () => {
    const agent = start();
    const host = await serve();
    try {
      assert.ok(await host.link.waitHello(5_000));
      const marker = path.join(dir, 'term.pid');
      const running = await execVia(['sh', '-c', `echo $$ > ${marker}; exec sleep 60`]);
      const sleeper = await pidOf(marker);
      agent.child.kill('SIGTERM');
      assert.equal(await running.session.done, 143);
      assert.deepEqual(await agent.exited, [0, null], agent.err());
      assert.ok(await gone(sleeper));
    } finally {
      await host.close();
    }
    // Nobody listens: the agent keeps dialling, and a SIGTERM then ends it (0) all the same.
    const dialling = start();
    await new Promise((r) => setTimeout(r, 300));
    dialling.child.kill('SIGTERM');
    assert.deepEqual(await dialling.exited, [0, null], dialling.err());
    assert.match(dialling.err(), /SIGTERM while dialling the host/);
  });

  it('refuses a bad option: --vsock needs a number, --then is gone', async () => {
    for (const [args, re] of [
      [['--vsock', 'x'], /--vsock: PORT must be a number/],
      [['--unix', agentSocket, '--then', 'true'], /unknown option/],
    ] as const) {
      const usage = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      usage.stderr?.on('data', (d: Buffer) => {
        err += d.toString();
      });
      assert.equal(await new Promise((r) => usage.on('exit', r)), 2);
      assert.match(err, re);
    }
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
    for (const ok of [
      'ok',
      'ok; not reseeded at once: RNDRESEEDCRNG: Invalid argument',
      'error: Permission denied',
    ])
      assert.equal(checkAgentFrame(frame(FRAME.entropyDone, 2, ok)), undefined, ok);
    assert.match(checkAgentFrame(frame(FRAME.entropyDone, 0, 'ok')) ?? '', /ENTROPY_DONE on channel 0/);
    assert.match(checkAgentFrame(frame(FRAME.entropyDone, 2, 'okay')) ?? '', /malformed ENTROPY_DONE/);
    assert.match(
      checkAgentFrame(frame(FRAME.entropyDone, 2, 'error: \u001b[2J')) ?? '',
      /malformed ENTROPY_DONE/,
    );
    assert.match(
      checkAgentFrame(frame(FRAME.entropyDone, 2, `error: ${'x'.repeat(200)}`)) ?? '',
      /ENTROPY_DONE of 207 bytes/,
    );
    for (const type of [
      FRAME.error,
      FRAME.stop,
      FRAME.open,
      FRAME.shutdown,
      FRAME.helloGet,
      FRAME.entropy,
      200,
    ]) {
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

describe('the agent reports its own crash', () => {
  it('a fatal signal writes one line on stderr (signal, code, sender or address, pc) and still kills it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-crash-'));
    try {
      const binary = await ensureAgent(
        testEnvironment(dir, { searchPath: process.env.PATH ?? '' }),
        defaultGuestArch(),
      );
      for (const signal of ['SIGSEGV', 'SIGBUS'] as const) {
        const agent = spawn(binary.path, ['--stdio'], { stdio: ['pipe', 'pipe', 'pipe'] });
        let stderr = '';
        agent.stderr?.on('data', (chunk: Buffer) => {
          stderr += chunk.toString();
        });
        // After its hello, the agent is in its main loop (the crash report is installed).
        await new Promise<void>((resolve) => agent.stdout?.once('data', () => resolve()));
        const exited = new Promise<[number | null, string | null]>((resolve) =>
          agent.once('exit', (c, s) => resolve([c, s])),
        );
        agent.kill(signal);
        assert.deepEqual(await exited, [null, signal], 'the default action still ends it');
        await new Promise<void>((resolve) =>
          agent.stderr?.readableEnded ? resolve() : agent.stderr?.once('end', resolve),
        );
        const number = os.constants.signals[signal];
        assert.match(
          stderr,
          new RegExp(
            `^ovm-agent: fatal signal ${number} code 0 from pid ${process.pid} pc 0x[0-9a-f]+ `,
            'm',
          ),
        );
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
