import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import fs from 'node:fs/promises';
import { CommandError, HostError } from '../errors.ts';
import { processStartTime } from './identity.ts';
import { isSocket, isWaitFailure, poll, tailFile } from './wait.ts';

/** How to tell that a helper is ready to be used. */
export type Readiness =
  | { readonly kind: 'none' }
  | { readonly kind: 'socket'; readonly path: string }
  | { readonly kind: 'check'; readonly describe: string; readonly check: () => Promise<boolean> };

export interface ProcessSpec {
  /** Short name for messages and events: 'qemu', 'virtiofsd', 'gvproxy'. */
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  /** stdout and stderr of the process, appended. */
  readonly logFile: string;
  /** JSON {name, pid, startTime, argv}: lets a later run find and reap this process by identity. */
  readonly pidFile?: string | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly ready?: Readiness | undefined;
  readonly readyTimeoutMs?: number | undefined;
  /** Time between the polite signal and SIGKILL. */
  readonly graceMs?: number | undefined;
  readonly stopSignal?: NodeJS.Signals | undefined;
}

export interface ExitResult {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  /** True when stop() had to use SIGKILL. */
  readonly forced: boolean;
}

export interface PidRecord {
  readonly name: string;
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly argv: readonly string[];
}

const DEFAULT_READY_TIMEOUT_MS = 10_000;
const DEFAULT_GRACE_MS = 3_000;

/**
 * One helper process of a VM (QEMU, virtiofsd, later gvproxy and the libkrun runner): spawned in
 * its own process group (so a terminal's Ctrl-C reaches only the CLI, which then stops helpers in
 * order), its output in a log file, its identity in a pid file, ready only once its readiness
 * check passes, and stopped with a grace period then SIGKILL. stop() is idempotent, and start()
 * cleans up after itself when readiness fails, the process dies, or the caller aborts.
 */
export class SupervisedProcess {
  readonly spec: ProcessSpec;
  readonly pid: number;
  readonly startTime: string | undefined;
  /** Settles when the process has exited (never rejects). */
  readonly exited: Promise<ExitResult>;
  #result: ExitResult | undefined;
  #forced = false;
  #stopping: Promise<ExitResult> | undefined;

  private constructor(spec: ProcessSpec, child: ChildProcess, startTime: string | undefined) {
    this.spec = spec;
    this.pid = child.pid as number;
    this.startTime = startTime;
    this.exited = new Promise((resolve) => {
      const done = (exitCode: number | null, signal: NodeJS.Signals | null) => {
        this.#result = { exitCode, signal, forced: this.#forced };
        resolve(this.#result);
      };
      if (child.exitCode !== null || child.signalCode !== null) done(child.exitCode, child.signalCode);
      else child.once('exit', done);
    });
  }

  get hasExited(): boolean {
    return this.#result !== undefined;
  }

  /** Spawns the process and waits until it is ready. */
  static async start(
    spec: ProcessSpec,
    options: { signal?: AbortSignal | undefined } = {},
  ): Promise<SupervisedProcess> {
    options.signal?.throwIfAborted();
    const log = openSync(spec.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(spec.command, [...spec.args], {
        stdio: ['ignore', log, log],
        detached: true,
        env: spec.env ?? process.env,
      });
    } finally {
      closeSync(log);
    }
    const spawned = await new Promise<Error | undefined>((resolve) => {
      child.once('spawn', () => resolve(undefined));
      child.once('error', (err) => resolve(err));
    });
    if (spawned) {
      throw new HostError(`cannot start ${spec.name} (${spec.command})`, {
        hint: `check that ${spec.command} exists and is executable`,
        cause: spawned,
      });
    }
    const proc = new SupervisedProcess(spec, child, await processStartTime(child.pid as number));
    try {
      if (spec.pidFile) await proc.#writePidFile(spec.pidFile);
      await proc.#waitReady(options.signal);
    } catch (err) {
      await proc.stop();
      throw err;
    }
    return proc;
  }

  record(): PidRecord {
    return {
      name: this.spec.name,
      pid: this.pid,
      startTime: this.startTime,
      argv: [this.spec.command, ...this.spec.args],
    };
  }

  async #writePidFile(file: string): Promise<void> {
    const tmp = `${file}.tmp`;
    await fs.writeFile(tmp, `${JSON.stringify(this.record())}\n`, { mode: 0o600 });
    await fs.rename(tmp, file);
  }

  async #waitReady(signal: AbortSignal | undefined): Promise<void> {
    const ready = this.spec.ready ?? { kind: 'none' };
    if (ready.kind === 'none') return;
    const what = ready.kind === 'socket' ? `its socket ${ready.path}` : ready.describe;
    const timeoutMs = this.spec.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    const outcome = await poll<'ready' | 'exited'>(
      async () => {
        if (this.hasExited) return 'exited';
        const ok = ready.kind === 'socket' ? await isSocket(ready.path) : await ready.check();
        return ok ? 'ready' : undefined;
      },
      { timeoutMs, signal, maxIntervalMs: 50 },
    );
    if (outcome === 'ready') return;
    if (outcome === 'exited') {
      const result = await this.exited;
      throw new CommandError(`${this.spec.name} exited before it was ready`, {
        argv: [this.spec.command, ...this.spec.args],
        exitCode: result.exitCode,
        signal: result.signal,
        stderrTail: await tailFile(this.spec.logFile, 12),
      });
    }
    if (isWaitFailure(outcome) && outcome.kind === 'aborted') throw outcome.reason;
    throw new HostError(
      `${this.spec.name} did not become ready within ${timeoutMs} ms (waited for ${what})`,
      {
        hint: `see ${this.spec.logFile}`,
      },
    );
  }

  /** Sends `signal` (default the spec's stop signal) without waiting. */
  kill(signal: NodeJS.Signals = this.spec.stopSignal ?? 'SIGTERM'): void {
    if (this.hasExited) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      // Already gone.
    }
  }

  /** Polite signal, then SIGKILL after the grace period; resolves once the process is gone. */
  stop(graceMs: number = this.spec.graceMs ?? DEFAULT_GRACE_MS): Promise<ExitResult> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<ExitResult> {
    if (!this.hasExited) {
      this.kill();
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<'grace-over'>((resolve) => {
        timer = setTimeout(() => resolve('grace-over'), graceMs);
      });
      const first = await Promise.race([this.exited, graceOver]);
      clearTimeout(timer);
      if (first === 'grace-over') {
        this.#forced = true;
        this.kill('SIGKILL');
      }
    }
    const result = await this.exited;
    if (this.spec.pidFile) await fs.rm(this.spec.pidFile, { force: true });
    return result;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  logTail(lines = 20): Promise<string> {
    return tailFile(this.spec.logFile, lines);
  }
}
