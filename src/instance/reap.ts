import fs from 'node:fs/promises';
import type { HostEnvironment } from '../config/environment.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import { instanceDir, sweepStaleRuns, terminateAll } from './runs.ts';
import { type ProcessIdentity, readState, removeState } from './state.ts';

export interface ReapReport {
  /** Processes of ours that outlived their supervisor, now stopped. */
  readonly stopped: readonly ProcessIdentity[];
  /** Stale sockets and run directories removed. */
  readonly removed: readonly string[];
  /** How many runs (VM boots) were cleaned up. */
  readonly runs: number;
}

/**
 * Cleans up after a supervisor that died (kill -9, crash, power loss): the processes its state file
 * and its runs' pid files list are stopped only while pid and start time still match (a reused pid
 * or a look-alike process is never touched; nothing is matched by name), its sockets and state
 * file removed. A live supervisor's instance is left alone.
 */
export async function reapStaleInstance(env: HostEnvironment, instance: string): Promise<ReapReport> {
  const dir = instanceDir(env, instance);
  const stopped: ProcessIdentity[] = [];
  const removed: string[] = [];
  const state = await readState(dir);
  if (state && !(await isSameProcess(state.supervisor.pid, state.supervisor.startTime))) {
    stopped.push(...(await terminateAll(state.processes)));
    for (const socket of state.sockets) {
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
  return { stopped, removed, runs: Math.max(swept.removedRuns.length, state && stopped.length ? 1 : 0) };
}

export function describeReap(report: ReapReport): string | undefined {
  if (!report.stopped.length && !report.removed.length) return undefined;
  const stopped = report.stopped.map((p) => `${p.name} (pid ${p.pid})`).join(', ');
  return `cleaned up ${report.runs} run(s) left by a CLI that died${stopped ? `; stopped ${stopped}` : ''}`;
}
