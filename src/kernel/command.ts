import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { CommandError, explainHostCondition } from '../errors.ts';

export interface RunOptions {
  readonly cwd?: string | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
  /** stdout and stderr go here (appended); the error carries its last lines. */
  readonly logFile: string;
  readonly signal?: AbortSignal | undefined;
  /** The log's name in error messages (where it is kept after a failure); default logFile. */
  readonly keptLog?: string | undefined;
  /** The directory being written, named when the disk fills up. */
  readonly writing?: string | undefined;
}

/**
 * Runs a build command with its output in a log file. A failure is a CommandError with the
 * command, its exit code and the log's last lines; one that failed because the disk is full is the
 * HostError of explainHostCondition (naming the directory and the fix).
 */
export function runLogged(command: string, args: readonly string[], options: RunOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const log = createWriteStream(options.logFile, { flags: 'a' });
    log.write(`$ ${[command, ...args].join(' ')}\n`);
    let tail = '';
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: options.signal,
    });
    const take = (d: Buffer) => {
      log.write(d);
      tail = (tail + d.toString('utf8')).slice(-8000);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', (err) => {
      log.end();
      reject(err);
    });
    child.on('close', (code, signal) => {
      log.end(() => {
        if (code === 0) return resolve();
        const lines = tail.trimEnd().split('\n').slice(-15).join('\n');
        const failure = new CommandError(
          `the kernel build failed (full log: ${options.keptLog ?? options.logFile})`,
          { argv: [command, ...args], exitCode: code, signal, stderrTail: lines },
        );
        if (/No space left on device/.test(tail)) {
          const full = Object.assign(new Error('ENOSPC: no space left on device'), {
            code: 'ENOSPC',
            syscall: 'write',
            path: options.writing ?? options.cwd,
            cause: failure,
          });
          return reject(explainHostCondition(full) ?? failure);
        }
        reject(failure);
      });
    });
  });
}
