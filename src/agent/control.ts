import fs from 'node:fs/promises';
import net from 'node:net';
import type { AgentLink } from './link.ts';
import { encodeFrame, FRAME, type Frame, FrameDecoder, formatAgentTime } from './protocol.ts';

/** Frames a client may send on an exec session after OPEN (the rest are the supervisor's). */
const CLIENT_SESSION_FRAMES: ReadonlySet<number> = new Set([FRAME.stdin, FRAME.resize, FRAME.signal]);

export interface ControlHandlers {
  /** `openshell-vm stop`: stop the instance in order within `timeoutMs`. */
  onStop(timeoutMs: number): void;
}

/**
 * The instance's control socket, served by the process that runs the VM (the supervisor). Each
 * client connection is one request, given by its first frame: OPEN (an exec session relayed to
 * the guest agent on a channel of its own, until EXIT), TIME_GET (the guest's clock), PING (is the
 * agent answering), STOP (stop the instance). Failures are an ERROR frame with a message.
 */
export class ControlServer {
  readonly socketPath: string;
  readonly #server: net.Server;
  readonly #clients = new Set<net.Socket>();

  private constructor(socketPath: string, server: net.Server) {
    this.socketPath = socketPath;
    this.#server = server;
  }

  static async listen(
    socketPath: string,
    link: AgentLink,
    handlers: ControlHandlers,
  ): Promise<ControlServer> {
    await fs.rm(socketPath, { force: true });
    const server = net.createServer();
    const control = new ControlServer(socketPath, server);
    server.on('connection', (socket) => control.#serve(socket, link, handlers));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await fs.chmod(socketPath, 0o600);
    return control;
  }

  async close(): Promise<void> {
    for (const c of this.#clients) c.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await fs.rm(this.socketPath, { force: true });
  }

  #serve(socket: net.Socket, link: AgentLink, handlers: ControlHandlers): void {
    this.#clients.add(socket);
    socket.on('close', () => this.#clients.delete(socket));
    socket.on('error', () => undefined);
    const decoder = new FrameDecoder();
    const reply = (type: number, payload?: Buffer | string) => {
      if (!socket.destroyed) socket.write(encodeFrame(type, 0, payload));
    };
    const fail = (message: string) => {
      reply(FRAME.error, message);
      socket.end();
    };
    let session: { channel: number; send: (type: number, payload?: Buffer | string) => boolean } | undefined;
    let first = true;
    let done = false;
    socket.on('close', () => {
      if (session && !done) {
        session.send(FRAME.close);
        link.release(session.channel);
      }
    });
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const frame of frames) {
        if (!first) {
          if (session && CLIENT_SESSION_FRAMES.has(frame.type)) session.send(frame.type, frame.payload);
          continue;
        }
        first = false;
        if (frame.type === FRAME.open) {
          try {
            session = this.#openSession(frame, link, reply, fail, () => {
              done = true;
            });
          } catch (err) {
            fail((err as Error).message); // the link went down between hello and open
          }
        } else {
          // Nothing in a request may throw past here (an unhandled rejection would end the
          // supervisor with the VM still running): a failure is the client's ERROR.
          this.#request(frame, link, handlers, reply, fail).catch((err: unknown) =>
            fail(`the supervisor failed to answer: ${err instanceof Error ? err.message : String(err)}`),
          );
        }
      }
    });
  }

  #openSession(
    frame: Frame,
    link: AgentLink,
    reply: (type: number, payload?: Buffer | string) => void,
    fail: (message: string) => void,
    onDone: () => void,
  ): { channel: number; send: (type: number, payload?: Buffer | string) => boolean } | undefined {
    if (!link.hello) {
      fail('the guest agent is not running (the VM is still booting, or its rootfs has no agent)');
      return undefined;
    }
    let channel = 0;
    const opened = link.open({
      onFrame: (f) => {
        reply(f.type, f.payload);
        if (f.type === FRAME.exit) {
          onDone();
          link.release(channel);
        }
      },
      onLost: (reason) => {
        onDone();
        fail(reason);
      },
    });
    channel = opened.channel;
    opened.send(FRAME.open, frame.payload);
    return opened;
  }

  async #request(
    frame: Frame,
    link: AgentLink,
    handlers: ControlHandlers,
    reply: (type: number, payload?: Buffer | string) => void,
    fail: (message: string) => void,
  ): Promise<void> {
    switch (frame.type) {
      case FRAME.timeGet: {
        const t = await link.guestTime();
        if (t) reply(FRAME.time, formatAgentTime(t.guestMs));
        else fail('the guest agent did not answer');
        return;
      }
      case FRAME.ping:
        if (await link.ping()) reply(FRAME.pong, 'pong');
        else fail('the guest agent did not answer');
        return;
      case FRAME.stop: {
        const ms = Number(frame.payload.toString());
        handlers.onStop(Number.isFinite(ms) && ms > 0 ? ms : 30_000);
        reply(FRAME.pong, 'stopping');
        return;
      }
      default:
        fail(`unknown request ${frame.type}`);
    }
  }
}
