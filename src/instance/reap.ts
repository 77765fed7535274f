import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import {
  INSTANCE_DIRS,
  instanceChainOf,
  instanceDir,
  socketDirFor,
  sweepStaleRuns,
  terminateAll,
} from './runs.ts';
import {
  brokenStateHint,
  type InstanceState,
  loadState,
  type ProcessIdentity,
  removeState,
} from './state.ts';
import { type Untrusted, untrustedDir } from './trust.ts';

export interface ReapReport {
  /** Processes of ours that outlived their supervisor, now stopped. */
  readonly stopped: readonly ProcessIdentity[];
  /** Stale sockets and run directories removed. */
  readonly removed: readonly string[];
  /** How many runs (VM boots) were cleaned up. */
  readonly runs: number;
  /** Records and directories not acted on: not ours alone (another user could have planted them). */
  readonly untrusted: readonly Untrusted[];
  /** The state file, when it is broken or not ours alone: reported, not acted on. */
  readonly brokenState?: Untrusted | undefined;
}

/**
 * Cleans up after a supervisor that died (kill -9, crash, power loss): the processes its state file
 * and its runs' pid files list are stopped only while pid and start time still match (a reused pid
 * or a look-alike process is never touched; nothing is matched by name), its sockets and state
 * file removed. A live supervisor's instance is left alone. Nothing is done on the word of a record
 * that is not ours alone (file and every directory above it), or that does not match its schema:
 * those are reported (`untrusted`, `brokenState`); and the paths removed are only those our layout
 * puts there. `run` and the gateway use this before they start: a broken state file is an error
 * there, with the fix.
 */
export async function reapStaleInstance(env: HostEnvironment, instance: string): Promise<ReapReport> {
  const report = await reapInstance(env, instance);
  if (report.brokenState) {
    throw new HostError(`the state file ${report.brokenState.path} ${report.brokenState.reason}`, {
      hint: brokenStateHint(instance, report.brokenState.path),
    });
  }
  return report;
}

/** reapStaleInstance, reporting a broken state file instead of refusing (status, list, stop). */
export async function reapInstance(env: HostEnvironment, instance: string): Promise<ReapReport> {
  const dir = instanceDir(env, instance);
  const stopped: ProcessIdentity[] = [];
  const removed: string[] = [];
  const chain = await untrustedDir(instanceChainOf(env, instance), { followFirst: true }).catch(
    (err: unknown) => {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw err;
    },
  );
  if (chain) {
    return { stopped, removed, runs: 0, untrusted: [chain], brokenState: chain };
  }
  const read = await loadState(dir);
  const brokenState = read.kind === 'broken' ? { path: read.path, reason: read.reason } : undefined;
  const state = read.kind === 'ok' ? read.state : undefined;
  if (state && !(await isSameProcess(state.supervisor.pid, state.supervisor.startTime))) {
    stopped.push(...(await terminateAll(state.processes)));
    for (const socket of ourSockets(env, dir, state)) {
      if (
        await fs.rm(socket, { force: true }).then(
          () => true,
          () => false,
        )
      )
        removed.push(socket);
    }
    await removeState(dir);
  }
  const swept = await sweepStaleRuns(env, instance);
  for (const p of swept.stoppedProcesses) {
    if (!stopped.some((s) => s.pid === p.pid))
      stopped.push({ name: p.name, pid: p.pid, startTime: p.startTime });
  }
  removed.push(...swept.removedRuns);
  return {
    stopped,
    removed,
    runs: Math.max(swept.removedRuns.length, state && stopped.length ? 1 : 0),
    untrusted: swept.untrusted,
    brokenState,
  };
}

/**
 * The sockets a state file lists that are where our layout puts them: in its run directory
 * (<instance>/runs/<id>) or that run's socket directory (<runtime>/<id>). Others are not removed.
 */
function ourSockets(env: HostEnvironment, dir: string, state: InstanceState): string[] {
  const id = path.basename(state.runDir);
  if (state.runDir !== path.join(dir, INSTANCE_DIRS.runs, id)) return [];
  const dirs = new Set([state.runDir, socketDirFor(state.runDir, env.runtimeDir, id)]);
  return state.sockets.filter(
    (s) => path.isAbsolute(s) && path.normalize(s) === s && s.endsWith('.sock') && dirs.has(path.dirname(s)),
  );
}

export function describeReap(report: ReapReport): string | undefined {
  const lines: string[] = [];
  if (report.stopped.length || report.removed.length) {
    const stopped = report.stopped.map((p) => `${p.name} (pid ${p.pid})`).join(', ');
    lines.push(
      `cleaned up ${report.runs} run(s) left by a CLI that died${stopped ? `; stopped ${stopped}` : ''}`,
    );
  }
  for (const u of report.untrusted) {
    if (u === report.brokenState) continue;
    lines.push(
      `left alone: ${u.path} ${u.reason}; nothing it names was stopped or removed (check who made it, then remove it: rm -r ${u.path})`,
    );
  }
  return lines.length ? lines.join('\n') : undefined;
}
