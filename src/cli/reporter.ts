import { appendFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { HostError } from '../errors.ts';
import type { ExecEvent } from '../presets/run.ts';

/**
 * Progress for humans (stderr, `openshell-vm: [1.2s] ...`, silenced by --quiet) and for scripts
 * (--events FILE: one JSON object per line, including every helper process with its pid).
 * The events file is created when the reporter is (before anything starts): a path that cannot be
 * written is a HostError naming it. If writing fails later (a full disk), that is said once and
 * recording stops; the run goes on.
 */
export class Reporter {
  readonly #stderr: Writable;
  readonly #quiet: boolean;
  #eventsFile: string | undefined;

  constructor(options: { stderr: Writable; quiet: boolean; eventsFile?: string | undefined }) {
    this.#stderr = options.stderr;
    this.#quiet = options.quiet;
    this.#eventsFile = options.eventsFile;
    if (this.#eventsFile !== undefined) {
      try {
        writeFileSync(this.#eventsFile, '');
      } catch (err) {
        throw eventsFileError(this.#eventsFile, err);
      }
    }
  }

  progress(message: string, elapsedMs = performance.now()): void {
    this.#record({ type: 'progress', message, elapsedMs: Math.round(elapsedMs) });
    if (!this.#quiet) this.#stderr.write(`openshell-vm: [${(elapsedMs / 1000).toFixed(2)}s] ${message}\n`);
  }

  /** Always shown: something the user should act on. */
  warn(message: string): void {
    this.#record({ type: 'warning', message, elapsedMs: Math.round(performance.now()) });
    this.#stderr.write(`openshell-vm: warning: ${message}\n`);
  }

  /** Always shown: why the command did not run as asked. */
  notice(message: string): void {
    this.#stderr.write(`openshell-vm: ${message}\n`);
  }

  event(event: ExecEvent | Record<string, unknown>): void {
    const e = event as ExecEvent;
    if (e.type === 'stage') this.progress(e.message, e.elapsedMs);
    else if (e.type === 'warning') this.warn(e.message);
    else this.#record(event);
  }

  #record(event: unknown): void {
    const file = this.#eventsFile;
    if (file === undefined) return;
    try {
      appendFileSync(file, `${JSON.stringify(event)}\n`);
    } catch (err) {
      this.#eventsFile = undefined;
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      this.#stderr.write(
        `openshell-vm: warning: cannot write the events file ${file} (${code}); events are no longer recorded\n`,
      );
    }
  }
}

/** Why --events FILE cannot be created, with the fix. */
export function eventsFileError(file: string, err: unknown): HostError {
  const code = (err as NodeJS.ErrnoException).code;
  const dir = path.dirname(path.resolve(file));
  const [why, hint] =
    code === 'ENOENT'
      ? [
          `its directory ${dir} does not exist`,
          `create it (mkdir -p ${dir}) or give --events a file in an existing directory`,
        ]
      : code === 'ENOTDIR'
        ? [`a component of ${dir} is not a directory`, 'give --events a file in an existing directory']
        : code === 'EISDIR'
          ? ['it is a directory', 'give --events the path of a file (it is created or truncated)']
          : code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
            ? [`no permission to write it (${code})`, `give --events a path you can write (ls -ld ${dir})`]
            : [(err as Error).message, 'give --events another path'];
  return new HostError(`--events: cannot create the events file ${file}: ${why}`, { hint, cause: err });
}
