/**
 * The project's error vocabulary. Libraries throw these; only src/cli formats them and picks the
 * exit code (see exitCodeFor in src/cli/main.ts).
 *
 * - UsageError: bad input detected from arguments, before anything is started.
 * - HostError: the host lacks something (QEMU, a kernel, a working accelerator) or a host-side
 *   step failed.
 * - VmError: the microVM failed to boot, hung, or ended without reporting a result.
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
