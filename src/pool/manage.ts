import fs from 'node:fs/promises';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { listInstanceNames } from '../instance/lifecycle.ts';
import { describeReap, reapInstance } from '../instance/reap.ts';
import { instanceDir, terminate } from '../instance/runs.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import { isMemberOf, POOL_ID, type PoolKey, poolDir, poolsRoot } from './layout.ts';
import { claimedMembers, readyMembers } from './members.ts';
import { readPool } from './record.ts';

/** A pool as `pool status` reports it, derived from disk and the processes each time. */
export interface PoolStatus {
  readonly id: string;
  readonly status: 'running' | 'starting' | 'recovered' | 'broken';
  readonly size?: number | undefined;
  readonly key?: PoolKey | undefined;
  readonly supervisor?: { readonly pid: number; readonly startTime: string | undefined } | undefined;
  readonly startedAt?: string | undefined;
  /** Members booted, warmed and free to take. */
  readonly ready: readonly string[];
  /** Members a run has taken (stopped and removed when it is done). */
  readonly inUse: readonly string[];
  /** Members booting (instances of the pool neither ready nor taken). */
  readonly booting: readonly string[];
  /** What recovery did (a supervisor that died): processes stopped, paths removed. */
  readonly recovered?: string | undefined;
  /** Why a broken pool's record is not acted on. */
  readonly reason?: string | undefined;
}

export async function listPoolIds(env: HostEnvironment): Promise<string[]> {
  try {
    return (await fs.readdir(poolsRoot(env))).filter((n) => POOL_ID.test(n)).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

async function memberInstances(env: HostEnvironment, id: string): Promise<string[]> {
  return (await listInstanceNames(env)).filter((n) => isMemberOf(id, n));
}

/**
 * Cleans up after a pool supervisor that is gone (kill -9, crash): each member instance is reaped
 * (its processes stopped only while pid and start time still match, never by name), its directory
 * removed, then the pool's directory. Only names of this pool's members are touched.
 */
export async function recoverPool(env: HostEnvironment, id: string): Promise<string | undefined> {
  const lines: string[] = [];
  for (const member of await memberInstances(env, id)) {
    const report = await reapInstance(env, member);
    if (report.brokenState) {
      lines.push(`left ${member} alone: ${report.brokenState.path} ${report.brokenState.reason}`);
      continue;
    }
    const said = describeReap(report);
    if (said) lines.push(`${member}: ${said}`);
    await fs.rm(instanceDir(env, member), { recursive: true, force: true });
  }
  await fs.rm(poolDir(env, id), { recursive: true, force: true });
  return lines.length ? lines.join('\n') : undefined;
}

/** How long a pool directory without its record counts as a pool being started. */
const RECORD_GRACE_MS = 30_000;

async function isYoung(dir: string): Promise<boolean> {
  const stat = await fs.stat(dir).catch((err: unknown) => {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  });
  return stat !== undefined && Date.now() - stat.mtimeMs < RECORD_GRACE_MS;
}

/** One pool's status; a pool whose supervisor is gone is recovered first (and reported so). */
export async function poolStatus(env: HostEnvironment, id: string): Promise<PoolStatus> {
  const dir = poolDir(env, id);
  const read = await readPool(dir);
  if (read.kind === 'broken') {
    return { id, status: 'broken', reason: `${read.path} ${read.reason}`, ready: [], inUse: [], booting: [] };
  }
  if (read.kind === 'none' && (await isYoung(dir))) {
    // `pool start` made the directory and its supervisor is about to write the record.
    return { id, status: 'starting', ready: [], inUse: [], booting: [] };
  }
  if (read.kind === 'none' || !read.alive) {
    const recovered = await recoverPool(env, id);
    return { id, status: 'recovered', recovered, ready: [], inUse: [], booting: [] };
  }
  const { record } = read;
  const [ready, inUse, all] = await Promise.all([
    readyMembers(dir),
    claimedMembers(dir),
    memberInstances(env, id),
  ]);
  const booting = all.filter((m) => !ready.includes(m) && !inUse.includes(m));
  return {
    id,
    status: 'running',
    size: record.size,
    key: record.key,
    supervisor: record.supervisor,
    startedAt: record.startedAt,
    ready,
    inUse,
    booting,
  };
}

/** Every pool's status (recovering those whose supervisor is gone). */
export async function allPoolStatus(env: HostEnvironment): Promise<PoolStatus[]> {
  const out: PoolStatus[] = [];
  for (const id of await listPoolIds(env)) out.push(await poolStatus(env, id));
  return out;
}

/**
 * Stops a pool: SIGTERM to its supervisor (the very process pool.json names), which stops every
 * member and removes the pool; killed after `timeoutMs` and recovered. Then nothing of the pool is
 * left: no process, socket, run or instance directory. A pool with no live supervisor is recovered.
 */
export async function stopPool(
  env: HostEnvironment,
  id: string,
  timeoutMs: number,
  onProgress: (message: string) => void = () => undefined,
): Promise<{
  readonly wasRunning: boolean;
  readonly forced: boolean;
  readonly recovered?: string | undefined;
}> {
  const dir = poolDir(env, id);
  const read = await readPool(dir);
  if (read.kind === 'broken') {
    throw new HostError(`refusing to stop pool ${id}: ${read.path} ${read.reason}`, {
      hint: `check who made it, then remove it: rm -r ${dir}`,
    });
  }
  if (read.kind === 'none' || !read.alive) {
    return { wasRunning: false, forced: false, recovered: await recoverPool(env, id) };
  }
  const target = read.record.supervisor;
  onProgress(`stopping pool ${id} (openshell-vm pid ${target.pid}; up to ${timeoutMs / 1000} s)`);
  try {
    process.kill(target.pid, 'SIGTERM');
  } catch {
    // gone already
  }
  const deadline = Date.now() + timeoutMs;
  let forced = false;
  while (await isSameProcess(target.pid, target.startTime)) {
    if (Date.now() > deadline) {
      onProgress(`the pool supervisor (pid ${target.pid}) did not stop in time: killing it`);
      await terminate(target);
      forced = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const recovered = await recoverPool(env, id);
  return { wasRunning: true, forced, recovered };
}
