import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { startStdioAgent } from '../../test/fixtures/stdio-agent.ts';
import { defaultGuestArch } from '../host/arch.ts';
import { randomBytes } from '../host/random-hex.ts';
import { AgentLink, type HelloHow, MAX_REPORTS, MAX_UNASKED_HELLOS } from './link.ts';
import { encodeFrame, FRAME, type Frame, FrameDecoder, MAX_ENTROPY_DONE_BYTES } from './protocol.ts';
import { AgentSession } from './session.ts';

/**
 * What a guest restored from a snapshot needs from its agent (issue 18, item 3): a HELLO when
 * asked (HELLO_GET: it resumes mid-loop and never says it by itself), and the host's randomness
 * in its kernel's pool with the CRNG reseeded at once (ENTROPY), so that two restores of one
 * snapshot do not go on with the same random state. The real agent, compiled for this host, on
 * --stdio behind the real link; then a hostile agent's answers against the link.
 */

/** RNDADDENTROPY needs CAP_SYS_ADMIN (bit 21 of the effective capabilities). */
function hasSysAdmin(): boolean {
  const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return line ? (BigInt(`0x${line[1]}`) & (1n << 21n)) !== 0n : false;
}

const sink = () => {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { stream, text: () => Buffer.concat(chunks).toString() };
};

describe('the real agent after a restore: HELLO_GET and ENTROPY (--stdio)', () => {
  let link: AgentLink;
  let stopAgent: () => Promise<void>;
  let binary: string;
  const reports: string[] = [];

  before(async () => {
    ({
      link,
      binary,
      stop: stopAgent,
    } = await startStdioAgent('ovm-agent-restore-', {
      report: (m) => reports.push(m),
    }));
  });

  after(() => stopAgent());

  it('answers HELLO_GET with its HELLO, which is not taken for a restart: a running session goes on', async () => {
    const out = sink();
    const session = AgentSession.start(
      link,
      {
        argv: ['sh', '-c', 'sleep 0.3; echo still here'],
        env: [],
        workdir: '/',
        tty: false,
        rows: 24,
        cols: 80,
      },
      { stdout: out.stream, stderr: sink().stream },
    );
    const heard: string[] = [];
    const off = link.onHello((h, how) => heard.push(`${h.version} ${h.arch} ${how}`));
    try {
      const hello = await link.requestHello(2_000);
      assert.deepEqual(hello, { version: 'ovm-agent/1', arch: defaultGuestArch() });
      assert.deepEqual(heard, [`ovm-agent/1 ${defaultGuestArch()} requested`], 'onHello hears the answer');
      assert.equal(await session.done, 0);
      assert.equal(out.text(), 'still here\n');
    } finally {
      off();
    }
    assert.deepEqual(reports, []);
  });

  it('ENTROPY of 32, 64 and 512 bytes: added to the kernel pool and reseeded ("ok")', async (t) => {
    if (!hasSysAdmin()) {
      t.skip('needs CAP_SYS_ADMIN (RNDADDENTROPY): run the tests as root outside a user namespace');
      return;
    }
    for (const n of [32, 64, 512]) assert.equal(await link.reseed(randomBytes(n), 2_000), 'ok', `${n} bytes`);
  });

  it('ENTROPY of a wrong size (0, 31, 513, 4096 bytes): an error answer, the agent keeps serving', async () => {
    for (const n of [0, 31, 513, 4096]) {
      const frame = await link.request(FRAME.entropy, Buffer.alloc(n, 7), FRAME.entropyDone, 2_000);
      assert.ok(frame, `an answer to ${n} bytes`);
      assert.equal(
        frame.payload.toString(),
        `error: Invalid argument: ${n} bytes of entropy (32 to 512 expected)`,
        `${n} bytes`,
      );
    }
    assert.ok(await link.ping(), 'the agent still answers');
    // The link refuses to send those itself.
    for (const n of [0, 4096]) await assert.rejects(link.reseed(Buffer.alloc(n)), RangeError);
    assert.deepEqual(reports, []);
  });

  it('without CAP_SYS_ADMIN, ENTROPY is refused with the reason (run as nobody)', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root to start the agent as another user');
      return;
    }
    // A copy nobody may run (the agent cache is private to its owner).
    const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-nobody-'));
    fs.chmodSync(shared, 0o755);
    const copy = path.join(shared, 'ovm-agent');
    fs.copyFileSync(binary, copy);
    fs.chmodSync(copy, 0o755);
    const other = spawn(copy, ['--stdio'], { stdio: ['pipe', 'pipe', 'ignore'], uid: 65534, gid: 65534 });
    const nobody = new AgentLink();
    nobody.attach(Duplex.from({ readable: other.stdout, writable: other.stdin }));
    try {
      assert.ok(await nobody.waitHello(5_000));
      assert.equal(
        await nobody.reseed(randomBytes(64), 2_000),
        'error: RNDADDENTROPY: Operation not permitted',
      );
    } finally {
      await nobody.close();
      other.kill('SIGKILL');
      fs.rmSync(shared, { recursive: true, force: true });
    }
  });
});

/** A link whose agent is this test: what the link sends arrives in `received`, `send` answers. */
function fakeAgentLink() {
  const toAgent = new PassThrough();
  const fromAgent = new PassThrough();
  const reports: string[] = [];
  const link = new AgentLink({ report: (m) => reports.push(m) });
  const received: Frame[] = [];
  const decoder = new FrameDecoder();
  let onFrame: (f: Frame) => void = () => undefined;
  toAgent.on('data', (d: Buffer) => {
    for (const f of decoder.push(d)) {
      received.push(f);
      onFrame(f);
    }
  });
  const send = (type: number, channel: number, payload: Buffer | string = '') =>
    fromAgent.write(encodeFrame(type, channel, payload));
  return {
    link,
    reports,
    received,
    fromAgent,
    send,
    answer(handler: (f: Frame) => void) {
      onFrame = handler;
    },
    attach() {
      link.attach(Duplex.from({ readable: fromAgent, writable: toAgent }));
    },
  };
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: looking for control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

describe('a hostile agent answering ENTROPY and HELLO_GET', () => {
  it('a 1 MiB ENTROPY_DONE is skipped unbuffered, one just under the frame limit or over 200 bytes is dropped: no answer', async () => {
    const fake = fakeAgentLink();
    fake.attach();
    fake.send(FRAME.hello, 0, 'ovm-agent/1 x86_64');
    assert.ok(await fake.link.waitHello(1_000));
    for (const size of [1 << 20, (1 << 20) - 5, MAX_ENTROPY_DONE_BYTES + 1]) {
      fake.answer((f) => {
        if (f.type === FRAME.entropy) fake.send(FRAME.entropyDone, f.channel, Buffer.alloc(size, 0x6f));
      });
      const t0 = performance.now();
      assert.equal(await fake.link.reseed(randomBytes(64), 1_000), undefined, `${size} bytes`);
      // Dropped frames end the request at once; only the skipped one (never seen) waits it out.
      if (size < 1 << 20) assert.ok(performance.now() - t0 < 900, `${size} bytes: refused at once`);
    }
    assert.equal(await fake.link.ping(200), false, 'the fake answers nothing else; the link is still up');
    const reports = fake.reports.join('\n');
    assert.match(reports, /a frame of 1048581 bytes.*skipped/);
    assert.match(reports, /an ENTROPY_DONE of 1048571 bytes/);
    assert.match(reports, /an ENTROPY_DONE of 201 bytes/);
  });

  it('escape sequences, bidi controls and line breaks in ENTROPY_DONE: dropped, nothing of them reported', async () => {
    const fake = fakeAgentLink();
    fake.attach();
    fake.send(FRAME.hello, 0, 'ovm-agent/1 x86_64');
    assert.ok(await fake.link.waitHello(1_000));
    for (const text of [
      'error: \u001b]0;pwned\u0007',
      'ok\u001b[2J',
      'error: fine\r\nopenshell-vm: all good',
      'error: \u202egnp.exe',
      'ok; \u009b31m',
      'okay',
      '',
    ]) {
      fake.answer((f) => {
        if (f.type === FRAME.entropy) fake.send(FRAME.entropyDone, f.channel, text);
      });
      assert.equal(await fake.link.reseed(randomBytes(64), 1_000), undefined, JSON.stringify(text));
    }
    assert.equal(fake.reports.filter((r) => /malformed ENTROPY_DONE/.test(r)).length, 7);
    for (const r of fake.reports) assert.doesNotMatch(r, CONTROL, r);
    // A well-formed answer still comes through as it is.
    fake.answer((f) => {
      if (f.type === FRAME.entropy) fake.send(FRAME.entropyDone, f.channel, 'error: Operation not permitted');
    });
    assert.equal(await fake.link.reseed(randomBytes(64), 1_000), 'error: Operation not permitted');
  });

  it('ENTROPY_DONE only as the answer on its request channel: on channel 0, a session or a channel never opened it is dropped', async () => {
    const fake = fakeAgentLink();
    fake.attach();
    fake.send(FRAME.hello, 0, 'ovm-agent/1 x86_64');
    assert.ok(await fake.link.waitHello(1_000));
    const lost: string[] = [];
    const session = fake.link.open({ onFrame: () => undefined, onLost: (r) => lost.push(r) });
    fake.answer((f) => {
      if (f.type !== FRAME.entropy) return;
      fake.send(FRAME.entropyDone, 0, 'ok');
      fake.send(FRAME.entropyDone, session.channel, 'ok');
      fake.send(FRAME.entropyDone, 999, 'ok');
    });
    assert.equal(await fake.link.reseed(randomBytes(64), 300), undefined, 'no answer on its channel');
    const reports = fake.reports.join('\n');
    assert.match(reports, /ENTROPY_DONE on channel 0/);
    assert.match(
      reports,
      new RegExp(`type ${FRAME.entropyDone}, not expected there \\(channel ${session.channel}\\)`),
    );
    assert.match(reports, /channel 999, which was never opened/);
    assert.deepEqual(lost, [], 'the session was not torn down');
  });

  it('requestHello before the VMM connected: HELLO_GET goes out on connect; an unanswered one times out, then an unasked HELLO is a restart', async () => {
    const fake = fakeAgentLink();
    const hows: HelloHow[] = [];
    fake.link.onHello((_h, how) => hows.push(how));
    const asked = fake.link.requestHello(2_000);
    fake.answer((f) => {
      if (f.type === FRAME.helloGet) fake.send(FRAME.hello, 0, 'ovm-agent/1 aarch64');
    });
    fake.attach();
    assert.deepEqual(await asked, { version: 'ovm-agent/1', arch: 'aarch64' });
    assert.deepEqual(
      fake.received.map((f) => [f.type, f.channel, f.payload.length]),
      [[FRAME.helloGet, 0, 0]],
    );

    const lost: string[] = [];
    fake.link.open({ onFrame: () => undefined, onLost: (r) => lost.push(r) });
    fake.answer(() => undefined);
    assert.equal(await fake.link.requestHello(100), undefined, 'no answer: undefined');
    fake.send(FRAME.hello, 0, 'ovm-agent/1 aarch64');
    for (let i = 0; i < 50 && !lost.length; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(lost, ['the guest agent restarted']);
    assert.deepEqual(hows, ['requested', 'again'], 'the answer, then one unasked');
    assert.equal(fake.reports.length, 1, fake.reports.join('\n'));
    assert.match(fake.reports[0] ?? '', /an unasked HELLO .*1 of at most 3 taken for an agent restart/);
    assert.equal(fake.link.dropped, undefined, 'one restart is taken');
  });

  it('HELLO 1000 times unasked: the listeners hear the first and 3 again, 4 reports, then the link is dropped for good', async () => {
    const fake = fakeAgentLink();
    const hows: HelloHow[] = [];
    fake.link.onHello((_h, how) => hows.push(how));
    fake.attach();
    fake.send(FRAME.hello, 0, 'ovm-agent/1 x86_64');
    assert.ok(await fake.link.waitHello(1_000));
    const lost: string[] = [];
    fake.link.open({ onFrame: () => undefined, onLost: (r) => lost.push(r) });
    fake.answer((f) => {
      if (f.type === FRAME.ping) fake.send(FRAME.pong, f.channel, f.payload);
    });
    assert.ok(await fake.link.ping(1_000), 'the fake answers PING');
    const hello = encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64');
    // Three taken for restarts (the session open then is lost); a session opened after them.
    fake.fromAgent.write(Buffer.concat([hello, hello, hello]));
    for (let i = 0; i < 50 && hows.length < 4; i++) await new Promise((r) => setTimeout(r, 10));
    const session = fake.link.open({ onFrame: () => undefined, onLost: (r) => lost.push(r) });
    fake.fromAgent.write(Buffer.concat(Array.from({ length: 996 }, () => hello)));
    for (let i = 0; i < 100 && !fake.link.dropped; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(hows, ['first', 'again', 'again', 'again']);
    assert.equal(fake.reports.length, MAX_UNASKED_HELLOS + 1, fake.reports.join('\n'));
    assert.ok(MAX_UNASKED_HELLOS + 1 < MAX_REPORTS, 'the drop is not the general cap');
    assert.match(fake.reports.at(-1) ?? '', /4 of them \(at most 3 are taken\); the link to it is dropped/);
    assert.match(fake.link.dropped ?? '', /unasked HELLO/);
    assert.equal(lost.length, 2, 'the first session lost at the first restart, the second at the drop');
    assert.equal(lost[0], 'the guest agent restarted');
    assert.match(
      lost[1] ?? '',
      /^the guest agent broke the protocol \(an unasked HELLO.*the link to it is dropped$/,
    );
    assert.equal(fake.link.hello, undefined);
    assert.ok(fake.fromAgent.destroyed, "the guest's stream is destroyed");
    // Nothing works through it any more, at once; nor does a new stream.
    assert.throws(() => fake.link.open({ onFrame: () => undefined, onLost: () => undefined }));
    assert.equal(await fake.link.ping(1_000), false);
    assert.equal(await fake.link.waitHello(1_000), undefined);
    assert.equal(await fake.link.requestHello(1_000), undefined);
    assert.equal(fake.link.shutdown(), false);
    const other = new PassThrough();
    fake.link.attach(Duplex.from({ readable: other, writable: new PassThrough() }));
    assert.equal(fake.link.hello, undefined);
    session.send(FRAME.stdin, 'x');
    assert.equal(fake.reports.length, MAX_UNASKED_HELLOS + 1, 'nothing more reported');
    for (const r of fake.reports) assert.doesNotMatch(r, CONTROL, r);
  });
});
