import os from 'node:os';
import { type AccelChoice, chooseAccelerator, readHostAccelFacts } from '../accel/probe.ts';
import { readEnvironment } from '../config/environment.ts';
import { type RawExecOptions, resolveExecOptions } from '../config/exec-options.ts';
import { HostError, OvmError, UsageError } from '../errors.ts';
import { runExec } from '../exec/run-exec.ts';
import { hostArch } from '../host/arch.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import { checkHostPortsFree } from '../net/ports.ts';
import { packageVersion } from '../version.ts';
import type { ProcessEvents, VmmBackend } from '../vmm/backend.ts';
import { LibkrunBackend } from '../vmm/libkrun/backend.ts';
import { describeRuntime, discoverRuntime, type RuntimeBundle } from '../vmm/libkrun/runtime.ts';
import { QemuBackend } from '../vmm/qemu/backend.ts';
import { chooseBackend } from '../vmm/select.ts';
import { type OptionSpec, type ParsedArgs, parseArgs, single } from './args.ts';
import { doctorCommand } from './doctor.ts';
import { HELP } from './help.ts';
import { kernelCommand } from './kernel.ts';
import { prepareRootfsCommand } from './prepare-rootfs.ts';
import { Reporter } from './reporter.ts';
import { rootfsCommand } from './rootfs.ts';
import { runtimeCommand } from './runtime.ts';
import { Interrupted, withSignals } from './signals.ts';

/** The only place that decides exit codes for openshell-vm's own failures. */
export const EXIT = { usage: 2, failure: 125 } as const;

const OPTIONS: readonly OptionSpec[] = [
  { name: 'exec', kind: 'value' },
  { name: 'args', kind: 'greedy-any' },
  { name: 'env', kind: 'greedy-plain', repeatable: true },
  { name: 'workdir', kind: 'value' },
  { name: 'vcpus', kind: 'value' },
  { name: 'mem', kind: 'value' },
  { name: 'arch', kind: 'value' },
  { name: 'accel', kind: 'value' },
  { name: 'boot-timeout', kind: 'value' },
  { name: 'name', kind: 'value' },
  { name: 'port', short: 'p', kind: 'value', repeatable: true },
  { name: 'net', kind: 'value' },
  { name: 'backend', kind: 'value' },
  { name: 'rootfs', kind: 'value' },
  { name: 'events', kind: 'value' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'keep-logs', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
  { name: 'version', short: 'V', kind: 'flag' },
];

export async function main(argv: readonly string[]): Promise<number> {
  const debug = argv.includes('--debug');
  try {
    return await dispatch(argv);
  } catch (err) {
    return reportError(err, debug);
  }
}

async function dispatch(argv: readonly string[]): Promise<number> {
  if (argv[0] === 'help') return printHelp();
  if (argv[0] === 'kernel') return kernelCommand(argv.slice(1));
  if (argv[0] === 'runtime') return runtimeCommand(argv.slice(1));
  if (argv[0] === 'doctor') return doctorCommand(argv.slice(1));
  if (argv[0] === 'prepare-rootfs') return prepareRootfsCommand(argv.slice(1));
  if (argv[0] === 'rootfs') return rootfsCommand(argv.slice(1));
  // `run` may come first or after options: `openshell-vm -q run -- PATH`.
  let args = parseArgs(argv, OPTIONS, true);
  const isRun = args.rest[0] === 'run';
  if (isRun) {
    args = mergeArgs(args, parseArgs(args.rest.slice(1), OPTIONS, true));
  } else if (args.rest.length) {
    throw new UsageError(`unexpected argument '${args.rest[0]}'`, {
      hint: 'guest arguments go after --args (--exec /bin/echo --args hello), or use: openshell-vm run -- PATH [ARG...]',
    });
  }
  if (args.flags.has('help')) return printHelp();
  if (args.flags.has('version')) {
    process.stdout.write(`openshell-vm ${packageVersion()}\n`);
    return 0;
  }
  if (isRun) {
    if (args.values.has('exec') || args.values.has('args')) {
      throw new UsageError('run takes the command after its options, not --exec/--args', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    }
    if (!args.rest.length)
      throw new UsageError('run: no command given', {
        hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]',
      });
    return execCommand(args, args.rest[0] as string, args.rest.slice(1));
  }
  const exec = single(args, 'exec');
  if (exec === undefined) {
    if (args.values.has('args') || args.values.has('env') || args.values.has('workdir')) {
      throw new UsageError('--args, --env and --workdir need --exec PATH', { hint: 'add --exec PATH' });
    }
    throw new UsageError('the gateway (openshell-vm without --exec) is not available yet', {
      hint: "run a command instead, e.g. openshell-vm --exec /bin/sh --args -c 'echo hello'",
    });
  }
  return execCommand(args, exec, args.values.get('args') ?? []);
}

async function execCommand(args: ParsedArgs, exec: string, guestArgs: readonly string[]): Promise<number> {
  const raw: RawExecOptions = {
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
  };
  const reporter = new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
  const { options, warnings } = resolveExecOptions(raw, {
    cpus: os.availableParallelism(),
    memMib: Math.floor(os.totalmem() / (1024 * 1024)),
  });
  for (const warning of warnings) reporter.warn(warning);

  // Everything that can fail without starting a process fails here, before anything starts.
  const env = readEnvironment();
  const facts = await readHostAccelFacts();
  const events: ProcessEvents = {
    onProcess: (e) =>
      reporter.event({
        type: 'process',
        action: e.action,
        process: e.record,
        exit: e.exit,
        elapsedMs: Math.round(performance.now()),
      }),
  };
  let runtime: RuntimeBundle | undefined;
  let runtimeProblem: { why: string; hint?: string | undefined } = { why: 'not looked for' };
  try {
    runtime = await discoverRuntime(env);
  } catch (err) {
    // A runtime the user pointed at must be valid; one that is merely absent means QEMU.
    if (!(err instanceof HostError) || env.runtimeBundleDir) throw err;
    runtimeProblem = { why: err.message, hint: err.hint };
  }
  const choice = chooseBackend(
    facts,
    runtime ? { found: true, dir: runtime.dir } : { found: false, ...runtimeProblem },
    options.backend,
  );
  let backend: VmmBackend;
  let accel: AccelChoice;
  if (choice.backend === 'libkrun' && runtime) {
    if (options.arch !== hostArch()) {
      throw new UsageError(`--arch ${options.arch}: libkrun runs guests of the host's architecture only`, {
        hint: 'use --backend qemu',
      });
    }
    if (options.accel === 'tcg')
      throw new UsageError('--accel tcg: libkrun has no software emulation', { hint: 'use --backend qemu' });
    if (options.network === 'user')
      throw new UsageError("--net user is QEMU's own network", { hint: 'use --net gvproxy with libkrun' });
    if (options.network === 'tsi' && options.forwards.some((f) => f.hostAddress !== '127.0.0.1')) {
      throw new UsageError('-p ADDR:...: TSI port maps have no host address', {
        hint: 'use -p HOST:GUEST with --net tsi',
      });
    }
    backend = new LibkrunBackend(env, runtime, events);
    accel = { accel: process.platform === 'darwin' ? 'hvf' : 'kvm', reason: 'libkrun', forced: false };
  } else {
    if (options.network === 'tsi') {
      throw new UsageError("--net tsi is libkrun's network", {
        hint: 'use --backend libkrun, or --net gvproxy/user',
      });
    }
    const qemu = new QemuBackend(env, events);
    await qemu.preflight(options);
    backend = qemu;
    accel = chooseAccelerator(options.arch, facts, options.accel);
  }
  if (options.network === 'gvproxy') await findGvproxy(env);
  await checkHostPortsFree(options.forwards);
  reporter.progress(`backend: ${choice.backend} (${choice.reason})`);
  if (choice.warning) reporter.warn(choice.warning);
  if (runtime && choice.backend === 'libkrun')
    for (const line of describeRuntime(runtime)) reporter.progress(line);
  reporter.progress(`accelerator: ${accel.accel} (${accel.reason})`);
  if (accel.warning) reporter.warn(accel.warning);

  return withSignals(reporter, 'stopping the microVM', async (signal) => {
    const result = await runExec(
      env,
      { ...options, accel, keepLogs: args.flags.has('keep-logs') },
      { stdout: process.stdout, stderr: process.stderr },
      { backend, signal, onEvent: (e) => reporter.event(e) },
    );
    if (result.message) reporter.notice(result.message);
    reporter.event({
      type: 'result',
      exitCode: result.exitCode,
      reason: result.reason,
      timings: result.timings,
    });
    return result.exitCode;
  });
}

function mergeArgs(first: ParsedArgs, second: ParsedArgs): ParsedArgs {
  const values = new Map<string, readonly string[]>(first.values);
  for (const [name, list] of second.values) {
    if (values.has(name) && OPTIONS.find((o) => o.name === name)?.kind === 'value') {
      throw new UsageError(`--${name} was given more than once`, { hint: 'give it once' });
    }
    values.set(name, [...(values.get(name) ?? []), ...list]);
  }
  return { values, flags: new Set([...first.flags, ...second.flags]), rest: second.rest };
}

function printHelp(): number {
  process.stdout.write(HELP);
  return 0;
}

function reportError(err: unknown, debug: boolean): number {
  if (err instanceof Interrupted) {
    return 128 + (os.constants.signals[err.signal] ?? 0);
  }
  const write = (line: string) => process.stderr.write(`${line}\n`);
  if (err instanceof OvmError) {
    write(`openshell-vm: error: ${err.message}`);
    if (err.hint) write(`  hint: ${err.hint}`);
    if (debug) {
      for (let cause = err.cause; cause; cause = (cause as Error).cause) {
        write(`  caused by: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`);
      }
    }
    return err instanceof UsageError ? EXIT.usage : EXIT.failure;
  }
  write(`openshell-vm: internal error: ${err instanceof Error ? err.message : String(err)}`);
  if (debug && err instanceof Error && err.stack) write(err.stack);
  else write('  hint: run again with --debug for details, and report it');
  return EXIT.failure;
}

process.exitCode = await main(process.argv.slice(2));
