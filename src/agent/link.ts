import fs from 'node:fs/promises';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { terminalSafeLine } from '../host/terminal-text.ts';
import {
  AGENT_SESSION_FRAMES,
  agentTimeMs,
  checkAgentFrame,
  ENTROPY_MAX_BYTES,
  ENTROPY_MIN_BYTES,
  encodeFrame,
  FRAME,
  type Frame,
  FrameDecoder,
  formatAgentTime,
} from './protocol.ts';

export interface AgentHello {
  readonly version: string;
  readonly arch: string;
}

/** What a channel's owner hears: the agent's frames on that channel, and the link going down. */
export interface ChannelHandler {
  onFrame(frame: Frame): void;
  onLost(reason: string): void;
  /** A frame for this channel that broke the protocol was dropped (reported already). */
  onDropped?(reason: string): void;
}

export interface AgentLinkOptions {
  /**
   * Told about every frame from the guest that broke the protocol (dropped; the link stays up).
   * The first MAX_REPORTS are reported, then that further ones are not.
   */
  readonly report?: (message: string) => void;
}

/** How many protocol violations a link reports (a hostile guest must not flood the logs). */
export const MAX_REPORTS = 20;

/**
 * How many unasked HELLOs after the link's first it takes (each one reported, and taken for an
 * agent restart: its sessions are gone); the one after them drops the link for good. A real
 * agent says HELLO once, and again only when asked (HELLO_GET) or when it was restarted (by the
 * guest's init, or it dialled again under libkrun); a guest that keeps saying it is hostile.
 */
export const MAX_UNASKED_HELLOS = 3;

/**
 * How a hello came: 'first', the link's first; 'requested', the answer to a requestHello();
 * 'again', unasked after the first (a restarted agent, or a hostile one: a protocol violation).
 */
export type HelloHow = 'first' | 'requested' | 'again';

export type HelloListener = (hello: AgentHello, how: HelloHow) => void;

interface OpenChannel {
  readonly handler: ChannelHandler;
  /** The frame types the agent may send on it. */
  readonly accepts: ReadonlySet<number>;
}

/**
 * The host's end of the guest agent's byte stream (the VMM's side of the virtio-serial port):
 * frames multiplexed on channels. Channel 0 is used by the link itself (hello, shutdown); open()
 * hands out the others, one per exec session or request (ping, clock, entropy).
 *
 * Everything the agent sends is untrusted (it runs in the guest): a frame out of the size range
 * is skipped, a frame that is malformed (checkAgentFrame), of a kind not expected on its channel
 * or for a channel never opened is dropped and reported, and nothing the guest sends can throw.
 */
export class AgentLink {
  #stream: Duplex | undefined;
  #hello: AgentHello | undefined;
  #helloWaiters: ((hello: AgentHello) => void)[] = [];
  readonly #helloListeners = new Set<HelloListener>();
  /** Whether a hello came on this link yet (on any of its connections). */
  #heard = false;
  /** The unasked hellos after the first. */
  #unasked = 0;
  /** Why the link was dropped for good (the guest broke the protocol beyond a cap). */
  #dropped: string | undefined;
  /**
   * requestHello()s not answered yet, oldest first: each HELLO answers one of them (and is not
   * taken for an agent restart).
   */
  #helloRequests: ((hello: AgentHello) => void)[] = [];
  /** HELLO_GETs asked for before the VMM connected: sent when it does. */
  #helloGetsQueued = 0;
  readonly #channels = new Map<number, OpenChannel>();
  #next = 1;
  #closed = false;
  #server: net.Server | undefined;
  #socketPath: string | undefined;
  readonly #report: (message: string) => void;
  #reports = 0;

  constructor(options: AgentLinkOptions = {}) {
    this.#report = options.report ?? (() => undefined);
  }

  /** Listens on `socketPath` for the VMM's connection (QEMU connects at start, as a client). */
  static async listen(socketPath: string, options: AgentLinkOptions = {}): Promise<AgentLink> {
    const link = new AgentLink(options);
    await fs.rm(socketPath, { force: true });
    const server = net.createServer((socket) => {
      if (link.#stream || link.#dropped) {
        socket.destroy();
        return;
      }
      link.attach(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.unref();
    link.#server = server;
    link.#socketPath = socketPath;
    return link;
  }

  /** Uses `stream` as the agent's channel (tests: the agent's stdio). */
  attach(stream: Duplex): void {
    if (this.#dropped) {
      stream.on('error', () => undefined);
      stream.destroy();
      return;
    }
    this.#stream = stream;
    for (; this.#helloGetsQueued > 0; this.#helloGetsQueued--) this.#send(FRAME.helloGet, 0);
    const decoder = new FrameDecoder({ onDiscard: (reason) => this.#violation(reason) });
    stream.on('data', (chunk: Buffer) => {
      if (this.#dropped) return;
      for (const frame of decoder.push(chunk)) this.#dispatch(frame);
    });
    stream.on('error', () => undefined);
    stream.on('close', () => {
      if (decoder.pendingBytes && !this.#closed && !this.#dropped) {
        this.#violation(`the stream ended inside a frame (${decoder.pendingBytes} bytes)`);
      }
      if (this.#stream === stream) this.#stream = undefined;
      this.#hello = undefined;
      this.#lose('the guest agent is gone (the VM stopped)');
    });
  }

  get hello(): AgentHello | undefined {
    return this.#hello;
  }

  /**
   * Why the link was dropped for good, or undefined: a guest that said HELLO unasked more than
   * MAX_UNASKED_HELLOS times. Nothing it sends is read any more, and no new connection is taken.
   */
  get dropped(): string | undefined {
    return this.#dropped;
  }

  /** Resolves once the agent has said hello, or undefined after `timeoutMs` (at once when dropped). */
  waitHello(timeoutMs: number): Promise<AgentHello | undefined> {
    if (this.#hello) return Promise.resolve(this.#hello);
    if (this.#dropped) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#helloWaiters = this.#helloWaiters.filter((w) => w !== done);
        resolve(undefined);
      }, timeoutMs);
      timer.unref();
      const done = (hello: AgentHello) => {
        clearTimeout(timer);
        resolve(hello);
      };
      this.#helloWaiters.push(done);
    });
  }

  /**
   * Calls `listener` on every hello, with how it came (HelloHow): the agent's first, an answer to
   * requestHello(), an unasked one again (a restarted agent's, reported as a protocol violation;
   * at most MAX_UNASKED_HELLOS of them, then the link is dropped). Returns the function that
   * removes it.
   */
  onHello(listener: HelloListener): () => void {
    this.#helloListeners.add(listener);
    return () => this.#helloListeners.delete(listener);
  }

  /**
   * Asks the agent to say hello again (HELLO_GET; sent once the VMM has connected, if it has not
   * yet): a guest restored from a snapshot never says it by itself. Resolves with the hello, or
   * undefined after `timeoutMs`. Its answer is not taken for an agent restart (the sessions stay).
   */
  requestHello(timeoutMs: number): Promise<AgentHello | undefined> {
    if (this.#dropped) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        // Unanswered: a HELLO after this is the agent's own again.
        this.#helloRequests = this.#helloRequests.filter((r) => r !== answer);
        resolve(undefined);
      }, timeoutMs);
      timer.unref();
      const answer = (hello: AgentHello) => {
        clearTimeout(timer);
        resolve(hello);
      };
      this.#helloRequests.push(answer);
      if (this.#stream) this.#send(FRAME.helloGet, 0);
      else this.#helloGetsQueued++;
    });
  }

  /**
   * A new channel; frames for it go to `handler`, if they are of a type in `accepts` (default:
   * an exec session's STDOUT, STDERR, EXIT). Returns its number and a sender.
   */
  open(
    handler: ChannelHandler,
    accepts: ReadonlySet<number> = AGENT_SESSION_FRAMES,
  ): {
    channel: number;
    send: (type: number, payload?: Buffer | string) => boolean;
  } {
    if (!this.#hello || !this.#stream) throw new Error('the guest agent is not connected');
    const channel = this.#next++;
    this.#channels.set(channel, { handler, accepts });
    return { channel, send: (type, payload) => this.#send(type, channel, payload) };
  }

  release(channel: number): void {
    this.#channels.delete(channel);
  }

  /**
   * One request answered on its own channel (clock, ping): the answer (checked), or undefined
   * after `timeoutMs`, when the link goes down, or when the agent answers with a bad frame.
   */
  request(
    type: number,
    payload: Buffer | string,
    answer: number,
    timeoutMs: number,
  ): Promise<Frame | undefined> {
    if (!this.#hello) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      let channel = 0;
      const finish = (frame: Frame | undefined) => {
        clearTimeout(timer);
        this.release(channel);
        resolve(frame);
      };
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      timer.unref();
      const opened = this.open(
        {
          onFrame: (frame) => finish(frame),
          onLost: () => finish(undefined),
          onDropped: () => finish(undefined),
        },
        new Set([answer]),
      );
      channel = opened.channel;
      opened.send(type, payload);
    });
  }

  /** The guest's clock (ms since the epoch) and when it was read on the host (midpoint). */
  async guestTime(timeoutMs = 2_000): Promise<{ guestMs: number; hostMs: number } | undefined> {
    const t0 = Date.now();
    const frame = await this.request(FRAME.timeGet, '', FRAME.time, timeoutMs);
    const guestMs = frame && agentTimeMs(frame.payload);
    if (guestMs === undefined) return undefined;
    return { guestMs, hostMs: (t0 + Date.now()) / 2 };
  }

  /** Sets the guest's clock to the host's; returns the guest's clock afterwards. */
  async syncClock(timeoutMs = 2_000): Promise<number | undefined> {
    const frame = await this.request(FRAME.timeSet, formatAgentTime(Date.now()), FRAME.time, timeoutMs);
    return frame && agentTimeMs(frame.payload);
  }

  /**
   * Gives the guest kernel `bytes` of host randomness (ENTROPY_MIN_BYTES to ENTROPY_MAX_BYTES): the
   * agent adds them to the pool and reseeds the CRNG at once. Resolves with the agent's answer:
   * 'ok'; 'ok; ...' (added, not reseeded at once: an old kernel); 'error: ...' (nothing added);
   * undefined when no (well-formed) answer came within `timeoutMs`. The answer is checked
   * (checkAgentFrame: printable ASCII, at most MAX_ENTROPY_DONE_BYTES) before it is returned.
   */
  async reseed(bytes: Buffer, timeoutMs = 5_000): Promise<string | undefined> {
    if (bytes.length < ENTROPY_MIN_BYTES || bytes.length > ENTROPY_MAX_BYTES) {
      throw new RangeError(
        `reseed: ${bytes.length} bytes of entropy (${ENTROPY_MIN_BYTES} to ${ENTROPY_MAX_BYTES} expected)`,
      );
    }
    const frame = await this.request(FRAME.entropy, bytes, FRAME.entropyDone, timeoutMs);
    return frame?.payload.toString('latin1');
  }

  async ping(timeoutMs = 2_000): Promise<boolean> {
    return (await this.request(FRAME.ping, 'ping', FRAME.pong, timeoutMs)) !== undefined;
  }

  /** Asks the guest to stop in order (the agent signals PID 1). False when no agent is there. */
  shutdown(): boolean {
    return this.#hello ? this.#send(FRAME.shutdown, 0) : false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stream?.destroy();
    this.#lose('openshell-vm is stopping the VM');
    if (this.#server) {
      await new Promise<void>((resolve) => this.#server?.close(() => resolve()));
      if (this.#socketPath) await fs.rm(this.#socketPath, { force: true });
    }
  }

  #send(type: number, channel: number, payload?: Buffer | string): boolean {
    if (!this.#stream || this.#stream.destroyed) return false;
    return this.#stream.write(encodeFrame(type, channel, payload));
  }

  #dispatch(frame: Frame): void {
    if (this.#dropped) return;
    const bad = checkAgentFrame(frame);
    if (bad) {
      this.#drop(frame, bad);
      return;
    }
    if (frame.type === FRAME.hello) {
      this.#onHelloFrame(frame);
      return;
    }
    const open = this.#channels.get(frame.channel);
    if (!open) {
      // A channel released a moment ago may still get output the agent sent before it heard
      // CLOSE; one never opened is a lie.
      if (frame.channel === 0 || frame.channel >= this.#next) {
        this.#violation(`a frame of type ${frame.type} for channel ${frame.channel}, which was never opened`);
      }
      return;
    }
    if (open.accepts.has(frame.type)) open.handler.onFrame(frame);
    else this.#drop(frame, `a frame of type ${frame.type}, not expected there`);
  }

  /** A HELLO (well-formed, on channel 0): how it came decides what the link makes of it. */
  #onHelloFrame(frame: Frame): void {
    const text = frame.payload.toString('latin1');
    const [version = '', arch = ''] = text.split(' ');
    const answer = this.#helloRequests.shift();
    const how: HelloHow = answer ? 'requested' : this.#heard ? 'again' : 'first';
    if (how === 'again') {
      this.#unasked++;
      const said = `an unasked HELLO ('${terminalSafeLine(text, { maxChars: 60 })}') after the first`;
      if (this.#unasked > MAX_UNASKED_HELLOS) {
        this.#cut(`${said}, ${this.#unasked} of them (at most ${MAX_UNASKED_HELLOS} are taken)`);
        return;
      }
      // Taken for a restarted agent: its sessions are gone.
      this.#violation(
        `${said} (${this.#unasked} of at most ${MAX_UNASKED_HELLOS} taken for an agent restart; its sessions are gone)`,
      );
      if (this.#hello) this.#lose('the guest agent restarted');
    }
    this.#heard = true;
    const hello = { version, arch };
    this.#hello = hello;
    for (const w of this.#helloWaiters.splice(0)) w(hello);
    for (const l of [...this.#helloListeners]) l(hello, how);
    answer?.(hello);
  }

  /**
   * Drops the link for good: its sessions and requests lost, nothing more read from the guest,
   * its stream destroyed and no new connection taken. Reported even past MAX_REPORTS.
   */
  #cut(reason: string): void {
    this.#dropped = reason;
    this.#report(
      `the guest agent broke the protocol: ${reason}; the link to it is dropped (no exec, clock or orderly stop through it any more)`,
    );
    this.#hello = undefined;
    this.#helloGetsQueued = 0;
    const stream = this.#stream;
    this.#stream = undefined;
    this.#lose(`the guest agent broke the protocol (${reason}): the link to it is dropped`);
    stream?.destroy();
  }

  #drop(frame: Frame, reason: string): void {
    this.#violation(`${reason} (channel ${frame.channel}): dropped`);
    this.#channels.get(frame.channel)?.handler.onDropped?.(reason);
  }

  #violation(reason: string): void {
    this.#reports++;
    if (this.#reports <= MAX_REPORTS) this.#report(`the guest agent broke the protocol: ${reason}`);
    if (this.#reports === MAX_REPORTS)
      this.#report('further protocol errors from the guest agent are not reported');
  }

  #lose(reason: string): void {
    const handlers = [...this.#channels.values()];
    this.#channels.clear();
    for (const h of handlers) h.handler.onLost(reason);
  }
}
