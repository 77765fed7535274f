import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { MAX_UNASKED_HELLOS } from '../agent/link.ts';
import { encodeFrame, FRAME, type Frame, FrameDecoder } from '../agent/protocol.ts';
import type { VmSession } from '../vmm/session.ts';
import { createRun } from './runs.ts';
import { InstanceSupervisor, type SupervisorEvent } from './supervisor.ts';

/**
 * The supervisor's part in a guest's (re)connection: on its agent's first hello and on each it
 * asked for, the guest's kernel gets host randomness (ENTROPY) before anything else is asked of
 * it, then its clock is checked and set; agentReady() says when that is done. reconnectAgent()
 * asks a restored guest's agent, which never says hello by itself, for its hello. An unasked
 * hello again prepares nothing (a guest repeating it must not make the host work and log at
 * will). A fake agent plays the guest here, on the socket the VMM would connect.
 */

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-supervisor-'));
after(() => fs.rmSync(base, { recursive: true, force: true }));

const timeNow = () => {
  const ms = Date.now();
  return `${Math.floor(ms / 1000)}.${String((ms % 1000) * 1e6).padStart(9, '0')}`;
};

/** The guest agent's stand-in: answers ENTROPY with `entropyAnswer` (undefined: never), clock requests with the time. */
class FakeAgent {
  readonly received: Frame[] = [];
  entropyAnswer: string | undefined = 'ok';
  readonly socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    const decoder = new FrameDecoder();
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        this.received.push(f);
        if (f.type === FRAME.entropy && this.entropyAnswer !== undefined)
          this.send(FRAME.entropyDone, f.channel, this.entropyAnswer);
        else if (f.type === FRAME.timeGet || f.type === FRAME.timeSet)
          this.send(FRAME.time, f.channel, timeNow());
        else if (f.type === FRAME.helloGet) this.hello();
      }
    });
  }

  static async connect(socketPath: string): Promise<FakeAgent> {
    const socket = net.createConnection(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new FakeAgent(socket);
  }

  hello(): void {
    this.send(FRAME.hello, 0, 'ovm-agent/1 x86_64');
  }

  send(type: number, channel: number, payload: Buffer | string = ''): void {
    if (!this.socket.destroyed) this.socket.write(encodeFrame(type, channel, payload));
  }

  /** Resolves when the host closed the connection. */
  closed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || this.socket.readableEnded) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  /** How many frames of `type` it received. */
  count(type: number): number {
    return this.received.filter((f) => f.type === type).length;
  }

  /** The kinds of frame received, in order (HELLO_GET, ENTROPY, TIME_GET, ...). */
  kinds(): string[] {
    const names = new Map<number, string>(Object.entries(FRAME).map(([name, type]) => [type, name]));
    return this.received.map((f) => names.get(f.type) ?? String(f.type));
  }
}

async function openSupervisor(name: string) {
  const env = testEnvironment(fs.mkdtempSync(path.join(base, `${name}-`)));
  const run = await createRun(env, name);
  const events: SupervisorEvent[] = [];
  const supervisor = await InstanceSupervisor.open(
    env,
    run,
    name,
    {
      mode: 'run',
      detached: false,
      backend: 'qemu',
      accel: 'tcg',
      arch: 'x86_64',
      vcpus: 1,
      memMib: 256,
      forwards: [],
      command: ['true'],
      vmmLog: 'qemu.log',
    },
    (e) => events.push(e),
  );
  return {
    supervisor,
    events,
    warnings: () => events.filter((e) => e.type === 'warning').map((e) => e.message),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('InstanceSupervisor: the first hello and each requested one reseed the guest, then check its clock', () => {
  it('hello: ENTROPY (64 bytes from the host) before any clock frame, then agentReady is true', async () => {
    const { supervisor, events, warnings } = await openSupervisor('hello');
    let agent: FakeAgent | undefined;
    try {
      agent = await FakeAgent.connect(supervisor.agentSocket);
      agent.hello();
      assert.equal(await supervisor.agentReady(5_000), true);
      assert.deepEqual(agent.kinds(), ['entropy', 'timeGet', 'timeSet']);
      const entropy = agent.received[0];
      assert.equal(entropy?.payload.length, 64);
      assert.notEqual(entropy?.channel, 0, 'on a request channel of its own');
      assert.ok(
        entropy?.payload.some((b) => b !== 0),
        'real bytes, not a zeroed buffer',
      );
      assert.deepEqual(
        events.map((e) => (e as { message?: string }).message),
        [
          'guest agent ovm-agent/1 (x86_64) connected',
          'guest random pool reseeded with 64 bytes from the host',
        ],
      );
      assert.deepEqual(warnings(), []);
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });

  it('a restored guest: reconnectAgent() before the VMM connects sends HELLO_GET on connect; its hello is reseeded with new bytes', async () => {
    const { supervisor, warnings } = await openSupervisor('restore');
    let agent: FakeAgent | undefined;
    try {
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(100), false, 'no hello yet: false at the deadline');
      // The restored agent is mid-loop: it says nothing until it is asked.
      agent = await FakeAgent.connect(supervisor.agentSocket);
      assert.equal(await supervisor.agentReady(5_000), true);
      assert.deepEqual(agent.kinds(), ['helloGet', 'entropy', 'timeGet', 'timeSet']);

      // Restored again under the same supervisor: the previous round does not count.
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(5_000), true);
      assert.deepEqual(agent.kinds().slice(4), ['helloGet', 'entropy', 'timeGet', 'timeSet']);
      const [first, second] = agent.received.filter((f) => f.type === FRAME.entropy);
      assert.ok(first && second && !first.payload.equals(second.payload), 'fresh bytes each time');
      assert.deepEqual(warnings(), []);
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });

  it("a failed reseed is a warning naming the agent's answer, agentReady false; the clock is checked all the same", async () => {
    const { supervisor, warnings } = await openSupervisor('failed');
    let agent: FakeAgent | undefined;
    try {
      agent = await FakeAgent.connect(supervisor.agentSocket);
      agent.entropyAnswer = 'error: RNDADDENTROPY: Operation not permitted';
      agent.hello();
      assert.equal(await supervisor.agentReady(5_000), false);
      assert.deepEqual(agent.kinds(), ['entropy', 'timeGet', 'timeSet']);
      assert.equal(warnings().length, 1, warnings().join('\n'));
      assert.match(
        warnings()[0] ?? '',
        /random pool was not reseeded.*answered 'error: RNDADDENTROPY: Operation not permitted'/,
      );

      // An old kernel: the bytes are in, the CRNG not reseeded at once: a warning, not ready.
      agent.entropyAnswer = 'ok; not reseeded at once: RNDRESEEDCRNG: Invalid argument';
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(5_000), false);
      assert.match(warnings()[1] ?? '', /answered 'ok; not reseeded at once/);

      // A hostile answer (escape sequences): dropped by the link, reported, and never printed.
      agent.entropyAnswer = 'error: \u001b]0;pwned\u0007\u001b[2J';
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(5_000), false);
      const later = warnings().slice(2);
      assert.equal(later.length, 2, later.join('\n'));
      assert.match(later[0] ?? '', /broke the protocol: a malformed ENTROPY_DONE \(21 bytes\)/);
      assert.match(later[1] ?? '', /not reseeded from the host \(no well-formed answer/);
      // biome-ignore lint/suspicious/noControlCharactersInRegex: looking for control characters is the point
      for (const w of later) assert.doesNotMatch(w, /[\u0000-\u001f\u007f-\u009f]/);
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });

  it('agentReady is false once the VM is gone, and after close', async () => {
    const { supervisor } = await openSupervisor('gone');
    try {
      let exit: (value: { vmm: { code: number; signal: null } }) => void = () => undefined;
      const exited = new Promise<{ vmm: { code: number; signal: null } }>((resolve) => {
        exit = resolve;
      });
      await supervisor.attach({
        vm: { processes: [], hasExited: false, exited },
        gvproxy: undefined,
        close: async () => undefined,
      } as unknown as VmSession);
      const ready = supervisor.agentReady(30_000);
      exit({ vmm: { code: 0, signal: null } });
      const t0 = performance.now();
      assert.equal(await ready, false);
      assert.ok(performance.now() - t0 < 1_000, 'at once, not at the deadline');
    } finally {
      await supervisor.close();
    }
    assert.equal(await supervisor.agentReady(30_000), false);
  });
  it('a guest saying HELLO 1000 times unasked: one reseed and clock set, a bounded number of event lines, then the link is dropped', async () => {
    const { supervisor, events, warnings } = await openSupervisor('flood');
    let agent: FakeAgent | undefined;
    try {
      agent = await FakeAgent.connect(supervisor.agentSocket);
      agent.hello();
      assert.equal(await supervisor.agentReady(5_000), true);
      const hello = encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64');
      agent.socket.write(Buffer.concat(Array.from({ length: 999 }, () => hello)));
      const closed = await Promise.race([agent.closed().then(() => true), sleep(3_000).then(() => false)]);
      await sleep(200); // whatever the host would still have done after the flood
      assert.equal(agent.count(FRAME.entropy), 1, 'one reseed');
      assert.equal(agent.count(FRAME.timeSet), 1, 'one clock set');
      assert.equal(agent.count(FRAME.timeGet), 1, 'one clock check');
      assert.deepEqual(
        events.filter((e) => e.type !== 'warning').map((e) => e.message),
        [
          'guest agent ovm-agent/1 (x86_64) connected',
          'guest random pool reseeded with 64 bytes from the host',
        ],
      );
      assert.equal(warnings().length, MAX_UNASKED_HELLOS + 1, warnings().join('\n'));
      for (const w of warnings().slice(0, MAX_UNASKED_HELLOS)) {
        assert.match(w, /broke the protocol: an unasked HELLO .*taken for an agent restart/);
      }
      assert.match(warnings().at(-1) ?? '', /4 of them.*the link to it is dropped/);
      assert.ok(closed, 'the host closed the connection');
      assert.match(supervisor.link.dropped ?? '', /unasked HELLO/, 'the link is lost');
      assert.equal(supervisor.link.hello, undefined);
      assert.equal(await supervisor.agentReady(5_000), false, 'not ready any more (at once)');
      // No reconnection is taken, and a requested hello is not even asked for.
      const again = await FakeAgent.connect(supervisor.agentSocket);
      await again.closed();
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(200), false);
      assert.equal(agent.count(FRAME.helloGet) + again.count(FRAME.helloGet), 0);
      assert.equal(events.length, 2 + MAX_UNASKED_HELLOS + 1, 'no further event lines');
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });

  it('a restarted agent (an unasked hello on a new connection): reported, not reseeded, the link serves it', async () => {
    const { supervisor, events, warnings } = await openSupervisor('restart');
    let agent: FakeAgent | undefined;
    try {
      const first = await FakeAgent.connect(supervisor.agentSocket);
      first.hello();
      assert.equal(await supervisor.agentReady(5_000), true);
      first.socket.destroy();
      for (let i = 0; i < 100 && supervisor.link.hello; i++) await sleep(10);
      agent = await FakeAgent.connect(supervisor.agentSocket);
      agent.hello();
      assert.ok(await supervisor.link.waitHello(5_000));
      assert.equal(await supervisor.link.ping(200), false, 'the fake does not answer PING');
      await sleep(100);
      assert.deepEqual(agent.kinds(), ['ping'], 'no ENTROPY, no clock: only what was asked');
      assert.equal(events.filter((e) => e.type === 'agent').length, 2, 'the first hello only');
      assert.equal(warnings().length, 1, warnings().join('\n'));
      assert.match(warnings()[0] ?? '', /an unasked HELLO .*1 of at most 3 taken for an agent restart/);
      assert.equal(supervisor.link.dropped, undefined);
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });

  it('a requested hello still reseeds, also after an unasked one: reconnectAgent() gets a new round with fresh bytes', async () => {
    const { supervisor, warnings } = await openSupervisor('requested');
    let agent: FakeAgent | undefined;
    try {
      agent = await FakeAgent.connect(supervisor.agentSocket);
      agent.hello();
      assert.equal(await supervisor.agentReady(5_000), true);
      agent.hello(); // unasked: reported, nothing prepared
      for (let i = 0; i < 100 && !warnings().length; i++) await sleep(10);
      assert.equal(agent.count(FRAME.entropy), 1);
      supervisor.reconnectAgent();
      assert.equal(await supervisor.agentReady(5_000), true);
      assert.equal(agent.count(FRAME.helloGet), 1);
      assert.equal(agent.count(FRAME.entropy), 2, 'the requested hello was reseeded');
      const [first, second] = agent.received.filter((f) => f.type === FRAME.entropy);
      assert.ok(first && second && !first.payload.equals(second.payload), 'fresh bytes');
      assert.equal(warnings().length, 1, warnings().join('\n'));
      assert.match(warnings()[0] ?? '', /an unasked HELLO/);
    } finally {
      agent?.socket.destroy();
      await supervisor.close();
    }
  });
});
