import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno, UsageError } from '../errors.ts';
import { pathExists } from '../host/fs.ts';
import { randomHex } from '../host/random-hex.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';
import type { PidRecord } from '../supervisor/process.ts';
import type { RunPaths } from '../vmm/run-paths.ts';
import type { OwnerRecord } from './schema.ts';
import {
  type DirRules,
  distrust,
  ensurePrivateDir,
  readRecordFile,
  type Untrusted,
  untrustedDir,
  warnOnStderr,
} from './trust.ts';

/**
 * Layout of an instance directory (<data>/instances/<name>/):
 *   runs/<id>/            one VM run
 *     owner.json          the CLI process that owns the run (pid + start time) and its extra paths
 *     console.log         the guest's serial console (kernel and init output)
 *     qemu.log, qemu.pid  the VMM's own output and identity
 *     virtiofsd.log, virtiofsd.pid
 *     agent.sock, ctl.sock, vfs.sock   sockets, unless the path is too long (see socketDir)
 *     kept                present when the run failed and its logs are kept for inspection
 * A run that ends normally removes its directory. A run whose owner died (kill -9, crash) is
 * swept by the next run: its processes are stopped if they are still the same processes (pid
 * and start time), and its files removed.
 */
export const INSTANCE_DIRS = { runs: 'runs' } as const;
export const RUN_FILES = {
  owner: 'owner.json',
  consoleLog: 'console.log',
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

export function instanceDir(env: HostEnvironment, name: string): string {
  return path.join(env.dataDir, 'instances', name);
}

/** The directories from the data dir down to an instance's (<data>/instances/<name>): each must be ours alone. */
function instanceChainAt(dir: string): string[] {
  return [path.dirname(path.dirname(dir)), path.dirname(dir), dir];
}

export function instanceChainOf(env: HostEnvironment, name: string): string[] {
  return instanceChainAt(instanceDir(env, name));
}

/**
 * Creates (0700) or checks the data dir, `instances/` and the instance's directory: each a real
 * directory of ours. One open to others is set to 0700 (with a warning); a symlink or one owned by
 * another user is refused. Everything else of the instance (rootfs, runs, logs, state, lock) is
 * inside, so no other local user reaches any of it.
 */
export async function ensureInstanceDir(
  env: HostEnvironment,
  name: string,
  warn: (message: string) => void = warnOnStderr,
): Promise<string> {
  return ensureInstanceDirAt(instanceDir(env, name), warn);
}

/** ensureInstanceDir, given the instance's directory. */
export async function ensureInstanceDirAt(
  dir: string,
  warn: (message: string) => void = warnOnStderr,
): Promise<string> {
  const chain = instanceChainAt(dir);
  for (const [i, d] of chain.entries()) {
    await ensurePrivateDir(d, {
      policy: 'tighten',
      // The data dir may be one the user chose (OPENSHELL_VM_DATA_DIR): it only must not be writable.
      openBits: i === 0 ? 0o022 : 0o077,
      followSymlink: i === 0,
      warn,
      fix: `remove ${d} (or set OPENSHELL_VM_DATA_DIR to a directory of yours)`,
      // A directory that was open may hold another user's entries (in the instance's, its rootfs:
      // rootfsDir in src/rootfs/layout.ts): refused, since we would boot, read or delete them.
      checkInside: i === chain.length - 1 ? [INSTANCE_ROOTFS] : [],
      foreignFix: (entry) =>
        `another user may have planted it: remove it (rm -rf ${entry}) and check the rest of ${d}, or remove ${d} whole`,
    });
  }
  return dir;
}

/** The instance's own rootfs, in its directory (rootfsDir in src/rootfs/layout.ts). */
const INSTANCE_ROOTFS = 'rootfs';

function privateRules(dir: string): DirRules {
  return { policy: 'tighten', openBits: 0o077, warn: warnOnStderr, fix: `remove ${dir}` };
}

/** Where a run's sockets go when the run dir's paths are too long: refused unless it is ours alone. */
async function ensureRuntimeDir(env: HostEnvironment): Promise<void> {
  await ensurePrivateDir(env.runtimeDir, {
    policy: 'refuse',
    openBits: 0o022,
    warn: warnOnStderr,
    fix: `another user may have made it: remove it (rm -r ${env.runtimeDir}), or set XDG_RUNTIME_DIR to a directory of yours`,
  });
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
  const base = await ensureInstanceDir(env, instance);
  const id = `${Date.now().toString(36)}-${randomHex(4)}`;
  const runs = path.join(base, INSTANCE_DIRS.runs);
  await ensurePrivateDir(runs, privateRules(runs));
  const dir = path.join(runs, id);
  await makeFreshDir(dir);
  const socketDir = socketDirFor(dir, env.runtimeDir, id);
  if (socketDir !== dir) {
    await ensureRuntimeDir(env);
    await makeFreshDir(socketDir);
  }
  const owner: OwnerRecord = {
    pid: process.pid,
    startTime: await processStartTime(process.pid),
    extraPaths: socketDir !== dir ? [socketDir, ...extraPaths] : [...extraPaths],
  };
  await fs.writeFile(path.join(dir, RUN_FILES.owner), `${JSON.stringify(owner)}\n`, {
    mode: 0o600,
    flag: 'wx',
  });
  return { id, instanceDir: base, dir, socketDir, consoleLog: path.join(dir, RUN_FILES.consoleLog) };
}

/** A directory that must not exist yet (a new run's): made 0700 whatever the umask, then checked. */
async function makeFreshDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { mode: 0o700 });
  await fs.chmod(dir, 0o700);
  const reason = distrust(await fs.lstat(dir), 'directory');
  if (reason) throw new HostError(`refusing to use ${dir}: it ${reason}`, { hint: `remove ${dir}` });
}

/** Ends a run: removes its directory and extra paths, or keeps its logs (failed runs). */
export async function finishRun(run: RunPaths, keepLogs: boolean): Promise<void> {
  await saveRunLogs(run.dir, run.instanceDir);
  const owner = await readOwner(run.dir);
  if (owner.kind === 'ok') await removeExtraPaths(run.id, run.dir, run.socketDir, owner.owner.extraPaths);
  if (keepLogs) {
    for (const entry of await fs.readdir(run.dir)) {
      if (entry.endsWith('.sock') || entry.endsWith('.pid') || entry === RUN_FILES.owner) {
        await fs.rm(path.join(run.dir, entry), { force: true });
      }
    }
    await fs.writeFile(path.join(run.dir, RUN_FILES.kept), '', { mode: 0o600 });
    await pruneKeptRuns(run.instanceDir);
  } else {
    await fs.rm(run.dir, { recursive: true, force: true });
  }
}

type OwnerRead =
  | { readonly kind: 'missing' }
  | { readonly kind: 'broken'; readonly reason: string }
  | { readonly kind: 'ok'; readonly owner: OwnerRecord };

async function readOwner(dir: string): Promise<OwnerRead> {
  const read = await readRecordFile(path.join(dir, RUN_FILES.owner));
  if (read.kind === 'missing') return read;
  if (read.kind === 'untrusted') return { kind: 'broken', reason: read.reason };
  const { ownerRecordSchema, parseRecord } = await loadSchemas();
  const parsed = parseRecord(read.text, ownerRecordSchema);
  return parsed.ok ? { kind: 'ok', owner: parsed.value } : { kind: 'broken', reason: parsed.reason };
}

/**
 * Removes the paths a run record lists outside its run directory, only where our layout puts
 * them: the run's socket directory (<runtime>/<id>). Others are left alone (the guest handoff
 * directory inside a rootfs, listed by older versions, is gone: a command is an agent session).
 */
async function removeExtraPaths(
  id: string,
  runDir: string,
  socketDir: string,
  extraPaths: readonly string[],
): Promise<void> {
  for (const extra of extraPaths) {
    if (isOurExtraPath(id, runDir, socketDir, extra)) await fs.rm(extra, { recursive: true, force: true });
  }
}

function isOurExtraPath(id: string, runDir: string, socketDir: string, extra: string): boolean {
  if (!path.isAbsolute(extra) || path.normalize(extra) !== extra || path.basename(extra) !== id) return false;
  return extra === socketDir && socketDir !== runDir;
}

export interface SweepReport {
  readonly removedRuns: readonly string[];
  readonly stoppedProcesses: readonly PidRecord[];
  /** Run records not acted on: not ours alone, or broken. */
  readonly untrusted: readonly Untrusted[];
}

/**
 * Cleans up after runs whose owning CLI died: stops their processes (only while pid and start
 * time still match what the run recorded) and removes their files. Live runs are left alone. A
 * run record is acted on only when it and every directory above it (to the data dir) are ours
 * alone and it matches its schema; any other is reported in `untrusted` and left as it is.
 */
export async function sweepStaleRuns(env: HostEnvironment, instance: string): Promise<SweepReport> {
  const base = instanceDir(env, instance);
  const runsDir = path.join(base, INSTANCE_DIRS.runs);
  const none: SweepReport = { removedRuns: [], stoppedProcesses: [], untrusted: [] };
  let entries: string[];
  try {
    entries = await fs.readdir(runsDir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return none;
    throw err;
  }
  const above = await untrustedDir([...instanceChainOf(env, instance), runsDir], { followFirst: true });
  if (above) return { ...none, untrusted: [above] };
  const removedRuns: string[] = [];
  const stoppedProcesses: PidRecord[] = [];
  const untrusted: Untrusted[] = [];
  for (const id of entries) {
    const dir = path.join(runsDir, id);
    const bad = await untrustedDir([dir]);
    if (bad) {
      untrusted.push(bad);
      continue;
    }
    const owner = await readOwner(dir);
    if (owner.kind === 'missing') continue; // kept (finished) runs have no owner file
    if (owner.kind === 'broken') {
      untrusted.push({ path: path.join(dir, RUN_FILES.owner), reason: owner.reason });
      continue;
    }
    if (await isSameProcess(owner.owner.pid, owner.owner.startTime)) continue;
    const records: PidRecord[] = [];
    const brokenPid: Untrusted[] = [];
    for (const file of await fs.readdir(dir)) {
      if (!file.endsWith('.pid')) continue;
      const read = await readRecordFile(path.join(dir, file));
      if (read.kind === 'missing') continue;
      const { parseRecord, pidRecordSchema } = await loadSchemas();
      const parsed =
        read.kind === 'ok'
          ? parseRecord(read.text, pidRecordSchema)
          : { ok: false as const, reason: read.reason };
      if (parsed.ok) records.push(parsed.value);
      else brokenPid.push({ path: path.join(dir, file), reason: parsed.reason });
    }
    if (brokenPid.length) {
      untrusted.push(...brokenPid);
      continue;
    }
    stoppedProcesses.push(...(await terminateAll(records)));
    await removeExtraPaths(id, dir, socketDirFor(dir, env.runtimeDir, id), owner.owner.extraPaths);
    await saveRunLogs(dir, base);
    await fs.rm(dir, { recursive: true, force: true });
    removedRuns.push(id);
  }
  return { removedRuns, stoppedProcesses, untrusted };
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
  await ensurePrivateDir(logs, privateRules(logs));
  for (const stale of await fs.readdir(logs)) {
    // The supervisor's own logs (detached runs) belong to the instance, not to a run.
    if (stale.endsWith('.log') && !RUN_INDEPENDENT_LOGS.has(stale))
      await fs.rm(path.join(logs, stale), { force: true });
  }
  for (const file of files) {
    // A copy keeps the source's mode (a helper's log under umask 000 is 0666): ours are 0600.
    await fs
      .copyFile(path.join(runDir, file), path.join(logs, file))
      .then(() => fs.chmod(path.join(logs, file), 0o600))
      .catch(() => undefined);
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

/**
 * The records' validator, loaded when a record is read (an earlier run reaped, an owner checked),
 * not with this module: a running instance's supervisor usually reads none and then keeps no
 * memory for valibot (bench:startup).
 */
function loadSchemas(): Promise<typeof import('./schema.ts')> {
  return import('./schema.ts');
}
