import fs from 'node:fs/promises';
import path from 'node:path';
import { controlRequest } from '../agent/client.ts';
import { FRAME, parseAgentTime } from '../agent/protocol.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { gatewayDir } from '../gateway/client-config.ts';
import { MERGE_RECORD, readMergeRecord, unmergeKubeconfig } from '../gateway/kubeconfig.ts';
import { lexists, pathExists } from '../host/fs.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import { isSameProcess } from '../supervisor/identity.ts';
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
  readonly hasRootfs: boolean;
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
  const hasRootfs = await pathExists(path.join(dir, 'rootfs', ROOTFS_PATHS.record));
  if (report.brokenState) {
    const { path: file, reason } = report.brokenState;
    return {
      name,
      status: 'broken',
      problems: [`${file} ${reason} (${brokenFix(name, file)})`],
      hasRootfs,
      reaped,
    };
  }
  const read = await loadState(dir);
  if (read.kind === 'broken') {
    return {
      name,
      status: 'broken',
      problems: [`${read.path} ${read.reason} (${brokenFix(name, read.path)})`],
      hasRootfs,
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
        hasRootfs,
        reaped,
      };
    }
    return { name, status: 'stopped', problems: [], hasRootfs, reaped };
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
  return { name, status, problems, state, clockDiffMs, hasRootfs, reaped };
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

/** Where an instance keeps what --reset wipes: k3s's runtime state in its rootfs. */
const RESET_PATHS = [
  'var/lib/kubelet/pods',
  'var/lib/cni',
  'var/run',
  'run',
  'var/lib/rancher/k3s/server/db',
  'var/lib/rancher/k3s/server/tls',
  'var/lib/rancher/k3s/server/cred',
  'var/lib/rancher/k3s/server/token',
  'var/lib/rancher/k3s/server/node-token',
  'var/lib/rancher/k3s/agent/pod-manifests',
  'var/lib/rancher/k3s/agent/client-ca.crt',
  'etc/rancher/k3s/k3s.yaml',
  `${ROOTFS_PATHS.k3sManifests}/openshell-tls-secrets.yaml`,
] as const;

const RESET_REFUSED_HINT = 'rebuild the rootfs instead: openshell-vm prepare-rootfs --force';

/** The gateway's files outside the instance: the OpenShell CLI's metadata and mTLS, ~/.kube/NAME.yaml. */
async function removeHostCredentials(env: HostEnvironment, name: string): Promise<string[]> {
  const removed: string[] = [];
  for (const p of [gatewayDir(env.openshellConfigDir, name), path.join(env.kubeDir, `${name}.yaml`)]) {
    if (await lexists(p)) {
      await fs.rm(p, { recursive: true, force: true });
      removed.push(p);
    }
  }
  return removed;
}

/**
 * Takes what `--merge-kubeconfig` added out of the kubeconfig it went into (while it is still
 * ours) and forgets the record. Returns what was removed, as lines for the user. A kubeconfig that
 * no longer parses, or entries changed since, are left as they are, and `warn` says so.
 */
async function forgetMergedKubeconfig(dir: string, warn: (message: string) => void): Promise<string[]> {
  const merged = await readMergeRecord(dir);
  if (!merged) return [];
  const removed: string[] = [];
  try {
    const out = await unmergeKubeconfig(merged);
    if (out.removed.length) {
      removed.push(`${merged.target}: ${out.removed.join(', ')} '${merged.name}' (backup ${out.backup})`);
    }
    if (out.kept.length) {
      warn(
        `kept ${out.kept.join(', ')} '${merged.name}' in ${merged.target}: not the ones openshell-vm merged (changed since)`,
      );
    }
  } catch (err) {
    warn(`left ${merged.target} alone: ${(err as Error).message}`);
  }
  await fs.rm(path.join(dir, MERGE_RECORD), { force: true });
  return removed;
}

/**
 * `--reset`: forgets the cluster and the credentials, keeps what the build made. Wipes k3s's
 * datastore, certificates and tokens, kubelet pods, CNI state and run files from the instance's
 * rootfs, the gateway's mTLS bundle and metadata from the OpenShell CLI's config, its kubeconfig
 * and what `--merge-kubeconfig` added (returned as `unmerged`). Kept: the base system, k3s, the
 * chart and manifests, and the images (containerd's content store and snapshots). The instance
 * must be stopped (the lock is held while wiping).
 */
export async function resetInstance(
  env: HostEnvironment,
  name: string,
  rootfs: string,
  warn: (message: string) => void = () => undefined,
): Promise<{ removed: string[]; unmerged: string[] }> {
  const dir = instanceDir(env, name);
  const release = await takeInstanceLock(dir, name, 'resetting the instance');
  const removed: string[] = [];
  let unmerged: string[] = [];
  try {
    // The rootfs is the guest's: a symlink planted on the way (var -> /) is refused, one at the
    // end of a path is unlinked, never followed.
    const root = new GuestRoot(rootfs, { hint: RESET_REFUSED_HINT });
    for (const rel of RESET_PATHS) {
      if (await root.remove(rel)) removed.push(root.hostPath(rel));
    }
    removed.push(...(await removeHostCredentials(env, name)));
    unmerged = await forgetMergedKubeconfig(dir, warn);
    await root.mkdirp('run');
  } finally {
    await release();
  }
  return { removed, unmerged };
}

/**
 * `delete`: stops the instance if it runs, then removes its directory (rootfs, logs, state), its
 * kubeconfig, what `--merge-kubeconfig` added to ~/.kube/config (while it is still ours) and the
 * OpenShell CLI's files for it (and active_gateway when it names it).
 */
export async function deleteInstance(
  env: HostEnvironment,
  name: string,
  timeoutMs: number,
  onProgress: (message: string) => void,
): Promise<{ removed: string[]; stopped: boolean }> {
  const dir = await requireInstance(env, name);
  const stop = await stopInstance(env, name, timeoutMs, onProgress);
  const release = await takeInstanceLock(dir, name, 'deleting the instance');
  const removed: string[] = [];
  try {
    const active = path.join(env.openshellConfigDir, 'active_gateway');
    const activeName = await fs.readFile(active, 'utf8').catch(() => '');
    if (activeName.trim() === name) {
      await fs.rm(active, { force: true });
      removed.push(active);
    }
    removed.push(...(await removeHostCredentials(env, name)));
    removed.push(...(await forgetMergedKubeconfig(dir, onProgress)));
  } finally {
    await release();
  }
  await fs.rm(dir, { recursive: true, force: true });
  removed.unshift(dir);
  return { removed, stopped: stop.wasRunning };
}
