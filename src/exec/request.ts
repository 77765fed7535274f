/**
 * The command `openshell-vm run` asks the guest agent to run (an agent session's OPEN: argv,
 * environment, working directory). The agent alone looks a bare name up in PATH and gives the
 * 127/126/125 codes (src/guest/agent/ovm-agent.c).
 */
import type { ExecRequest } from '../agent/protocol.ts';
import { AGENT_ENV } from '../guest/agent-env.ts';

export interface WorkloadRequest {
  /** Absolute path in the guest, or a name looked up in the workload's PATH. */
  readonly exec: string;
  readonly args: readonly string[];
  /** The workload's entire environment, in order. */
  readonly env: readonly (readonly [string, string])[];
  readonly workdir: string;
}

/** The guest environment a command gets unless --env overrides a name (the seed's defaults). */
export const DEFAULT_GUEST_ENV = AGENT_ENV;

/** Defaults first, then the user's variables; a user variable replaces a default of the same name. */
export function mergeEnv(user: readonly (readonly [string, string])[]): [string, string][] {
  const merged = new Map<string, string>(DEFAULT_GUEST_ENV.map(([k, v]) => [k, v]));
  for (const [key, value] of user) merged.set(key, value);
  return [...merged];
}

/**
 * The agent session for a run's command. The agent starts from exactly DEFAULT_GUEST_ENV (on
 * every backend: guest/agent-env.ts), and every variable of `request.env` is set on top: the
 * command gets exactly the request's environment.
 */
export function agentRequest(
  request: WorkloadRequest,
  terminal: { readonly tty: boolean; readonly rows: number; readonly cols: number },
): ExecRequest {
  return {
    argv: [request.exec, ...request.args],
    env: request.env.map(([key, value]) => `${key}=${value}`),
    workdir: request.workdir,
    ...terminal,
  };
}
