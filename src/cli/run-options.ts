import type { RawExecOptions } from '../options/exec-options.ts';
import { type ParsedArgs, single } from './args.ts';
import { Reporter } from './reporter.ts';

/** A run's options as the CLI gives them, for the one validator (src/options/exec-options.ts). */
export function execRawOptions(args: ParsedArgs, exec: string, guestArgs: readonly string[]): RawExecOptions {
  return {
    exec,
    args: guestArgs,
    env: args.values.get('env'),
    workdir: single(args, 'workdir'),
    vcpus: single(args, 'vcpus'),
    mem: single(args, 'mem'),
    arch: single(args, 'arch'),
    accel: single(args, 'accel'),
    bootTimeout: single(args, 'boot-timeout'),
    name: single(args, 'name'),
    ports: args.values.get('port'),
    net: single(args, 'net'),
    backend: single(args, 'backend'),
    rootfs: single(args, 'rootfs'),
    kernel: single(args, 'kernel'),
  };
}

/** A run's progress: stderr unless --quiet, and --events FILE. */
export function runReporter(args: ParsedArgs): Reporter {
  return new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
}

/**
 * `run` from a warm pool (openshell-vm pool start) with these VM options, or undefined when there
 * is none to take from (then the caller boots cold). Its own module so that a pooled run loads the
 * pool client alone: not the VMM backends, the guest build or the rootfs code a cold boot needs.
 */
export async function runPooled(
  args: ParsedArgs,
  exec: string,
  guestArgs: readonly string[],
  reporter: Reporter,
): Promise<number | undefined> {
  if (args.flags.has('no-pool') || args.flags.has('detach') || args.flags.has('supervise')) return undefined;
  const { runFromPool } = await import('../pool/take.ts');
  const io = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr };
  return runFromPool(execRawOptions(args, exec, guestArgs), io, reporter);
}
