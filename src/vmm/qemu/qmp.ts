import net from 'node:net';
import { VmError } from '../../errors.ts';
import { terminalSafeLine } from '../../host/terminal-text.ts';

/**
 * A QMP client (QEMU's JSON control protocol) on the Unix socket QEMU listens on (`-qmp
 * unix:PATH,server=on,wait=off`, in the run's private socket directory: whoever can reach it
 * controls the QEMU process). Every command carries an id and has a deadline: one QEMU does not
 * answer in time is an error naming it, and its late answer (matched by the id) is dropped, never
 * taken for another command's. Events are ignored. A line over MAX_LINE_BYTES ends the connection
 * (QEMU never sends one; nothing else should be there). Every error names the command and carries
 * the hint the caller gave (where QEMU's log is).
 */
const MAX_LINE_BYTES = 1 << 20;

/** How long one QMP command may take by default (they all answer at once; migration runs behind them). */
export const QMP_COMMAND_TIMEOUT_MS = 30_000;

/** A QMP error message is QEMU's text: cut here (and made terminal-safe). */
const QMP_DESC_MAX_CHARS = 400;

export interface QmpError {
  readonly class: string;
  readonly desc: string;
}

export interface QmpOptions {
  /** How long QEMU gets to create its socket and greet (default 10 s). */
  readonly connectTimeoutMs?: number | undefined;
  /** Each command's deadline unless execute() is given one (default QMP_COMMAND_TIMEOUT_MS). */
  readonly commandTimeoutMs?: number | undefined;
  /** The hint every error of this connection carries (e.g. where QEMU's log is). */
  readonly hint?: string | undefined;
  /** Aborted: connecting stops (QEMU exited: its socket will never answer). */
  readonly signal?: AbortSignal | undefined;
}

interface Waiting {
  readonly command: string;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export class Qmp {
  readonly #socket: net.Socket;
  readonly #commandTimeoutMs: number;
  readonly #hint: string | undefined;
  #buf = '';
  #nextId = 1;
  readonly #waiting = new Map<string, Waiting>();
  #greeted: Promise<void>;
  #closed: Error | undefined;

  private constructor(socket: net.Socket, options: QmpOptions) {
    this.#socket = socket;
    this.#commandTimeoutMs = options.commandTimeoutMs ?? QMP_COMMAND_TIMEOUT_MS;
    this.#hint = options.hint;
    let greet: { resolve: () => void; reject: (e: Error) => void } | undefined;
    this.#greeted = new Promise<void>((resolve, reject) => {
      greet = { resolve, reject };
    });
    this.#greeted.catch(() => undefined);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buf += chunk;
      if (this.#buf.length > MAX_LINE_BYTES && !this.#buf.includes('\n')) {
        this.#fail('QEMU sent an over-long QMP line');
        return;
      }
      for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, nl).trim();
        this.#buf = this.#buf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          this.#fail('QEMU sent a QMP line that is not JSON');
          return;
        }
        if (!msg || typeof msg !== 'object') continue;
        if ('QMP' in msg) greet?.resolve();
        else if ('event' in msg) continue;
        else if ('return' in msg || 'error' in msg) this.#answer(msg);
      }
    });
    socket.on('error', (err) => this.#fail(`QMP connection failed: ${err.message}`));
    socket.on('close', () => {
      greet?.reject(new VmError('QEMU closed its QMP socket', { hint: this.#hint }));
      this.#fail('QEMU closed its QMP socket');
    });
  }

  /** An answer goes to the command with its id; one without a waiting command (a late one) is dropped. */
  #answer(msg: Record<string, unknown>): void {
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const w = id === undefined ? undefined : this.#waiting.get(id);
    if (!w || id === undefined) return;
    this.#waiting.delete(id);
    clearTimeout(w.timer);
    if ('error' in msg) {
      const e = (msg.error ?? {}) as Partial<QmpError>;
      const desc = terminalSafeLine(String(e.desc ?? 'no description'), { maxChars: QMP_DESC_MAX_CHARS });
      const cls = typeof e.class === 'string' ? terminalSafeLine(e.class, { maxChars: 64 }) : 'unknown';
      w.reject(
        new VmError(`QEMU refused the QMP command ${w.command}: ${desc}`, {
          hint: `QEMU's error class ${cls}${this.#hint ? `; ${this.#hint}` : ''}`,
        }),
      );
    } else w.resolve(msg.return);
  }

  /** The connection is over: every waiting command fails, named, with why. */
  #fail(why: string): void {
    this.#closed ??= new VmError(why, { hint: this.#hint });
    for (const [id, w] of this.#waiting) {
      this.#waiting.delete(id);
      clearTimeout(w.timer);
      w.reject(new VmError(`${why} (while waiting for the QMP command ${w.command})`, { hint: this.#hint }));
    }
    this.#socket.destroy();
  }

  /**
   * Connects to QEMU's QMP socket (retrying while QEMU creates it, up to connectTimeoutMs) and
   * leaves the capabilities negotiation done. A number is the connect deadline (ms).
   */
  static async connect(socketPath: string, options: QmpOptions | number = {}): Promise<Qmp> {
    const opts: QmpOptions = typeof options === 'number' ? { connectTimeoutMs: options } : options;
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const t0 = performance.now();
    for (;;) {
      opts.signal?.throwIfAborted();
      const socket = await new Promise<net.Socket | undefined>((resolve) => {
        const s = net.createConnection(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      });
      if (socket) {
        const qmp = new Qmp(socket, opts);
        const left = Math.max(1, timeoutMs - (performance.now() - t0));
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            qmp.#greeted,
            new Promise<never>((_, reject) => {
              timer = setTimeout(
                () =>
                  reject(
                    new VmError(
                      `QEMU's control socket ${socketPath} did not greet within ${timeoutMs / 1000} s`,
                      {
                        hint: opts.hint,
                      },
                    ),
                  ),
                left,
              );
            }),
          ]);
          await qmp.execute('qmp_capabilities', undefined, { timeoutMs: left });
        } catch (err) {
          qmp.close();
          throw err;
        } finally {
          clearTimeout(timer);
        }
        return qmp;
      }
      if (performance.now() - t0 > timeoutMs) {
        throw new VmError(`QEMU's control socket ${socketPath} did not answer within ${timeoutMs / 1000} s`, {
          hint: opts.hint,
        });
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Runs one QMP command: its return, or a VmError naming it (QEMU's refusal with its description,
   * no answer within `timeoutMs`, the connection ending).
   */
  execute(
    command: string,
    args?: Record<string, unknown>,
    options: { readonly timeoutMs?: number | undefined } = {},
  ): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(
        new VmError(`${this.#closed.message} (the QMP command ${command} was not sent)`, {
          hint: this.#hint,
        }),
      );
    }
    const id = `ovm-${this.#nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.#commandTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // Its answer may still come: it is dropped by its id.
        this.#waiting.delete(id);
        reject(
          new VmError(`QEMU did not answer the QMP command ${command} within ${timeoutMs / 1000} s`, {
            hint: this.#hint,
          }),
        );
      }, timeoutMs);
      this.#waiting.set(id, { command, resolve, reject, timer });
      this.#socket.write(
        `${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`,
      );
    });
  }

  /** The hint this connection's errors carry. */
  get hint(): string | undefined {
    return this.#hint;
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** What `query-migrate` says, reduced to what the snapshot code needs. */
export interface MigrationStatus {
  readonly status: string;
  readonly transferredBytes: number;
  readonly error: string | undefined;
}

export function parseMigrationStatus(value: unknown): MigrationStatus {
  const v = (value ?? {}) as { status?: unknown; ram?: { transferred?: unknown }; 'error-desc'?: unknown };
  return {
    status: typeof v.status === 'string' ? v.status : 'none',
    transferredBytes: typeof v.ram?.transferred === 'number' ? v.ram.transferred : 0,
    error:
      typeof v['error-desc'] === 'string'
        ? terminalSafeLine(v['error-desc'], { maxChars: QMP_DESC_MAX_CHARS })
        : undefined,
  };
}

/**
 * Polls `query-migrate` until the migration (outgoing, or the incoming one of `-incoming`) is
 * over: completed, or a VmError with QEMU's reason (failed, cancelled), or the deadline.
 */
export async function waitMigration(qmp: Qmp, timeoutMs: number): Promise<MigrationStatus> {
  const t0 = performance.now();
  for (;;) {
    const s = parseMigrationStatus(await qmp.execute('query-migrate'));
    if (s.status === 'completed') return s;
    if (s.status === 'failed' || s.status === 'cancelled') {
      throw new VmError(`QEMU's migration ${s.status}${s.error ? `: ${s.error}` : ''}`, { hint: qmp.hint });
    }
    if (performance.now() - t0 > timeoutMs) {
      throw new VmError(
        `QEMU's migration did not complete within ${timeoutMs / 1000} s (status ${s.status})`,
        { hint: qmp.hint },
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Migration states after which nothing more happens (QEMU's MigrationStatus). */
const MIGRATION_OVER = new Set(['none', 'completed', 'failed', 'cancelled']);

/**
 * Cancels an outgoing migration (`migrate_cancel`; none running is no error) and waits, up to
 * `timeoutMs`, for QEMU to say it is over: the status it ended in, or a VmError naming what did
 * not happen.
 */
export async function cancelMigration(qmp: Qmp, timeoutMs: number): Promise<string> {
  const t0 = performance.now();
  await qmp.execute('migrate_cancel', undefined, { timeoutMs });
  for (;;) {
    const left = timeoutMs - (performance.now() - t0);
    const s = parseMigrationStatus(
      await qmp.execute('query-migrate', undefined, { timeoutMs: Math.max(1, left) }),
    );
    if (MIGRATION_OVER.has(s.status)) return s.status;
    if (left <= 0) {
      throw new VmError(
        `QEMU's migration was not over ${timeoutMs / 1000} s after migrate_cancel (status ${s.status})`,
        { hint: qmp.hint },
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A shell word for QEMU's `exec:` migration URIs (run by /bin/sh -c): the path single-quoted. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}
