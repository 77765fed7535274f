import net from 'node:net';
import { VmError } from '../../errors.ts';

/**
 * A QMP client (QEMU's JSON control protocol) on the Unix socket QEMU listens on (`-qmp
 * unix:PATH,server=on,wait=off`, in the run's private socket directory: whoever can reach it
 * controls the QEMU process). One command at a time; events are ignored. A line over
 * MAX_LINE_BYTES ends the connection (QEMU never sends one; nothing else should be there).
 */
const MAX_LINE_BYTES = 1 << 20;

export interface QmpError {
  readonly class: string;
  readonly desc: string;
}

export class Qmp {
  readonly #socket: net.Socket;
  #buf = '';
  #waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;
  #greeted: Promise<void>;
  #closed: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    let greet: { resolve: () => void; reject: (e: Error) => void } | undefined;
    this.#greeted = new Promise<void>((resolve, reject) => {
      greet = { resolve, reject };
    });
    this.#greeted.catch(() => undefined);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buf += chunk;
      if (this.#buf.length > MAX_LINE_BYTES && !this.#buf.includes('\n')) {
        this.#fail(new VmError('QEMU sent an over-long QMP line'));
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
          this.#fail(new VmError('QEMU sent a QMP line that is not JSON'));
          return;
        }
        if ('QMP' in msg) greet?.resolve();
        else if ('event' in msg) continue;
        else if ('return' in msg || 'error' in msg) {
          const w = this.#waiting;
          this.#waiting = undefined;
          if (!w) continue;
          if ('error' in msg) {
            const e = msg.error as Partial<QmpError> | undefined;
            w.reject(new VmError(`QEMU refused the command: ${String(e?.desc ?? 'unknown error')}`));
          } else w.resolve(msg.return);
        }
      }
    });
    socket.on('error', (err) => this.#fail(new VmError(`QMP connection failed: ${err.message}`)));
    socket.on('close', () => {
      greet?.reject(new VmError('QEMU closed its QMP socket'));
      this.#fail(new VmError('QEMU closed its QMP socket'));
    });
  }

  #fail(err: Error): void {
    this.#closed ??= err;
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.reject(err);
    this.#socket.destroy();
  }

  /**
   * Connects to QEMU's QMP socket (retrying while QEMU creates it, up to `timeoutMs`) and leaves
   * the capabilities negotiation done.
   */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<Qmp> {
    const t0 = performance.now();
    for (;;) {
      const socket = await new Promise<net.Socket | undefined>((resolve) => {
        const s = net.createConnection(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      });
      if (socket) {
        const qmp = new Qmp(socket);
        await qmp.#greeted;
        await qmp.execute('qmp_capabilities');
        return qmp;
      }
      if (performance.now() - t0 > timeoutMs) {
        throw new VmError(`QEMU's control socket ${socketPath} did not answer within ${timeoutMs / 1000} s`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Runs one QMP command; QEMU's refusal is a VmError with its description. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closed);
    if (this.#waiting) return Promise.reject(new Error('one QMP command at a time'));
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
      this.#socket.write(
        `${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`,
      );
    });
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
    error: typeof v['error-desc'] === 'string' ? v['error-desc'] : undefined,
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
      throw new VmError(`QEMU's migration ${s.status}${s.error ? `: ${s.error}` : ''}`);
    }
    if (performance.now() - t0 > timeoutMs) {
      throw new VmError(
        `QEMU's migration did not complete within ${timeoutMs / 1000} s (status ${s.status})`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A shell word for QEMU's `exec:` migration URIs (run by /bin/sh -c): the path single-quoted. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}
