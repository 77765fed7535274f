import { Readable, Writable } from 'node:stream';
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

/** A Writable that keeps what it is given. */
class Collector extends Writable {
  readonly #chunks: Buffer[] = [];
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    this.#chunks.push(chunk);
    done();
  }
  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8');
  }
}

/** The session's streams for `options`, and the result once the command's exit code is known. */
export function commandIo(options: CommandOptions): {
  readonly io: ExecIo;
  result(exitCode: number): CommandResult;
} {
  const stdout = options.stdout ? undefined : new Collector();
  const stderr = options.stderr ? undefined : new Collector();
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
    result: (exitCode) => ({
      exitCode,
      signal: signalOfExitCode(exitCode),
      stdout: stdout?.text() ?? '',
      stderr: stderr?.text() ?? '',
    }),
  };
}
