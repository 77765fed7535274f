import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { writeFileAtomic } from '../host/fs.ts';
import type { LogSource } from './log-sources.ts';
import { readRecordFile, untrustedDir } from './trust.ts';

export const STATE_FILE = 'state.json';
/** Where a stopped instance's logs are (the last run's, copied when it ends) and a detached supervisor's. */
export const LOGS_DIR = 'logs';

export { LOG_SOURCES, type LogSource } from './log-sources.ts';

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
        /** The version the gateway's Health answered with. */
        readonly gatewayVersion?: string | undefined;
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

/** What is at an instance's state file: nothing, a valid state, or a broken/untrusted file (with why). */
export type StateRead =
  | { readonly kind: 'none' }
  | { readonly kind: 'ok'; readonly state: InstanceState }
  | { readonly kind: 'broken'; readonly path: string; readonly reason: string };

/**
 * Reads the state file: only a regular file of ours that nobody else can write (no symlink
 * followed), at most RECORD_MAX_BYTES, matching the schema. Anything else is `broken`, with the
 * reason; it is reported, never acted on (`stop` and `delete` remove it).
 */
export async function loadState(instanceDir: string): Promise<StateRead> {
  const file = path.join(instanceDir, STATE_FILE);
  const dir = await untrustedDir([instanceDir]).catch((err: unknown) => {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  });
  if (dir) return { kind: 'broken', path: file, reason: `its directory ${dir.path} ${dir.reason}` };
  const read = await readRecordFile(file);
  if (read.kind === 'missing') return { kind: 'none' };
  if (read.kind === 'untrusted') return { kind: 'broken', path: file, reason: read.reason };
  // The validator is loaded here, not with this module: a running instance's supervisor writes
  // its state but never reads one, and keeps no memory for valibot (bench:startup).
  const { parseRecord } = await import('./schema.ts');
  const { instanceStateSchema } = await import('./state-schema.ts');
  const parsed = parseRecord<InstanceState>(read.text, instanceStateSchema);
  if (!parsed.ok) return { kind: 'broken', path: file, reason: parsed.reason };
  return { kind: 'ok', state: parsed.value };
}

/** The fix for a broken state file, for a hint. */
export function brokenStateHint(instance: string, file: string): string {
  return `clean it up: openshell-vm stop ${instance} (or remove ${file})`;
}

/** The running instance's state, undefined when it has none; a broken state file is a HostError naming it. */
export async function readState(instanceDir: string): Promise<InstanceState | undefined> {
  const read = await loadState(instanceDir);
  if (read.kind === 'ok') return read.state;
  if (read.kind === 'none') return undefined;
  throw new HostError(`the state file ${read.path} ${read.reason}`, {
    hint: brokenStateHint(path.basename(instanceDir), read.path),
  });
}

export async function removeState(instanceDir: string): Promise<void> {
  // recursive: a directory in its place (a broken state) goes too; rm never follows a symlink.
  await fs.rm(path.join(instanceDir, STATE_FILE), { recursive: true, force: true });
}
