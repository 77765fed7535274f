import type { Readable, Writable } from 'node:stream';
import { VmError } from '../errors.ts';
import type { AgentLink } from './link.ts';
import { decodeExit, type ExecRequest, encodeOpen, encodeResize, FRAME } from './protocol.ts';

/** Stdin goes to the agent in frames of at most this many bytes. */
export const STDIN_FRAME_BYTES = 64 * 1024;

export interface SessionIo {
  /** Passed through to the command (its end too); without one the command's stdin is at its end. */
  readonly stdin?: Readable | undefined;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

/**
 * One command run by the guest agent on a channel of `link`, in this process (no control socket
 * between): stdout and stderr to `io` as they come, stdin forwarded, `done` the command's exit
 * code as the agent reports it (128+N for signal N, 127 not found, 126 not executable, 125 the
 * agent could not start it). The link going down first is a VmError, never an exit code made up.
 * The agent's frames are already checked by the link (AgentLink): only STDOUT, STDERR and EXIT
 * reach this channel.
 */
export class AgentSession {
  readonly done: Promise<number>;
  readonly #send: (type: number, payload?: Buffer | string) => boolean;
  readonly #abandon: () => void;

  private constructor(
    send: (type: number, payload?: Buffer | string) => boolean,
    done: Promise<number>,
    abandon: () => void,
  ) {
    this.#send = send;
    this.done = done;
    this.#abandon = abandon;
  }

  /** Opens the session; throws a VmError when the agent is not connected. */
  static start(link: AgentLink, req: ExecRequest, io: SessionIo): AgentSession {
    let settle: { resolve: (code: number) => void; reject: (err: Error) => void } | undefined;
    const done = new Promise<number>((resolve, reject) => {
      settle = { resolve, reject };
    });
    done.catch(() => undefined);
    let settled = false;
    let channel = 0;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      stopInput();
      link.release(channel);
      fn();
    };
    let opened: ReturnType<AgentLink['open']>;
    try {
      opened = link.open({
        onFrame: (frame) => {
          if (frame.type === FRAME.stdout) io.stdout.write(frame.payload);
          else if (frame.type === FRAME.stderr) io.stderr.write(frame.payload);
          else if (frame.type === FRAME.exit) {
            const code = decodeExit(frame.payload);
            finish(() => settle?.resolve(code));
          }
        },
        onLost: (reason) =>
          finish(() =>
            settle?.reject(new VmError(`the command's session ended without its exit code: ${reason}`)),
          ),
      });
    } catch (err) {
      throw new VmError('the guest agent is not connected', { cause: err });
    }
    channel = opened.channel;
    const send = opened.send;
    const { stdin } = io;
    const onData = (chunk: Buffer) => {
      // A frame holds at most MAX_FRAME_BYTES (the agent drops the link on a longer one).
      for (let at = 0; at < chunk.length; at += STDIN_FRAME_BYTES) {
        send(FRAME.stdin, chunk.subarray(at, at + STDIN_FRAME_BYTES));
      }
    };
    const onEnd = () => {
      send(FRAME.stdin);
    };
    const stopInput = () => {
      if (!stdin) return;
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onEnd);
      stdin.pause();
    };
    send(FRAME.open, encodeOpen(req));
    if (stdin) {
      stdin.on('data', onData);
      stdin.once('end', onEnd);
      stdin.once('error', onEnd);
    } else {
      send(FRAME.stdin);
    }
    const abandon = () => {
      if (settled) return;
      send(FRAME.close);
      finish(() => settle?.reject(new VmError("the command's session was closed before it ended")));
    };
    return new AgentSession(send, done, abandon);
  }

  resize(rows: number, cols: number): void {
    this.#send(FRAME.resize, encodeResize(rows, cols));
  }

  /** Sends a signal (by name: INT, TERM, HUP, QUIT, KILL) to the command's process group. */
  signal(name: string): void {
    this.#send(FRAME.signal, name);
  }

  /** Drops the session (the agent kills the command; `done` rejects); its stdin is no longer read. */
  close(): void {
    this.#abandon();
  }
}
