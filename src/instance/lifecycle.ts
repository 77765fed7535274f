import fs from 'node:fs/promises';
import path from 'node:path';
import { controlRequest } from '../agent/client.ts';
import { FRAME, parseAgentTime } from '../agent/protocol.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno, OvmError } from '../errors.ts';
import { pathExists } from '../host/fs.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import {
  type CleanupContext,
  type CleanupResult,
  type InstanceCleanup,
  readPresetRecord,
  selectCleanups,
} from './cleanup.ts';
import { readLockHolder, takeInstanceLock } from './lock.ts';
import { describeReap, reapInstance } from './reap.ts';
import { INSTANCE_NAME, instanceDir, terminate } from './runs.ts';
import { type InstanceState, loadState, readState, removeState, STATE_FILE } from './state.ts';

export interface InstanceStatus {
  readonly name: string;
  /**
   * running: every process alive and the agent answering; degraded: the supervisor runs but a
   * helper died or the agent does not answer; starting / stopping: on the way; busy: another
   * openshell-vm holds it (a rootfs build); stopped: nothing runs; broken: its state file (or its
   * directory) is broken or not ours alone, `problems` says why and how to fix it.
   */
  readonly status: 'running' | 'degraded' | 'starting' | 'stopping' | 'busy' | 'stopped' | 'broken';
  readonly problems: readonly string[];
  readonly state?: InstanceState | undefined;
  /** Guest clock minus host clock (ms), when the agent answered. */
  readonly clockDiffMs?: number | undefined;
  readonly busy?: string | undefined;
  /** What was cleaned up after a supervisor that died. */
  readonly reaped?: string | undefined;
}

/** The instance's directory; an instance that has none is an error naming it, with `list` as the hint. */
export async function requireInstance(env: HostEnvironment, name: string): Promise<string> {
  const dir = instanceDir(env, name);
  if (!(await pathExists(dir))) {
    throw new HostError(`there is no instance '${name}'`, { hint: 'see: openshell-vm list' });
  }
  return dir;
}

/** The names of every instance that has a directory. */
export async function listInstanceNames(env: HostEnvironment): Promise<string[]> {
  try {
    const entries = await fs.readdir(path.join(env.dataDir, 'instances'), { withFileTypes: true });
    return entries
      .filter((e) => e.isDirectory() && INSTANCE_NAME.test(e.name))
      .map((e) => e.name)
      .sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

/**
 * An instance's status from its state file, each process checked by pid and start time and the
 * guest agent asked for its clock. A state left by a supervisor that died is reaped first.
 */
export async function inspectInstance(env: HostEnvironment, name: string): Promise<InstanceStatus> {
  const dir = instanceDir(env, name);
  const report = await reapInstance(env, name);
  const reaped = describeReap(report);
  if (report.brokenState) {
    const { path: file, reason } = report.brokenState;
    return {
      name,
      status: 'broken',
      problems: [`${file} ${reason} (${brokenFix(name, file)})`],
      reaped,
    };
  }
  const read = await loadState(dir);
  if (read.kind === 'broken') {
    return {
      name,
      status: 'broken',
      problems: [`${read.path} ${read.reason} (${brokenFix(name, read.path)})`],
      reaped,
    };
  }
  const state = read.kind === 'ok' ? read.state : undefined;
  if (!state) {
    const holder = await readLockHolder(dir);
    if (holder && (await isSameProcess(holder.pid, holder.startTime))) {
      const starting = holder.purpose.startsWith('running');
      return {
        name,
        status: starting ? 'starting' : 'busy',
        problems: [],
        busy: `openshell-vm (pid ${holder.pid}) is ${holder.purpose}`,
        reaped,
      };
    }
    return { name, status: 'stopped', problems: [], reaped };
  }
  const problems: string[] = [];
  for (const p of state.processes) {
    if (!(await isSameProcess(p.pid, p.startTime))) problems.push(`${p.name} (pid ${p.pid}) is not running`);
  }
  let clockDiffMs: number | undefined;
  if (state.phase === 'running') {
    try {
      const t0 = Date.now();
      const frame = await controlRequest(state.control, name, FRAME.timeGet, '', 3_000);
      clockDiffMs = Math.round(parseAgentTime(frame.payload.toString()) - (t0 + Date.now()) / 2);
    } catch (err) {
      problems.push(`the guest agent does not answer (${(err as Error).message})`);
    }
  }
  const status =
    state.phase === 'starting'
      ? 'starting'
      : state.phase === 'stopping'
        ? 'stopping'
        : problems.length
          ? 'degraded'
          : 'running';
  return { name, status, problems, state, clockDiffMs, reaped };
}

/** The fix for a broken state file, or for an instance directory that is not ours alone. */
function brokenFix(name: string, file: string): string {
  return path.basename(file) === STATE_FILE
    ? `clean it up: openshell-vm stop ${name}, or remove ${file}`
    : `check who made it, then remove it: rm -r ${file}`;
}

export interface StopResult {
  readonly wasRunning: boolean;
  /** A broken state file that stop removed (its path and what was wrong with it). */
  readonly removedBroken?: string | undefined;
  /** The supervisor did not end in time and was killed (its processes reaped). */
  readonly forced: boolean;
  readonly reaped?: string | undefined;
}

/**
 * Stops an instance: asks its supervisor (control socket; SIGTERM if that does not answer) to stop
 * the guest in order within `timeoutMs`, waits for it to end, and kills it and reaps its processes
 * if it does not end in time. A stopped instance is left as it is (stale state reaped).
 */
export async function stopInstance(
  env: HostEnvironment,
  name: string,
  timeoutMs: number,
  onProgress: (message: string) => void = () => undefined,
): Promise<StopResult> {
  const dir = instanceDir(env, name);
  const report = await reapInstance(env, name);
  const reaped = describeReap(report);
  const broken = report.brokenState;
  if (broken) {
    // Removed only when it is the state file in a directory of ours; what it says is not acted on.
    if (path.basename(broken.path) !== STATE_FILE) {
      throw new HostError(`refusing to touch instance '${name}': ${broken.path} ${broken.reason}`, {
        hint: brokenFix(name, broken.path),
      });
    }
    await removeState(dir);
    return { wasRunning: false, forced: false, reaped, removedBroken: `${broken.path} (${broken.reason})` };
  }
  const state = await readState(dir);
  let target: { pid: number; startTime: string | undefined };
  if (state) {
    target = state.supervisor;
    onProgress(`stopping instance '${name}' (openshell-vm pid ${target.pid}; up to ${timeoutMs / 1000} s)`);
    try {
      await controlRequest(state.control, name, FRAME.stop, String(timeoutMs), 3_000);
    } catch {
      signal(target.pid, 'SIGTERM');
    }
  } else {
    const holder = await readLockHolder(dir);
    if (!holder || !(await isSameProcess(holder.pid, holder.startTime))) {
      return { wasRunning: false, forced: false, reaped };
    }
    if (!holder.purpose.startsWith('running')) {
      throw new HostError(
        `instance '${name}' is busy: openshell-vm (pid ${holder.pid}) is ${holder.purpose}`,
        {
          hint: 'wait for it to finish, or interrupt it (Ctrl-C in its terminal)',
        },
      );
    }
    // Still booting, before its state file: SIGTERM stops a boot at any stage.
    target = holder;
    onProgress(`stopping instance '${name}' while it starts (openshell-vm pid ${target.pid})`);
    signal(target.pid, 'SIGTERM');
  }
  // The supervisor gives the guest timeoutMs, then kills the VM (within a few seconds).
  const deadline = Date.now() + timeoutMs + 15_000;
  while (Date.now() < deadline) {
    if (!(await isSameProcess(target.pid, target.startTime))) {
      return { wasRunning: true, forced: false, reaped };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  onProgress(`openshell-vm (pid ${target.pid}) did not stop in time: killing it`);
  await terminate(target);
  const after = describeReap(await reapInstance(env, name));
  return { wasRunning: true, forced: true, reaped: after ?? reaped };
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone already
  }
}

/** What `delete` and `--reset` report: paths removed, and entries taken out of files that stay. */
export interface CleanupReport {
  readonly removed: string[];
  readonly takenOut: string[];
}

export interface ResetOptions {
  /** The instance's rootfs: the guest's root, which the hooks reach only through a GuestRoot. */
  readonly rootfs: string;
  /** The hint of a refusal in the rootfs (a symlink the guest planted): how to get a sound one. */
  readonly refusedHint: string;
  /** Run in this order; the first that fails ends the reset. */
  readonly cleanups: readonly InstanceCleanup[];
  readonly onProgress?: ((message: string) => void) | undefined;
  readonly warn?: ((message: string) => void) | undefined;
}

/**
 * `--reset`: takes the instance's lock (a running instance holds it: the lock error names it),
 * opens its rootfs as a GuestRoot, and runs each cleanup's onReset in order, the lock held. The
 * first that fails ends the reset with its error (the boot that follows must not start from half
 * a reset); the lock is released either way. Nothing else is removed: the rootfs stays.
 */
export async function resetInstance(
  env: HostEnvironment,
  name: string,
  options: ResetOptions,
): Promise<CleanupReport> {
  const dir = instanceDir(env, name);
  const release = await takeInstanceLock(dir, name, 'resetting the instance');
  const report: CleanupReport = { removed: [], takenOut: [] };
  try {
    // Loaded here (it loads node:crypto): list and status, which load this module, never reset.
    const { GuestRoot } = await import('../host/guest-root.ts');
    const root = new GuestRoot(options.rootfs, { hint: options.refusedHint });
    const ctx = { ...cleanupContext(env, name, dir, options), root };
    for (const cleanup of options.cleanups) {
      if (cleanup.onReset) add(report, await cleanup.onReset(ctx));
    }
  } finally {
    await release();
  }
  return report;
}

export interface DeleteOptions {
  /** How long a running instance gets to stop (stopInstance). */
  readonly timeoutMs: number;
  /** Every preset's cleanup (src/presets/index.ts): those the instance's presets record names run. */
  readonly cleanups: readonly InstanceCleanup[];
  readonly onProgress?: ((message: string) => void) | undefined;
  readonly warn?: ((message: string) => void) | undefined;
}

/**
 * `delete`: stops the instance if it runs (a busy or broken one is refused, nothing removed), takes
 * its lock, runs the onDelete of the cleanups its presets record names (selectCleanups), in order,
 * then removes its directory (rootfs, logs, state, records). Every chosen cleanup runs even when
 * one fails; then the directory is kept (the records a second `delete` needs are in it) and the
 * error names each failure. Returns the directory, then what each cleanup removed and took out.
 */
export async function deleteInstance(
  env: HostEnvironment,
  name: string,
  options: DeleteOptions,
): Promise<{ removed: string[]; stopped: boolean }> {
  const dir = await requireInstance(env, name);
  const stop = await stopInstance(env, name, options.timeoutMs, options.onProgress);
  const release = await takeInstanceLock(dir, name, 'deleting the instance');
  const report: CleanupReport = { removed: [], takenOut: [] };
  const failures: { readonly preset: string; readonly err: unknown }[] = [];
  try {
    const ctx = cleanupContext(env, name, dir, options);
    for (const cleanup of selectCleanups(options.cleanups, await readPresetRecord(dir), ctx.warn)) {
      if (!cleanup.onDelete) continue;
      try {
        // Each cleanup's lines stay together: what it removed, then what it took out.
        const out = await cleanup.onDelete(ctx);
        add(report, { removed: [...out.removed, ...out.takenOut], takenOut: [] });
      } catch (err) {
        failures.push({ preset: cleanup.preset, err });
      }
    }
  } finally {
    await release();
  }
  if (failures.length) throw deleteFailure(name, dir, report, failures);
  await fs.rm(dir, { recursive: true, force: true });
  return { removed: [dir, ...report.removed], stopped: stop.wasRunning };
}

function cleanupContext(
  env: HostEnvironment,
  name: string,
  instanceDir: string,
  options: {
    readonly onProgress?: ((m: string) => void) | undefined;
    readonly warn?: ((m: string) => void) | undefined;
  },
): CleanupContext {
  const progress = options.onProgress ?? (() => undefined);
  return { env, name, instanceDir, progress, warn: options.warn ?? progress };
}

function add(report: CleanupReport, out: CleanupResult): void {
  report.removed.push(...out.removed);
  report.takenOut.push(...out.takenOut);
}

function deleteFailure(
  name: string,
  dir: string,
  report: CleanupReport,
  failures: readonly { readonly preset: string; readonly err: unknown }[],
): HostError {
  const what = failures.map(
    (f) => `the ${f.preset} cleanup failed: ${f.err instanceof Error ? f.err.message : String(f.err)}`,
  );
  const hints = failures.flatMap((f) => (f.err instanceof OvmError && f.err.hint ? [f.err.hint] : []));
  const done = report.removed.length ? ` (the other cleanups removed: ${report.removed.join(', ')})` : '';
  return new HostError(`could not delete instance '${name}': ${what.join('; ')}${done}`, {
    hint: `${hints.length ? `${hints.join('; ')}; then ` : 'fix that, then '}run openshell-vm delete ${name} again (${dir} is kept until then)`,
    cause: failures[0]?.err,
  });
}
