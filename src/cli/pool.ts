import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { readEnvironment } from '../config/environment.ts';
import { HostError, UsageError } from '../errors.ts';
import { CLI_NAMES, hostCapacity, type RawExecOptions, resolveVmOptions } from '../options/exec-options.ts';
import { describeKey, POOL_FILES, poolDir, poolIdOf, poolKeyOf } from '../pool/layout.ts';
import { allPoolStatus, listPoolIds, type PoolStatus, recoverPool, stopPool } from '../pool/manage.ts';
import { createPoolRecord, readPool } from '../pool/record.ts';
import { runPoolSupervisor } from '../pool/supervisor.ts';
import { followFile } from '../supervisor/follow.ts';
import { processStartTime } from '../supervisor/identity.ts';
import { type OptionSpec, type ParsedArgs, parseArgs, single } from './args.ts';
import {
  CLI_MAIN,
  type DetachMessage,
  reportDetachedReady,
  SUPERVISOR_NODE_OPTIONS,
  supervisorExitCode,
} from './detach.ts';

export const POOL_HELP = `Usage: openshell-vm pool start [--size N] [--arch ARCH] [--cpus N] [--memory SIZE] [--net MODE]
                          [--rootfs DIR] [--kernel K] [--backend B] [--accel A] [-q]
       openshell-vm pool status [--json]
       openshell-vm pool stop [--timeout S] [--json]

A warm pool of booted microVMs for run. pool start starts a background supervisor that keeps
N microVMs booted, their guest agent connected and warmed by one trivial command, and returns
once all N are ready. A run whose VM options (--arch, --cpus, --memory, --net, --rootfs,
--kernel, --backend, --accel; each the same value after validation) match a pool's takes one of
its VMs (atomically: two runs never share one), runs its command there with its own -p, --env,
--workdir and stdin, and the VM is destroyed afterwards; the pool boots a replacement. A VM
that ran a command is never reused. No matching pool, or none ready: run boots cold, as
always; run --no-pool always boots cold. Pool VMs are instances named pool-ID-N.

  --size N        how many VMs to keep ready (1-16; default 2)
  --timeout S     stop: how long the pool gets to stop its VMs before it is killed (30)
  --json          status/stop: JSON on stdout
`;

const VM_OPTIONS: readonly OptionSpec[] = [
  { name: 'vcpus', kind: 'value', aliases: ['cpus'] },
  { name: 'mem', kind: 'value', aliases: ['memory'] },
  { name: 'arch', kind: 'value' },
  { name: 'accel', kind: 'value' },
  { name: 'net', kind: 'value' },
  { name: 'backend', kind: 'value' },
  { name: 'rootfs', kind: 'value' },
  { name: 'kernel', kind: 'value' },
];

export const POOL_START_OPTIONS: readonly OptionSpec[] = [
  { name: 'size', kind: 'value' },
  ...VM_OPTIONS,
  { name: 'quiet', short: 'q', kind: 'flag' },
  // Internal: this process is the pool's background supervisor.
  { name: 'supervise', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];
export const POOL_STATUS_OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];
export const POOL_STOP_OPTIONS: readonly OptionSpec[] = [
  { name: 'timeout', kind: 'value' },
  ...POOL_STATUS_OPTIONS,
];

const SIZE = { min: 1, max: 16, default: 2 } as const;

export async function poolCommand(argv: readonly string[]): Promise<number> {
  const verb = argv[0];
  if (verb === undefined || verb === '--help' || verb === '-h') {
    process.stdout.write(POOL_HELP);
    return verb === undefined ? 2 : 0;
  }
  const rest = argv.slice(1);
  if (verb === 'start') return poolStart(rest);
  if (verb === 'status') return poolStatusCommand(parse(rest, POOL_STATUS_OPTIONS, 'pool status'));
  if (verb === 'stop') return poolStopCommand(parse(rest, POOL_STOP_OPTIONS, 'pool stop'));
  throw new UsageError(`pool: unknown subcommand '${verb}'`, {
    hint: 'use: openshell-vm pool start|status|stop',
  });
}

function parse(argv: readonly string[], specs: readonly OptionSpec[], command: string): ParsedArgs {
  return parseArgs(argv, specs, false, command);
}

function parseSize(value: string | undefined): number {
  if (value === undefined) return SIZE.default;
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || n < SIZE.min || n > SIZE.max) {
    throw new UsageError(`--size: '${value}' is not a whole number from ${SIZE.min} to ${SIZE.max}`, {
      hint: `give the number of VMs to keep ready, e.g. --size ${SIZE.default}`,
    });
  }
  return n;
}

async function poolStart(argv: readonly string[]): Promise<number> {
  const args = parse(argv, POOL_START_OPTIONS, 'pool start');
  if (args.flags.has('help')) {
    process.stdout.write(POOL_HELP);
    return 0;
  }
  const size = parseSize(single(args, 'size'));
  const raw: Record<string, string> = {};
  for (const o of VM_OPTIONS) {
    const value = single(args, o.name);
    if (value !== undefined) raw[o.name] = value;
  }
  // The one validator run uses: the same options give the same key, and bad ones fail here.
  const { options, warnings } = resolveVmOptions(raw as RawExecOptions, hostCapacity(), CLI_NAMES);
  const key = poolKeyOf(options);
  const id = poolIdOf(key);
  const env = readEnvironment();
  const dir = poolDir(env, id);
  if (args.flags.has('supervise')) return superviseCommand(env, dir, id, size, key, raw);

  const quiet = args.flags.has('quiet');
  for (const w of warnings) process.stderr.write(`openshell-vm: warning: ${w}\n`);
  const existing = await readPool(dir);
  if (existing.kind === 'broken') {
    throw new HostError(`pool ${id}: ${existing.path} ${existing.reason}`, {
      hint: `check who made it, then remove it: rm -r ${dir}`,
    });
  }
  if (existing.kind === 'ok' && existing.alive) {
    process.stdout.write(
      `Pool ${id} is already running (pid ${existing.record.supervisor.pid}, size ${existing.record.size}).\n`,
    );
    return 0;
  }
  const recovered = await recoverPool(env, id);
  if (recovered) process.stderr.write(`openshell-vm: ${recovered}\n`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const log = `${dir}/${POOL_FILES.log}`;
  const err = fs.openSync(log, 'w', 0o600);
  const child = spawn(
    process.execPath,
    [...SUPERVISOR_NODE_OPTIONS, ...process.execArgv, CLI_MAIN, 'pool', 'start', '--supervise', ...argv],
    { detached: true, stdio: ['ignore', err, err, 'ipc'] },
  );
  fs.closeSync(err);
  const stopFollow = followFile(log, (line) => {
    if (!quiet || /error|hint|warning/.test(line)) process.stderr.write(`${line}\n`);
  });
  const outcome = await new Promise<{ ready: string } | { code: number }>((resolve) => {
    child.once('message', (m: DetachMessage) => {
      if (m?.type === 'ready') resolve({ ready: m.text });
    });
    child.once('exit', (code, signal) => resolve({ code: supervisorExitCode(code, signal) }));
  });
  await stopFollow();
  if ('code' in outcome) return outcome.code || 125;
  process.stdout.write(outcome.ready);
  if (child.connected) child.disconnect();
  child.unref();
  return 0;
}

async function superviseCommand(
  env: ReturnType<typeof readEnvironment>,
  dir: string,
  id: string,
  size: number,
  key: ReturnType<typeof poolKeyOf>,
  raw: Record<string, string>,
): Promise<number> {
  const record = {
    version: 1 as const,
    id,
    size,
    key,
    options: raw,
    supervisor: { pid: process.pid, startTime: await processStartTime(process.pid) },
    startedAt: new Date().toISOString(),
  };
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  await createPoolRecord(dir, record);
  const controller = new AbortController();
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, () => controller.abort());
  const t0 = performance.now();
  const log = (line: string) =>
    process.stderr.write(`openshell-vm: [${((performance.now() - t0) / 1000).toFixed(2)}s] ${line}\n`);
  log(`pool ${id}: keeping ${size} microVM(s) ready (${describeKey(key)})`);
  try {
    await runPoolSupervisor({
      env,
      dir,
      record,
      signal: controller.signal,
      log,
      onFull: () =>
        reportDetachedReady(
          `Pool ${id} ready: ${size} microVM(s) (${describeKey(key)}).\n` +
            '  a run with these options takes one; see: openshell-vm pool status; stop: openshell-vm pool stop\n',
        ),
    });
  } finally {
    await fs.promises.rm(dir, { recursive: true, force: true });
  }
  log(`pool ${id} stopped`);
  return 0;
}

function formatStatus(s: PoolStatus): string {
  if (s.status === 'broken') return `pool ${s.id}: broken (${s.reason})\n`;
  if (s.status === 'recovered')
    return `pool ${s.id}: its supervisor was gone: recovered${s.recovered ? `\n  ${s.recovered}` : ''}\n`;
  return (
    `pool ${s.id}: running (pid ${s.supervisor?.pid}), size ${s.size}: ${s.ready.length} ready, ` +
    `${s.booting.length} booting, ${s.inUse.length} in use\n  ${s.key ? describeKey(s.key) : ''}\n` +
    (s.ready.length ? `  ready: ${s.ready.join(' ')}\n` : '')
  );
}

async function poolStatusCommand(args: ParsedArgs): Promise<number> {
  if (args.flags.has('help')) {
    process.stdout.write(POOL_HELP);
    return 0;
  }
  const all = await allPoolStatus(readEnvironment());
  if (args.flags.has('json')) process.stdout.write(`${JSON.stringify({ pools: all }, null, 2)}\n`);
  else process.stdout.write(all.length ? all.map(formatStatus).join('') : 'no pools\n');
  return 0;
}

async function poolStopCommand(args: ParsedArgs): Promise<number> {
  if (args.flags.has('help')) {
    process.stdout.write(POOL_HELP);
    return 0;
  }
  const timeout = single(args, 'timeout') ?? '30';
  if (!/^[0-9]+$/.test(timeout)) {
    throw new UsageError(`--timeout: '${timeout}' is not a whole number of seconds`, {
      hint: 'e.g. --timeout 30',
    });
  }
  const env = readEnvironment();
  const quiet = args.flags.has('quiet') || args.flags.has('json');
  const results = [];
  for (const id of await listPoolIds(env)) {
    const r = await stopPool(env, id, Number(timeout) * 1000, (m) => {
      if (!quiet) process.stderr.write(`openshell-vm: ${m}\n`);
    });
    results.push({ id, ...r });
    if (!args.flags.has('json')) {
      process.stdout.write(
        `pool ${id}: ${r.wasRunning ? (r.forced ? 'killed' : 'stopped') : 'was not running'}\n`,
      );
      if (r.recovered) process.stdout.write(`  ${r.recovered}\n`);
    }
  }
  if (args.flags.has('json')) process.stdout.write(`${JSON.stringify({ stopped: results }, null, 2)}\n`);
  else if (!results.length) process.stdout.write('no pools\n');
  return 0;
}
