/**
 * The project's error vocabulary. Libraries throw these; only src/cli formats them and picks the
 * exit code (see exitCodeFor in src/cli/main.ts).
 *
 * - UsageError: bad input detected from arguments, before anything is started.
 * - HostError: the host lacks something (QEMU, a kernel, a working accelerator) or a host-side
 *   step failed.
 * - VmError: the microVM failed to boot, hung, or ended without reporting a result.
 *   - RestoreError (a VmError): a saved VM state did not come back (the VMM could not load it, or
 *     the restored guest failed its checks): the caller drops that state and boots cold.
 * - CommandError: an external command we ran failed; carries argv, exit code and stderr tail.
 */
export type ErrorKind = 'usage' | 'host' | 'vm' | 'command';

export interface OvmErrorOptions {
  readonly hint?: string | undefined;
  readonly cause?: unknown;
}

export class OvmError extends Error {
  readonly kind: ErrorKind;
  readonly hint: string | undefined;

  constructor(kind: ErrorKind, message: string, options: OvmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.hint = options.hint;
  }
}

export class UsageError extends OvmError {
  override readonly name = 'UsageError';
  constructor(message: string, options: OvmErrorOptions = {}) {
    super('usage', message, options);
  }
}

export class HostError extends OvmError {
  override readonly name = 'HostError';
  constructor(message: string, options: OvmErrorOptions = {}) {
    super('host', message, options);
  }
}

export class VmError extends OvmError {
  override readonly name = 'VmError';
  constructor(message: string, options: OvmErrorOptions = {}) {
    super('vm', message, options);
  }
}

/**
 * A saved VM state that did not come back: the VMM could not load it (QEMU's `-incoming` failed,
 * or QEMU died loading it), or the restored guest failed its checks (its agent, its readiness).
 * Only this drops the state; any other failure of a restoring start is the start's own.
 */
export class RestoreError extends VmError {}

export interface CommandFailure {
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderrTail: string;
}

export class CommandError extends OvmError {
  override readonly name = 'CommandError';
  readonly failure: CommandFailure;
  constructor(message: string, failure: CommandFailure, options: OvmErrorOptions = {}) {
    const how = failure.signal ? `killed by ${failure.signal}` : `exit code ${failure.exitCode}`;
    const tail = failure.stderrTail.trim() ? `\n${indent(failure.stderrTail.trim())}` : '';
    super('command', `${message}: \`${failure.argv.join(' ')}\` failed (${how})${tail}`, options);
    this.failure = failure;
  }
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((line) => `    ${line}`)
    .join('\n');
}

/** True when `err` is a Node.js system error with the given code (ENOENT, EADDRINUSE...). */
export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/** A Node.js system error (with its `code`) anywhere in `err`'s cause chain, `err` included. */
export function systemErrorIn(err: unknown, codes: ReadonlySet<string>): NodeJS.ErrnoException | undefined {
  const seen = new Set<unknown>();
  for (let e = err; typeof e === 'object' && e !== null && !seen.has(e); e = (e as Error).cause) {
    seen.add(e);
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && codes.has(code)) return e as NodeJS.ErrnoException;
  }
  return undefined;
}

/** Host conditions a user can fix, each with what it means and how to fix it (PATH: the path, when known). */
const HOST_CONDITIONS: Readonly<
  Record<
    string,
    { readonly what: string; readonly fix: (at: string | undefined) => string; readonly needsPath?: true }
  >
> = {
  ENOSPC: {
    what: 'no space left on the device',
    fix: (at) =>
      `free space on ${at ? `that filesystem (df -h ${at})` : 'the full filesystem (df -h shows which)'}, then run again`,
  },
  EDQUOT: {
    what: 'disk quota exceeded',
    fix: (at) => `free space or raise your quota (${at ? `df -h ${at}; ` : ''}quota -s), then run again`,
  },
  EROFS: {
    what: 'read-only file system',
    fix: (at) =>
      `${at ? `${at} is` : 'the path is'} on a read-only filesystem: remount it read-write, or point OPENSHELL_VM_DATA_DIR / XDG_CACHE_HOME to a writable place`,
  },
  EACCES: {
    what: 'permission denied',
    needsPath: true,
    fix: (at) =>
      `check the owner and mode (ls -ld ${at}); run as the user that owns it, or point OPENSHELL_VM_DATA_DIR / XDG_CACHE_HOME elsewhere`,
  },
};
const HOST_CONDITION_CODES: ReadonlySet<string> = new Set(Object.keys(HOST_CONDITIONS));

/**
 * A full disk, an exceeded quota, a read-only filesystem or a denied path anywhere in `err`'s
 * cause chain, as a HostError naming the path (when the system error has one) with the fix; the
 * original is its cause. Undefined when there is none (EACCES only counts with a path: without
 * one it is not about our files).
 */
export function explainHostCondition(err: unknown): HostError | undefined {
  const sys = systemErrorIn(err, HOST_CONDITION_CODES);
  if (!sys?.code) return undefined;
  const condition = HOST_CONDITIONS[sys.code];
  const at = typeof sys.path === 'string' ? sys.path : undefined;
  if (!condition || (condition.needsPath && !at)) return undefined;
  const where = at ? `: ${at}` : '';
  const syscall = sys.syscall ? ` (${sys.code}, ${sys.syscall})` : ` (${sys.code})`;
  return new HostError(`${condition.what}${where}${syscall}`, { hint: condition.fix(at), cause: err });
}
