import { constants } from 'node:buffer';
import { Readable, Writable } from 'node:stream';
import { UsageError, VmError } from '../errors.ts';
import type { ExecIo } from '../presets/run.ts';
import type { CommandOptions, CommandResult } from './options.ts';

/**
 * A command's streams as the library takes them: stdin from a string, bytes or a stream; stdout and
 * stderr to the caller's streams, or buffered and returned as text.
 */

/** Linux's signal numbers (the guest's; the same on x86_64 and aarch64), for a 128+N exit code. */
const LINUX_SIGNALS: readonly (NodeJS.Signals | undefined)[] = [
  undefined,
  'SIGHUP',
  'SIGINT',
  'SIGQUIT',
  'SIGILL',
  'SIGTRAP',
  'SIGABRT',
  'SIGBUS',
  'SIGFPE',
  'SIGKILL',
  'SIGUSR1',
  'SIGSEGV',
  'SIGUSR2',
  'SIGPIPE',
  'SIGALRM',
  'SIGTERM',
  'SIGSTKFLT',
  'SIGCHLD',
  'SIGCONT',
  'SIGSTOP',
  'SIGTSTP',
  'SIGTTIN',
  'SIGTTOU',
  'SIGURG',
  'SIGXCPU',
  'SIGXFSZ',
  'SIGVTALRM',
  'SIGPROF',
  'SIGWINCH',
  'SIGIO',
  'SIGPWR',
  'SIGSYS',
];

/**
 * The signal an exit code says ended the command: 128+N for Linux signal N, as the guest agent
 * (and a shell) reports it. A command that itself exits with such a code reads the same: the
 * agent's EXIT frame carries the code only.
 */
export function signalOfExitCode(exitCode: number): NodeJS.Signals | undefined {
  return exitCode > 128 ? LINUX_SIGNALS[exitCode - 128] : undefined;
}

/** The default of maxBuffer: the bytes kept of each buffered stream. */
export const DEFAULT_MAX_BUFFER_BYTES = 64 * 2 ** 20;

/** The most maxBuffer may be: a buffer of it must still decode to one string. */
const MAX_BUFFER_LIMIT = constants.MAX_STRING_LENGTH;

/** maxBuffer, validated: a whole number of bytes from 1 to the longest string. */
export function maxBufferBytes(value: unknown): number {
  if (value === undefined) return DEFAULT_MAX_BUFFER_BYTES;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_BUFFER_LIMIT) {
    const range = `a whole number of bytes from 1 to ${MAX_BUFFER_LIMIT}`;
    throw new UsageError(
      typeof value === 'number'
        ? `maxBuffer: ${value} is not ${range}`
        : `maxBuffer: expected ${range}, not ${value === null ? 'null' : `a ${typeof value}`}`,
      {
        hint: `e.g. maxBuffer: ${DEFAULT_MAX_BUFFER_BYTES} (the default, 64 MiB); pass stdout/stderr streams for output of any size`,
      },
    );
  }
  return value;
}

type StreamName = 'stdout' | 'stderr';

/**
 * A Writable that keeps what it is given, up to `maxBytes`. Past that it keeps nothing more and
 * calls `onOverflow` once (the guest's output is hostile: it may write without end). It never
 * errors itself: the session writes to it without a listener for 'error'.
 */
class Collector extends Writable {
  readonly #chunks: Buffer[] = [];
  readonly #name: StreamName;
  readonly #maxBytes: number;
  readonly #onOverflow: (error: VmError) => void;
  #bytes = 0;
  #overflowed = false;

  constructor(name: StreamName, maxBytes: number, onOverflow: (error: VmError) => void) {
    super();
    this.#name = name;
    this.#maxBytes = maxBytes;
    this.#onOverflow = onOverflow;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    if (!this.#overflowed && this.#bytes + chunk.length > this.#maxBytes) {
      // What was kept goes too: the call rejects, and the memory is the point.
      this.#overflowed = true;
      this.#chunks.length = 0;
      this.#onOverflow(
        new VmError(
          `the command wrote more than maxBuffer (${this.#maxBytes} bytes) to its ${this.#name}: it was ended`,
          {
            hint: `raise maxBuffer (up to ${MAX_BUFFER_LIMIT}), or pass a ${this.#name} stream to take output of any size`,
          },
        ),
      );
    }
    if (!this.#overflowed) {
      this.#bytes += chunk.length;
      this.#chunks.push(chunk);
    }
    done();
  }

  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8');
  }
}

/**
 * The session's streams for `options`, the signal to end it by (the caller's, and a buffered
 * stream's overflow: its reason is then the VmError naming the stream), and the result once the
 * command's exit code is known (it throws that VmError after an overflow). A bad maxBuffer is
 * refused here, before anything starts.
 */
export function commandIo(options: CommandOptions & { readonly signal?: AbortSignal | undefined }): {
  readonly io: ExecIo;
  readonly signal: AbortSignal;
  result(exitCode: number): CommandResult;
} {
  const maxBytes = maxBufferBytes(options.maxBuffer);
  const overflow = new AbortController();
  let overflowError: VmError | undefined;
  const onOverflow = (error: VmError) => {
    overflowError ??= error;
    overflow.abort(overflowError);
  };
  const stdout = options.stdout ? undefined : new Collector('stdout', maxBytes, onOverflow);
  const stderr = options.stderr ? undefined : new Collector('stderr', maxBytes, onOverflow);
  const { stdin } = options;
  const io: ExecIo = {
    stdin:
      stdin === undefined
        ? undefined
        : typeof stdin === 'string' || stdin instanceof Uint8Array
          ? Readable.from([Buffer.from(stdin)])
          : stdin,
    stdout: options.stdout ?? (stdout as Collector),
    stderr: options.stderr ?? (stderr as Collector),
  };
  return {
    io,
    signal: options.signal ? AbortSignal.any([options.signal, overflow.signal]) : overflow.signal,
    result: (exitCode) => {
      if (overflowError) throw overflowError;
      return {
        exitCode,
        signal: signalOfExitCode(exitCode),
        stdout: stdout?.text() ?? '',
        stderr: stderr?.text() ?? '',
      };
    },
  };
}
