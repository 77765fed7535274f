/**
 * The workload handed to the guest init: rendered as a POSIX sh fragment that the init sources
 * (src/guest/scripts/ovm-init.sh). Every string is single-quoted, so argv, environment values and
 * the working directory reach the guest byte for byte: spaces, quotes, empty strings, newlines,
 * non-ASCII.
 */

export interface WorkloadRequest {
  /** Absolute path in the guest, or a name looked up in the workload's PATH. */
  readonly exec: string;
  readonly args: readonly string[];
  /** The workload's entire environment, in order. */
  readonly env: readonly (readonly [string, string])[];
  readonly workdir: string;
}

/** The guest environment a command gets unless --env overrides a name (the seed's defaults). */
export const DEFAULT_GUEST_ENV: readonly (readonly [string, string])[] = [
  ['HOME', '/root'],
  ['PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  ['TERM', 'xterm'],
];

/** Defaults first, then the user's variables; a user variable replaces a default of the same name. */
export function mergeEnv(user: readonly (readonly [string, string])[]): [string, string][] {
  const merged = new Map<string, string>(DEFAULT_GUEST_ENV.map(([k, v]) => [k, v]));
  for (const [key, value] of user) merged.set(key, value);
  return [...merged];
}

export function shQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

export function renderRequestScript(request: WorkloadRequest): string {
  const pathVar = request.env.find(([key]) => key === 'PATH')?.[1] ?? '';
  const lines = [
    '# Written by openshell-vm on the host; sourced by the guest init.',
    `ovm_exec=${shQuote(request.exec)}`,
    `ovm_workdir=${shQuote(request.workdir)}`,
    `ovm_path=${shQuote(pathVar)}`,
    'ovm_setenv() {',
    ...request.env.map(([key, value]) => `  export ${shQuote(`${key}=${value}`)}`),
    '  :',
    '}',
    `set -- ${request.args.map(shQuote).join(' ')}`.trimEnd(),
    '',
  ];
  return lines.join('\n');
}

/** What the guest init reported in the status file. */
export interface GuestStatus {
  readonly code: number;
  readonly reason: string;
}

export function parseStatus(text: string): GuestStatus | undefined {
  const match = /^(\d{1,3}) ([a-z-]+)\s*$/.exec(text);
  if (!match) return undefined;
  return { code: Number(match[1]), reason: match[2] as string };
}

/** A human sentence for a status the guest init reported instead of running the command. */
export function describeStatus(status: GuestStatus, request: WorkloadRequest): string | undefined {
  switch (status.reason) {
    case 'exited':
      return undefined;
    case 'not-found':
      return `${request.exec}: not found in the guest`;
    case 'not-executable':
      return `${request.exec}: not executable in the guest (is it a directory, or missing its execute bit?)`;
    case 'workdir-missing':
      return `--workdir ${request.workdir}: no such directory in the guest`;
    default:
      return `the guest init failed before running the command (${status.reason})`;
  }
}
