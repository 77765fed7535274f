/**
 * The frames spoken with the in-guest agent (src/guest/agent/ovm-agent.c), and between an
 * `openshell-vm exec` client and the instance's supervisor, which relays them: u32 length
 * (big-endian, of what follows), u8 type, u32 channel, payload. Channel 0 is the agent itself.
 */
export const FRAME = {
  open: 1,
  stdin: 2,
  resize: 3,
  signal: 4,
  stdout: 5,
  stderr: 6,
  exit: 7,
  close: 8,
  timeGet: 9,
  time: 10,
  timeSet: 11,
  shutdown: 12,
  hello: 13,
  ping: 14,
  pong: 15,
  /** Supervisor only (never sent to the agent): a failure the client should print, then exit 125. */
  error: 16,
  /** Client to supervisor: stop the instance in order (payload: the timeout in ms). Answered by pong. */
  stop: 17,
} as const;

export type FrameType = (typeof FRAME)[keyof typeof FRAME];

export interface Frame {
  readonly type: number;
  readonly channel: number;
  readonly payload: Buffer;
}

const MAX_FRAME = 1 << 20;

export function encodeFrame(
  type: number,
  channel: number,
  payload: Buffer | string = Buffer.alloc(0),
): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.alloc(9);
  head.writeUInt32BE(body.length + 5, 0);
  head.writeUInt8(type, 4);
  head.writeUInt32BE(channel, 5);
  return Buffer.concat([head, body]);
}

/** Splits a byte stream into frames; throws on a frame that cannot be one (length out of range). */
export class FrameDecoder {
  #buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    const frames: Frame[] = [];
    let off = 0;
    while (this.#buf.length - off >= 4) {
      const len = this.#buf.readUInt32BE(off);
      if (len < 5 || len > MAX_FRAME) throw new Error(`bad frame length ${len}`);
      if (this.#buf.length - off < 4 + len) break;
      frames.push({
        type: this.#buf.readUInt8(off + 4),
        channel: this.#buf.readUInt32BE(off + 5),
        payload: Buffer.from(this.#buf.subarray(off + 9, off + 4 + len)),
      });
      off += 4 + len;
    }
    this.#buf = this.#buf.subarray(off);
    return frames;
  }
}

/** A command to start in the guest. */
export interface ExecRequest {
  readonly argv: readonly string[];
  /** NAME=VALUE entries added to (or replacing) the agent's environment. */
  readonly env: readonly string[];
  /** Working directory ('' keeps the agent's, /). */
  readonly workdir: string;
  readonly tty: boolean;
  readonly rows: number;
  readonly cols: number;
}

export function encodeOpen(req: ExecRequest): Buffer {
  for (const s of [...req.argv, ...req.env, req.workdir]) {
    if (s.includes('\0')) throw new Error('a NUL byte cannot be passed to the guest');
  }
  const fields = [
    req.tty ? 't' : '-',
    String(req.rows),
    String(req.cols),
    req.workdir,
    String(req.argv.length),
    ...req.argv,
    String(req.env.length),
    ...req.env,
  ];
  return Buffer.from(fields.map((f) => `${f}\0`).join(''));
}

export function decodeOpen(payload: Buffer): ExecRequest {
  const f = payload.toString().split('\0');
  f.pop();
  const argc = Number(f[4]);
  const argv = f.slice(5, 5 + argc);
  const envc = Number(f[5 + argc]);
  return {
    tty: f[0] === 't',
    rows: Number(f[1]),
    cols: Number(f[2]),
    workdir: f[3] ?? '',
    argv,
    env: f.slice(6 + argc, 6 + argc + envc),
  };
}

export function encodeResize(rows: number, cols: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(Math.max(0, Math.min(0xffff, rows)), 0);
  b.writeUInt16BE(Math.max(0, Math.min(0xffff, cols)), 2);
  return b;
}

export function encodeExit(code: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(code, 0);
  return b;
}

export function decodeExit(payload: Buffer): number {
  return payload.length >= 4 ? payload.readInt32BE(0) : 125;
}

/** The agent's clock text "SEC.NSEC" as milliseconds since the epoch. */
export function parseAgentTime(text: string): number {
  const m = /^(-?\d+)\.(\d{1,9})$/.exec(text.trim());
  if (!m) throw new Error(`bad time from the agent: '${text}'`);
  return Number(m[1]) * 1000 + Number((m[2] ?? '0').padEnd(9, '0')) / 1e6;
}

export function formatAgentTime(ms: number): string {
  const sec = Math.floor(ms / 1000);
  const nsec = Math.round((ms - sec * 1000) * 1e6);
  return `${sec}.${String(Math.min(nsec, 999_999_999)).padStart(9, '0')}`;
}

/** Signals the agent forwards to a command by name (numbers differ between hosts). */
export const FORWARDED_SIGNALS = ['INT', 'TERM', 'HUP', 'QUIT', 'KILL', 'USR1', 'USR2', 'WINCH'] as const;
