import net from 'node:net';
import { HostError, VmError } from '../errors.ts';
import {
  decodeExit,
  type ExecRequest,
  encodeFrame,
  encodeOpen,
  encodeResize,
  FRAME,
  type Frame,
  FrameDecoder,
} from './protocol.ts';
import { type SessionIo, STDIN_FRAME_BYTES } from './session.ts';

function connect(socketPath: string, instance: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', (err) =>
      reject(
        new HostError(`cannot reach instance '${instance}' (${socketPath}: ${err.message})`, {
          hint: `see: openshell-vm status ${instance}`,
          cause: err,
        }),
      ),
    );
  });
}

/**
 * One request to an instance's supervisor: its answer frame, or an error (the supervisor's
 * ERROR message, no answer within `timeoutMs`, or no supervisor).
 */
export async function controlRequest(
  socketPath: string,
  instance: string,
  type: number,
  payload: Buffer | string,
  timeoutMs: number,
): Promise<Frame> {
  const socket = await connect(socketPath, instance);
  try {
    return await new Promise<Frame>((resolve, reject) => {
      const decoder = new FrameDecoder();
      const timer = setTimeout(
        () => reject(new HostError(`instance '${instance}' did not answer within ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
      socket.on('data', (chunk: Buffer) => {
        let frames: Frame[];
        try {
          frames = decoder.push(chunk);
        } catch (err) {
          clearTimeout(timer);
          reject(new HostError(`instance '${instance}' sent a malformed answer`, { cause: err }));
          socket.destroy();
          return;
        }
        for (const frame of frames) {
          clearTimeout(timer);
          if (frame.type === FRAME.error) reject(new VmError(frame.payload.toString()));
          else resolve(frame);
        }
      });
      socket.on('close', () => {
        clearTimeout(timer);
        reject(new HostError(`instance '${instance}' closed the connection without answering`));
      });
      socket.write(encodeFrame(type, 0, payload));
    });
  } finally {
    socket.destroy();
  }
}

/** The command's streams (the same as an in-process agent session's). */
export type ExecIo = SessionIo;

/**
 * A command running in an instance's guest through its supervisor: output streamed to `io`,
 * stdin forwarded (its end too), `done` is the command's exit code. resize() and signal() reach the
 * command; a lost connection is an error (VmError), never an exit code made up.
 */
export class ExecSession {
  readonly done: Promise<number>;
  readonly #socket: net.Socket;

  private constructor(socket: net.Socket, io: ExecIo) {
    this.#socket = socket;
    this.done = new Promise<number>((resolve, reject) => {
      const decoder = new FrameDecoder();
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        io.stdin?.unpipe?.();
        fn();
      };
      socket.on('data', (chunk: Buffer) => {
        let frames: Frame[];
        try {
          frames = decoder.push(chunk);
        } catch (err) {
          settle(() => reject(new VmError('the instance sent a malformed frame', { cause: err })));
          socket.destroy();
          return;
        }
        for (const frame of frames) {
          if (frame.type === FRAME.stdout) io.stdout.write(frame.payload);
          else if (frame.type === FRAME.stderr) io.stderr.write(frame.payload);
          else if (frame.type === FRAME.exit) {
            const code = decodeExit(frame.payload);
            settle(() => resolve(code));
            socket.end();
          } else if (frame.type === FRAME.error) {
            const message = frame.payload.toString();
            settle(() => reject(new VmError(message)));
          }
        }
      });
      socket.on('close', () =>
        settle(() => reject(new VmError('the connection to the instance was lost before the command ended'))),
      );
    });
    this.done.catch(() => undefined);
    if (io.stdin) {
      io.stdin.on('data', (chunk: Buffer) => {
        // A frame holds at most MAX_FRAME_BYTES (a longer one ends the connection).
        for (let at = 0; at < chunk.length; at += STDIN_FRAME_BYTES) {
          this.#send(FRAME.stdin, chunk.subarray(at, at + STDIN_FRAME_BYTES));
        }
      });
      io.stdin.on('end', () => this.#send(FRAME.stdin));
      io.stdin.on('error', () => this.#send(FRAME.stdin));
    } else {
      this.#send(FRAME.stdin);
    }
  }

  static async start(
    socketPath: string,
    instance: string,
    req: ExecRequest,
    io: ExecIo,
  ): Promise<ExecSession> {
    const socket = await connect(socketPath, instance);
    socket.on('error', () => undefined);
    socket.write(encodeFrame(FRAME.open, 0, encodeOpen(req)));
    return new ExecSession(socket, io);
  }

  resize(rows: number, cols: number): void {
    this.#send(FRAME.resize, encodeResize(rows, cols));
  }

  /** Sends a signal (by name: INT, TERM, HUP, QUIT, KILL) to the command's process group. */
  signal(name: string): void {
    this.#send(FRAME.signal, name);
  }

  /** Drops the session (the supervisor kills the command). */
  close(): void {
    this.#socket.destroy();
  }

  #send(type: number, payload?: Buffer | string): void {
    if (!this.#socket.destroyed && this.#socket.writable) this.#socket.write(encodeFrame(type, 0, payload));
  }
}
