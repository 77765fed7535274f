import fs from 'node:fs/promises';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { encodeFrame, FRAME, type Frame, FrameDecoder, formatAgentTime, parseAgentTime } from './protocol.ts';

export interface AgentHello {
  readonly version: string;
  readonly arch: string;
}

/** What a channel's owner hears: the agent's frames on that channel, and the link going down. */
export interface ChannelHandler {
  onFrame(frame: Frame): void;
  onLost(reason: string): void;
}

/**
 * The host's end of the guest agent's byte stream (the VMM's side of the virtio-serial port):
 * frames multiplexed on channels. Channel 0 is used by the link itself (ping, clock, shutdown);
 * open() hands out the others, one per exec session or clock query.
 */
export class AgentLink {
  #stream: Duplex | undefined;
  #hello: AgentHello | undefined;
  #helloWaiters: ((hello: AgentHello) => void)[] = [];
  readonly #channels = new Map<number, ChannelHandler>();
  #next = 1;
  #closed = false;
  #server: net.Server | undefined;
  #socketPath: string | undefined;

  /** Listens on `socketPath` for the VMM's connection (QEMU connects at start, as a client). */
  static async listen(socketPath: string): Promise<AgentLink> {
    const link = new AgentLink();
    await fs.rm(socketPath, { force: true });
    const server = net.createServer((socket) => {
      if (link.#stream) {
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
    this.#stream = stream;
    const decoder = new FrameDecoder();
    stream.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        this.#lose(`the agent's stream is corrupt (${(err as Error).message})`);
        stream.destroy();
        return;
      }
      for (const frame of frames) this.#dispatch(frame);
    });
    stream.on('error', () => undefined);
    stream.on('close', () => {
      this.#stream = undefined;
      this.#hello = undefined;
      this.#lose('the guest agent is gone (the VM stopped)');
    });
  }

  get hello(): AgentHello | undefined {
    return this.#hello;
  }

  /** Resolves once the agent has said hello, or undefined after `timeoutMs`. */
  waitHello(timeoutMs: number): Promise<AgentHello | undefined> {
    if (this.#hello) return Promise.resolve(this.#hello);
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

  /** A new channel; frames for it go to `handler`. Returns its number and a sender. */
  open(handler: ChannelHandler): {
    channel: number;
    send: (type: number, payload?: Buffer | string) => boolean;
  } {
    if (!this.#hello || !this.#stream) throw new Error('the guest agent is not connected');
    const channel = this.#next++;
    this.#channels.set(channel, handler);
    return { channel, send: (type, payload) => this.#send(type, channel, payload) };
  }

  release(channel: number): void {
    this.#channels.delete(channel);
  }

  /** One request answered on its own channel (clock, ping), or undefined after `timeoutMs`. */
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
      const opened = this.open({
        onFrame: (frame) => {
          if (frame.type === answer) finish(frame);
        },
        onLost: () => finish(undefined),
      });
      channel = opened.channel;
      opened.send(type, payload);
    });
  }

  /** The guest's clock (ms since the epoch) and when it was read on the host (midpoint). */
  async guestTime(timeoutMs = 2_000): Promise<{ guestMs: number; hostMs: number } | undefined> {
    const t0 = Date.now();
    const frame = await this.request(FRAME.timeGet, '', FRAME.time, timeoutMs);
    if (!frame) return undefined;
    return { guestMs: parseAgentTime(frame.payload.toString()), hostMs: (t0 + Date.now()) / 2 };
  }

  /** Sets the guest's clock to the host's; returns the guest's clock afterwards. */
  async syncClock(timeoutMs = 2_000): Promise<number | undefined> {
    const frame = await this.request(FRAME.timeSet, formatAgentTime(Date.now()), FRAME.time, timeoutMs);
    return frame ? parseAgentTime(frame.payload.toString()) : undefined;
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
    if (frame.type === FRAME.hello) {
      const [version = '', arch = ''] = frame.payload.toString().split(' ');
      // An agent that says hello again has restarted: its sessions are gone.
      if (this.#hello) this.#lose('the guest agent restarted');
      this.#hello = { version, arch };
      for (const w of this.#helloWaiters.splice(0)) w(this.#hello);
      return;
    }
    this.#channels.get(frame.channel)?.onFrame(frame);
  }

  #lose(reason: string): void {
    const handlers = [...this.#channels.values()];
    this.#channels.clear();
    for (const h of handlers) h.onLost(reason);
  }
}
