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
  /**
   * Host to agent (channel 0): say HELLO again. A guest restored from a snapshot resumes with its
   * agent mid-loop; it said hello to a link that no longer exists.
   */
  helloGet: 18,
  /**
   * Host to agent: ENTROPY_MIN_BYTES to ENTROPY_MAX_BYTES of host randomness, added to the guest
   * kernel's pool and reseeding its CRNG at once. Answered by ENTROPY_DONE on the same channel.
   */
  entropy: 19,
  /**
   * Agent to host: "ok"; "ok; not reseeded at once: ..." (a kernel without RNDRESEEDCRNG: the
   * bytes are in the pool, the CRNG takes them at its next scheduled reseed); "error: ...".
   */
  entropyDone: 20,
} as const;

export type FrameType = (typeof FRAME)[keyof typeof FRAME];

export interface Frame {
  readonly type: number;
  readonly channel: number;
  readonly payload: Buffer;
}

/** The size range of ENTROPY's payload (the agent refuses the rest with an "error: ..." answer). */
export const ENTROPY_MIN_BYTES = 32;
export const ENTROPY_MAX_BYTES = 512;

/** The largest frame either side sends or accepts (length field: type, channel and payload). */
export const MAX_FRAME_BYTES = 1 << 20;
const HEADER_BYTES = 4;
const MIN_FRAME = 5;

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

export interface FrameDecoderOptions {
  /**
   * Untrusted peers (the guest agent): a frame whose length is out of range is skipped as its
   * bytes arrive (never buffered) and reported here; the stream stays in step. Without it, such a
   * frame throws (the peer is ours; its stream is corrupt).
   */
  readonly onDiscard?: (reason: string) => void;
}

/** Splits a byte stream into frames of at most MAX_FRAME_BYTES. */
export class FrameDecoder {
  #buf: Buffer = Buffer.alloc(0);
  /** Bytes of an out-of-range frame still to skip. */
  #skip = 0;
  readonly #onDiscard: ((reason: string) => void) | undefined;

  constructor(options: FrameDecoderOptions = {}) {
    this.#onDiscard = options.onDiscard;
  }

  /** Bytes held of a frame that has not arrived whole (a stream that ends here was cut short). */
  get pendingBytes(): number {
    return this.#buf.length + this.#skip;
  }

  push(chunk: Buffer): Frame[] {
    if (this.#skip) {
      const n = Math.min(this.#skip, chunk.length);
      this.#skip -= n;
      chunk = chunk.subarray(n);
    }
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    const frames: Frame[] = [];
    let off = 0;
    while (this.#buf.length - off >= HEADER_BYTES) {
      const len = this.#buf.readUInt32BE(off);
      if (len < MIN_FRAME || len > MAX_FRAME_BYTES) {
        const reason = `a frame of ${len} bytes (allowed: ${MIN_FRAME} to ${MAX_FRAME_BYTES})`;
        if (!this.#onDiscard) throw new Error(`bad frame length ${len}`);
        this.#onDiscard(`${reason}: skipped`);
        const here = Math.min(len, this.#buf.length - off - HEADER_BYTES);
        off += HEADER_BYTES + here;
        this.#skip = len - here;
        if (this.#skip) break;
        continue;
      }
      if (this.#buf.length - off < HEADER_BYTES + len) break;
      frames.push({
        type: this.#buf.readUInt8(off + 4),
        channel: this.#buf.readUInt32BE(off + 5),
        payload: Buffer.from(this.#buf.subarray(off + 9, off + HEADER_BYTES + len)),
      });
      off += HEADER_BYTES + len;
    }
    this.#buf = this.#buf.subarray(off);
    return frames;
  }
}

/** What the agent may send the host, and on which channels (the rest is a protocol violation). */
export const AGENT_SESSION_FRAMES: ReadonlySet<number> = new Set([FRAME.stdout, FRAME.stderr, FRAME.exit]);

const HELLO = /^ovm-agent\/\d{1,6} [A-Za-z0-9_]{1,32}$/;
const AGENT_TIME = /^-?\d{1,15}\.\d{1,9}$/;
/** The longest ENTROPY_DONE answer taken (the agent's are under 100 bytes). */
export const MAX_ENTROPY_DONE_BYTES = 200;
/** "ok", "ok; ..." or "error: ...", in printable ASCII only (the text ends up in a warning). */
const ENTROPY_DONE = /^(?:ok|ok; [ -~]+|error: [ -~]+)$/;
/** The largest clock value a Date holds (ms). */
const MAX_DATE_MS = 8.64e15;

/**
 * Why a frame from the guest agent cannot be taken as it is (undefined: it can): every field the
 * host reads is checked here, before anything uses it. The agent runs in the guest: its frames are
 * untrusted input.
 */
export function checkAgentFrame(frame: Frame): string | undefined {
  const p = frame.payload;
  switch (frame.type) {
    case FRAME.hello:
      if (frame.channel !== 0) return `HELLO on channel ${frame.channel} (it belongs on 0)`;
      return HELLO.test(p.toString('latin1')) ? undefined : `a malformed HELLO (${p.length} bytes)`;
    case FRAME.stdout:
    case FRAME.stderr:
      return frame.channel === 0 ? 'output on channel 0' : undefined;
    case FRAME.exit:
      return p.length === 4 ? undefined : `an EXIT of ${p.length} bytes (4 expected)`;
    case FRAME.pong:
      return p.length <= 64 ? undefined : `a PONG of ${p.length} bytes`;
    case FRAME.time:
      return agentTimeMs(p) === undefined ? `a malformed TIME (${p.length} bytes)` : undefined;
    case FRAME.entropyDone:
      // Only ever an answer on the ENTROPY request's own channel (the link checks the channel).
      if (frame.channel === 0) return "ENTROPY_DONE on channel 0 (it answers on the request's channel)";
      if (p.length > MAX_ENTROPY_DONE_BYTES) return `an ENTROPY_DONE of ${p.length} bytes`;
      return ENTROPY_DONE.test(p.toString('latin1'))
        ? undefined
        : `a malformed ENTROPY_DONE (${p.length} bytes)`;
    default:
      return `a frame of type ${frame.type}, which the agent does not send`;
  }
}

/** The agent's TIME payload ("SEC.NSEC") in ms since the epoch, or undefined when it is not one. */
export function agentTimeMs(payload: Buffer): number | undefined {
  if (payload.length > 32) return undefined;
  const text = payload.toString('latin1');
  if (!AGENT_TIME.test(text)) return undefined;
  const ms = parseAgentTime(text);
  return Number.isFinite(ms) && Math.abs(ms) <= MAX_DATE_MS ? ms : undefined;
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
