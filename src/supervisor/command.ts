import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { CommandError, HostError, isErrno } from '../errors.ts';

export interface CommandOptions {
  readonly signal?: AbortSignal | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly cwd?: string | undefined;
  /** Each line of stderr as it comes (progress). */
  readonly onStderrLine?: ((line: string) => void) | undefined;
  /** What the command is for, in the error message ("building the Debian base"). */
  readonly purpose: string;
  /** Hint for a missing executable. */
  readonly installHint?: string | undefined;
}

const TAIL_LINES = 20;

/**
 * Runs a one-shot host command (mmdebstrap, depmod...) in its own process group, collecting stdout
 * and streaming stderr lines to the caller. Abort kills the whole group (SIGTERM, SIGKILL after
 * 3 s) so nothing it started outlives us. Failure is a CommandError with argv, exit status and
 * the stderr tail.
 */
export async function runCommand(argv: readonly string[], options: CommandOptions): Promise<string> {
  options.signal?.throwIfAborted();
  const [command, ...args] = argv as [string, ...string[]];
  const child = spawn(command, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: options.env ?? process.env,
    cwd: options.cwd,
  });
  const tail: string[] = [];
  const out: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  createInterface({ input: child.stderr }).on('line', (line) => {
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    options.onStderrLine?.(line);
  });
  let killTimer: NodeJS.Timeout | undefined;
  const onAbort = () => {
    const kill = (sig: NodeJS.Signals) => {
      try {
        if (child.pid) process.kill(-child.pid, sig);
      } catch {
        /* already gone */
      }
    };
    kill('SIGTERM');
    killTimer = setTimeout(() => kill('SIGKILL'), 3_000);
  };
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, s) => resolve([c, s]));
    });
    options.signal?.throwIfAborted();
    if (code !== 0) {
      throw new CommandError(options.purpose, {
        argv,
        exitCode: code,
        signal,
        stderrTail: tail.join('\n'),
      });
    }
    return Buffer.concat(out).toString('utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw new HostError(`${options.purpose}: ${command} is not installed`, {
        hint: options.installHint,
        cause: err,
      });
    }
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    if (killTimer) clearTimeout(killTimer);
  }
}
