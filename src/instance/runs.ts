import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno, UsageError } from '../errors.ts';
import { pathExists } from '../host/fs.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';
import type { PidRecord } from '../supervisor/process.ts';

/**
 * Layout of an instance directory (<data>/instances/<name>/):
 *   runs/<id>/            one VM run
 *     owner.json          the CLI process that owns the run (pid + start time) and its extra paths
 *     console.log         the guest's serial console (kernel and init output)
 *     qemu.log, qemu.pid  the VMM's own output and identity
 *     virtiofsd.log, virtiofsd.pid
 *     stdout.sock, stderr.sock, vfs.sock   sockets, unless the path is too long (see socketDir)
 *     kept                present when the run failed and its logs are kept for inspection
 * A run that ends normally removes its directory. A run whose owner died (kill -9, crash) is
 * swept by the next run: its processes are stopped if they are still the same processes (pid
 * and start time), and its files removed.
 */
export const INSTANCE_DIRS = { runs: 'runs' } as const;
export const RUN_FILES = {
  owner: 'owner.json',
  consoleLog: 'console.log',
  stdoutSocket: 'stdout.sock',
  stderrSocket: 'stderr.sock',
  kept: 'kept',
} as const;

/** Longest socket file name used in a socket directory (gvproxy's data socket, see src/net/gvproxy.ts). */
export const LONGEST_SOCKET_NAME = 'gv-qemu.sock';
/** sun_path is 108 bytes on Linux and 104 on macOS, NUL included. */
const SUN_PATH_MAX = 103;
const KEPT_RUNS = 5;

export const INSTANCE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

/** `--name`, validated (default "default"). */
export function parseInstanceName(name: string | undefined): string {
  const instance = name ?? 'default';
  if (!INSTANCE_NAME.test(instance)) {
    throw new UsageError(`--name: invalid instance name '${instance}'`, {
      hint: 'use letters, digits, - and _ (starting with a letter or digit, at most 63 characters)',
    });
  }
  return instance;
}

export interface RunPaths {
  readonly id: string;
  readonly instanceDir: string;
  readonly dir: string;
  /** Directory for sockets: the run directory, or a short one under the runtime dir. */
  readonly socketDir: string;
  readonly consoleLog: string;
}

interface OwnerRecord {
  readonly pid: number;
  readonly startTime: string | undefined;
  /** Paths outside the run directory that the run created (socket dir, guest handoff dir). */
  readonly extraPaths: readonly string[];
}

export function instanceDir(env: HostEnvironment, name: string): string {
  return path.join(env.dataDir, 'instances', name);
}

export function socketDirFor(runDir: string, runtimeDir: string, id: string): string {
  return Buffer.byteLength(path.join(runDir, LONGEST_SOCKET_NAME)) <= SUN_PATH_MAX
    ? runDir
    : path.join(runtimeDir, id);
}

export async function createRun(
  env: HostEnvironment,
  instance: string,
  extraPaths: readonly string[] = [],
): Promise<RunPaths> {
  const base = instanceDir(env, instance);
  const id = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const dir = path.join(base, INSTANCE_DIRS.runs, id);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const socketDir = socketDirFor(dir, env.runtimeDir, id);
  if (socketDir !== dir) await fs.mkdir(socketDir, { recursive: true, mode: 0o700 });
  const owner: OwnerRecord = {
    pid: process.pid,
    startTime: await processStartTime(process.pid),
    extraPaths: socketDir !== dir ? [socketDir, ...extraPaths] : [...extraPaths],
  };
  await fs.writeFile(path.join(dir, RUN_FILES.owner), `${JSON.stringify(owner)}\n`);
  return { id, instanceDir: base, dir, socketDir, consoleLog: path.join(dir, RUN_FILES.consoleLog) };
}

/** Records another path the run owns (removed with the run, also by a later sweep). */
export async function addRunPath(run: RunPaths, extra: string): Promise<void> {
  const file = path.join(run.dir, RUN_FILES.owner);
  const owner = JSON.parse(await fs.readFile(file, 'utf8')) as OwnerRecord;
  await fs.writeFile(file, `${JSON.stringify({ ...owner, extraPaths: [...owner.extraPaths, extra] })}\n`);
}

/** Ends a run: removes its directory and extra paths, or keeps its logs (failed runs). */
export async function finishRun(run: RunPaths, keepLogs: boolean): Promise<void> {
  await saveRunLogs(run.dir, run.instanceDir);
  const owner = await readOwner(run.dir);
  for (const extra of owner?.extraPaths ?? []) await fs.rm(extra, { recursive: true, force: true });
  if (keepLogs) {
    for (const entry of await fs.readdir(run.dir)) {
      if (entry.endsWith('.sock') || entry.endsWith('.pid') || entry === RUN_FILES.owner) {
        await fs.rm(path.join(run.dir, entry), { force: true });
      }
    }
    await fs.writeFile(path.join(run.dir, RUN_FILES.kept), '');
    await pruneKeptRuns(run.instanceDir);
  } else {
    await fs.rm(run.dir, { recursive: true, force: true });
  }
}

async function readOwner(dir: string): Promise<OwnerRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(dir, RUN_FILES.owner), 'utf8')) as OwnerRecord;
  } catch {
    return undefined;
  }
}

export interface SweepReport {
  readonly removedRuns: readonly string[];
  readonly stoppedProcesses: readonly PidRecord[];
}

/**
 * Cleans up after runs whose owning CLI died: stops their processes (only while pid and start
 * time still match what the run recorded) and removes their files. Live runs are left alone.
 */
export async function sweepStaleRuns(env: HostEnvironment, instance: string): Promise<SweepReport> {
  const runsDir = path.join(instanceDir(env, instance), INSTANCE_DIRS.runs);
  let entries: string[];
  try {
    entries = await fs.readdir(runsDir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { removedRuns: [], stoppedProcesses: [] };
    throw err;
  }
  const removedRuns: string[] = [];
  const stoppedProcesses: PidRecord[] = [];
  for (const id of entries) {
    const dir = path.join(runsDir, id);
    const owner = await readOwner(dir);
    if (!owner) continue; // kept (finished) runs have no owner file
    if (await isSameProcess(owner.pid, owner.startTime)) continue;
    const records: PidRecord[] = [];
    for (const file of await fs.readdir(dir)) {
      if (!file.endsWith('.pid')) continue;
      const record = await readPidRecord(path.join(dir, file));
      if (record) records.push(record);
    }
    stoppedProcesses.push(...(await terminateAll(records)));
    for (const extra of owner.extraPaths) await fs.rm(extra, { recursive: true, force: true });
    await saveRunLogs(dir, instanceDir(env, instance));
    await fs.rm(dir, { recursive: true, force: true });
    removedRuns.push(id);
  }
  return { removedRuns, stoppedProcesses };
}

async function readPidRecord(file: string): Promise<PidRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as PidRecord;
  } catch {
    return undefined;
  }
}

/**
 * Copies a run's logs (console, VMM, helpers) to the instance's logs/ directory, replacing the
 * previous run's, so `openshell-vm logs` shows the last run after it ended (or crashed).
 */
export async function saveRunLogs(runDir: string, base: string): Promise<void> {
  const logs = path.join(base, 'logs');
  const entries = await fs.readdir(runDir).catch(() => [] as string[]);
  const files = entries.filter((e) => e.endsWith('.log'));
  if (!files.length) return;
  await fs.mkdir(logs, { recursive: true, mode: 0o700 });
  for (const stale of await fs.readdir(logs)) {
    // The supervisor's own logs (detached runs) belong to the instance, not to a run.
    if (stale.endsWith('.log') && !RUN_INDEPENDENT_LOGS.has(stale))
      await fs.rm(path.join(logs, stale), { force: true });
  }
  for (const file of files) {
    await fs.copyFile(path.join(runDir, file), path.join(logs, file)).catch(() => undefined);
  }
}

const RUN_INDEPENDENT_LOGS: ReadonlySet<string> = new Set(['supervisor.log', 'output.log']);

/**
 * Stops every listed process that is still the same process (pid + start time), all at once, and
 * returns those that were alive. Looking them all up before stopping any matters: a helper that
 * exits by itself when its peer dies (gvproxy when QEMU goes) was still one we left behind.
 */
export async function terminateAll<
  T extends { readonly pid: number; readonly startTime: string | undefined },
>(records: readonly T[]): Promise<T[]> {
  const alive: T[] = [];
  for (const r of records) if (await isSameProcess(r.pid, r.startTime)) alive.push(r);
  await Promise.all(alive.map((r) => terminate(r)));
  return alive;
}

/** Stops a process of ours: SIGTERM, then SIGKILL after 2 s; only while pid and start time match. */
export async function terminate(record: {
  readonly pid: number;
  readonly startTime: string | undefined;
}): Promise<void> {
  const send = (signal: NodeJS.Signals) => {
    try {
      process.kill(record.pid, signal);
    } catch {
      // gone
    }
  };
  send('SIGTERM');
  for (let i = 0; i < 40; i++) {
    if (!(await isSameProcess(record.pid, record.startTime))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  send('SIGKILL');
  for (let i = 0; i < 40; i++) {
    if (!(await isSameProcess(record.pid, record.startTime))) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function pruneKeptRuns(base: string): Promise<void> {
  const runsDir = path.join(base, INSTANCE_DIRS.runs);
  const kept: string[] = [];
  for (const id of await fs.readdir(runsDir)) {
    if (await pathExists(path.join(runsDir, id, RUN_FILES.kept))) kept.push(id);
  }
  // Run ids start with a base-36 timestamp, so they sort by age.
  kept.sort();
  for (const id of kept.slice(0, Math.max(0, kept.length - KEPT_RUNS))) {
    await fs.rm(path.join(runsDir, id), { recursive: true, force: true });
  }
}
