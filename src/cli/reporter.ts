import { appendFileSync, writeFileSync } from 'node:fs';
import type { Writable } from 'node:stream';
import type { ExecEvent } from '../exec/run-exec.ts';

/**
 * Progress for humans (stderr, `openshell-vm: [1.2s] ...`, silenced by --quiet) and for scripts
 * (--events FILE: one JSON object per line, including every helper process with its pid).
 */
export class Reporter {
  readonly #stderr: Writable;
  readonly #quiet: boolean;
  readonly #eventsFile: string | undefined;

  constructor(options: { stderr: Writable; quiet: boolean; eventsFile?: string | undefined }) {
    this.#stderr = options.stderr;
    this.#quiet = options.quiet;
    this.#eventsFile = options.eventsFile;
    if (this.#eventsFile) writeFileSync(this.#eventsFile, '');
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
    if (this.#eventsFile) appendFileSync(this.#eventsFile, `${JSON.stringify(event)}\n`);
  }
}
