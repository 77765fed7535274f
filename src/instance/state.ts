import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../host/fs.ts';

export const STATE_FILE = 'state.json';
/** Where a stopped instance's logs are (the last run's, copied when it ends) and a detached supervisor's. */
export const LOGS_DIR = 'logs';

/** The log files `openshell-vm logs --source` reads. */
export const LOG_SOURCES = ['console', 'gvproxy', 'virtiofsd', 'vmm', 'supervisor', 'output'] as const;
export type LogSource = (typeof LOG_SOURCES)[number];

export interface ProcessIdentity {
  readonly name: string;
  readonly pid: number;
  /** The kernel's start time of the process: a reused pid has another one. */
  readonly startTime: string | undefined;
}

/**
 * A running instance, as its supervisor (the openshell-vm process that runs the VM) describes it.
 * Written atomically at each phase; removed when the instance stops. A state file whose
 * supervisor is gone is stale: the next start or status reaps what it lists.
 */
export interface InstanceState {
  readonly version: 1;
  readonly instance: string;
  readonly mode: 'gateway' | 'run';
  readonly phase: 'starting' | 'running' | 'stopping';
  readonly supervisor: ProcessIdentity;
  readonly detached: boolean;
  readonly backend: string;
  readonly accel: string;
  readonly arch: string;
  readonly vcpus: number;
  readonly memMib: number;
  readonly startedAt: string;
  readonly readyAt?: string | undefined;
  readonly runDir: string;
  /** The control socket (exec, clock, stop). */
  readonly control: string;
  /** Helper processes: the VMM, virtiofsd, gvproxy. */
  readonly processes: readonly ProcessIdentity[];
  /** Every socket the instance created on the host. */
  readonly sockets: readonly string[];
  readonly forwards: readonly string[];
  readonly logs: Partial<Record<LogSource, string>>;
  readonly endpoints?:
    | {
        readonly gateway?: string | undefined;
        readonly kubeApi?: string | undefined;
        readonly kubeconfig?: string | undefined;
        readonly mtlsDir?: string | undefined;
      }
    | undefined;
  /** run: the command. */
  readonly command?: readonly string[] | undefined;
}

export async function writeState(instanceDir: string, state: InstanceState): Promise<void> {
  await writeFileAtomic(path.join(instanceDir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

export async function readState(instanceDir: string): Promise<InstanceState | undefined> {
  try {
    const parsed = JSON.parse(await fs.readFile(path.join(instanceDir, STATE_FILE), 'utf8')) as InstanceState;
    return parsed.version === 1 && typeof parsed.supervisor?.pid === 'number' ? parsed : undefined;
  } catch {
    return undefined;
  }
}

export async function removeState(instanceDir: string): Promise<void> {
  await fs.rm(path.join(instanceDir, STATE_FILE), { force: true });
}
