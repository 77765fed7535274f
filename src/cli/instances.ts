import fs from 'node:fs';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { readEnvironment } from '../config/environment.ts';
import { HostError, OvmError, UsageError } from '../errors.ts';
import { describeVersion } from '../gateway/health.ts';
import { pathExists } from '../host/fs.ts';
import {
  deleteInstance,
  type InstanceStatus,
  inspectInstance,
  listInstanceNames,
  requireInstance,
  stopInstance,
} from '../instance/lifecycle.ts';
import { instanceDir, parseInstanceName } from '../instance/runs.ts';
import { LOG_SOURCES, LOGS_DIR, type LogSource, loadState, readState } from '../instance/state.ts';
import { parseCount } from '../options/units.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import { type OptionSpec, type ParsedArgs, parseArgs, single } from './args.ts';
import { DELETE_HELP, LIST_HELP, LOGS_HELP, STATUS_HELP, STOP_HELP } from './help.ts';
import { Reporter } from './reporter.ts';
import { withSignals } from './signals.ts';

function nameOf(args: ParsedArgs, command: string): string {
  const positional = args.rest[0];
  const flag = single(args, 'name');
  if (positional && flag && positional !== flag) {
    throw new UsageError(`${command}: two names given ('${positional}' and --name ${flag})`, {
      hint: 'give one',
    });
  }
  if (args.rest.length > 1) {
    throw new UsageError(`${command}: unexpected argument '${args.rest[1]}'`, {
      hint: `use: openshell-vm ${command} [NAME]`,
    });
  }
  return parseInstanceName(positional ?? flag);
}

/** Options before and after the NAME word: `status gw --json` and `status --json gw`. */
const JSON_FLAG: OptionSpec = { name: 'json', kind: 'flag' };
const TIMEOUT: OptionSpec = { name: 'timeout', kind: 'value' };

function parse(argv: readonly string[], command: string, extra: readonly OptionSpec[]): ParsedArgs {
  const specs: OptionSpec[] = [{ name: 'name', kind: 'value' }, ...extra];
  const first = parseArgs(argv, specs, true, command);
  if (!first.rest.length) return first;
  const second = parseArgs(first.rest.slice(1), specs, true, command);
  const values = new Map(first.values);
  for (const [k, v] of second.values) {
    if (values.has(k)) throw new UsageError(`--${k} was given more than once`, { hint: 'give it once' });
    values.set(k, v);
  }
  return {
    values,
    flags: new Set([...first.flags, ...second.flags]),
    rest: [first.rest[0] as string, ...second.rest],
  };
}

function help(text: string): number {
  process.stdout.write(text);
  return 0;
}

function timeoutOf(args: ParsedArgs): number {
  return parseCount('--timeout', single(args, 'timeout') ?? '30', { min: 1, max: 3600 }, 'seconds') * 1000;
}

export async function statusCommand(argv: readonly string[]): Promise<number> {
  const args = parse(argv, 'status', [JSON_FLAG]);
  if (args.flags.has('help')) return help(STATUS_HELP);
  const name = nameOf(args, 'status');
  const env = readEnvironment();
  await requireInstance(env, name);
  const status = await describeInstance(env, name);
  if (status.reaped) process.stderr.write(`openshell-vm: ${status.reaped}\n`);
  process.stdout.write(
    args.flags.has('json') ? `${JSON.stringify(toJson(status), null, 2)}\n` : render(status),
  );
  return 0;
}

export async function listCommand(argv: readonly string[]): Promise<number> {
  const args = parse(argv, 'list', [JSON_FLAG]);
  if (args.flags.has('help')) return help(LIST_HELP);
  if (args.rest.length)
    throw new UsageError(`list: unexpected argument '${args.rest[0]}'`, {
      hint: 'use: openshell-vm list [--json]',
    });
  const env = readEnvironment();
  // Every instance is inspected at once (each its own directory, lock and agent): a list of
  // several running instances waits for the slowest answer, not for the sum of them.
  const all = await Promise.all(
    (await listInstanceNames(env)).map((name) =>
      // One instance that cannot be read does not hide the others: it is listed as broken.
      describeInstance(env, name).catch((err: unknown): ShownStatus => {
        if (!(err instanceof OvmError) && !isErrnoError(err)) throw err;
        const hint = err instanceof OvmError && err.hint ? ` (${err.hint})` : '';
        return { name, status: 'broken', problems: [`${(err as Error).message}${hint}`], hasRootfs: false };
      }),
    ),
  );
  for (const status of all) {
    if (status.reaped) process.stderr.write(`openshell-vm: ${status.name}: ${status.reaped}\n`);
  }
  if (args.flags.has('json')) {
    process.stdout.write(`${JSON.stringify(all.map(toJson), null, 2)}\n`);
    return 0;
  }
  if (!all.length) {
    process.stdout.write('no instances (start one: openshell-vm prepare-rootfs, then openshell-vm)\n');
    return 0;
  }
  const rows = all.map((s) => [
    s.name,
    s.status === 'broken' ? `broken: ${s.problems.join('; ')}` : s.status,
    s.state?.mode ?? (s.hasRootfs ? 'gateway' : '-'),
    s.state ? String(s.state.supervisor.pid) : '-',
    s.state?.endpoints?.gateway ?? s.state?.forwards.join(', ') ?? '-',
  ]);
  const head = ['NAME', 'STATUS', 'MODE', 'PID', 'ENDPOINT / FORWARDS'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  for (const r of [head, ...rows]) {
    process.stdout.write(
      `${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')}\n`,
    );
  }
  return 0;
}

export async function stopCommand(argv: readonly string[]): Promise<number> {
  const args = parse(argv, 'stop', [TIMEOUT, JSON_FLAG]);
  if (args.flags.has('help')) return help(STOP_HELP);
  const name = nameOf(args, 'stop');
  const timeoutMs = timeoutOf(args);
  const env = readEnvironment();
  await requireInstance(env, name);
  const reporter = new Reporter({ stderr: process.stderr, quiet: false, eventsFile: undefined });
  const result = await stopInstance(env, name, timeoutMs, (m) => reporter.progress(m));
  if (result.reaped) reporter.notice(result.reaped);
  if (result.removedBroken) reporter.notice(`removed the broken state file ${result.removedBroken}`);
  if (args.flags.has('json')) {
    const { wasRunning, forced } = result;
    process.stdout.write(`${JSON.stringify({ name, wasRunning, forced })}\n`);
  } else if (!result.wasRunning) {
    process.stdout.write(`instance '${name}' is not running\n`);
  } else {
    process.stdout.write(
      `instance '${name}' stopped${result.forced ? ' (killed: it did not stop in time)' : ''}\n`,
    );
  }
  return 0;
}

export async function deleteCommand(argv: readonly string[]): Promise<number> {
  const args = parse(argv, 'delete', [TIMEOUT, JSON_FLAG]);
  if (args.flags.has('help')) return help(DELETE_HELP);
  const name = nameOf(args, 'delete');
  const env = readEnvironment();
  const reporter = new Reporter({ stderr: process.stderr, quiet: false, eventsFile: undefined });
  // Only delete loads the presets' cleanups (the kubeconfig and OpenShell file code).
  const { PRESET_CLEANUPS } = await import('../presets/index.ts');
  const result = await deleteInstance(env, name, {
    timeoutMs: timeoutOf(args),
    cleanups: PRESET_CLEANUPS,
    onProgress: (m) => reporter.progress(m),
    warn: (m) => reporter.warn(m),
  });
  process.stdout.write(
    args.flags.has('json')
      ? `${JSON.stringify({ name, deleted: true, stopped: result.stopped, removed: result.removed })}\n`
      : `instance '${name}' deleted${result.stopped ? ' (stopped first)' : ''}; removed:\n${result.removed.map((p) => `  ${p}\n`).join('')}`,
  );
  return 0;
}

export async function logsCommand(argv: readonly string[]): Promise<number> {
  const args = parse(argv, 'logs', [
    { name: 'source', kind: 'value' },
    { name: 'follow', short: 'f', kind: 'flag' },
  ]);
  if (args.flags.has('help')) return help(LOGS_HELP);
  const name = nameOf(args, 'logs');
  const source = (single(args, 'source') ?? 'console') as LogSource;
  if (!(LOG_SOURCES as readonly string[]).includes(source)) {
    throw new UsageError(`--source: unknown log '${source}'`, {
      hint: `use one of: ${LOG_SOURCES.join(', ')}`,
    });
  }
  const env = readEnvironment();
  const dir = await requireInstance(env, name);
  const state = await readState(dir);
  const stopped = path.join(dir, LOGS_DIR);
  const file = state?.logs[source] ?? path.join(stopped, await stoppedLogName(stopped, source));
  if (!fs.existsSync(file)) {
    throw new HostError(`instance '${name}' has no ${source} log yet (${file})`, {
      hint:
        source === 'supervisor' || source === 'output'
          ? 'only instances started with --detach have it'
          : 'start it first',
    });
  }
  if (!args.flags.has('follow')) {
    await new Promise<void>((resolve, reject) => {
      fs.createReadStream(file).on('error', reject).on('end', resolve).pipe(process.stdout, { end: false });
    });
    return 0;
  }
  const reporter = new Reporter({ stderr: process.stderr, quiet: true, eventsFile: undefined });
  // Ctrl-C, the instance ending and the reader going away end it; any other error is reported.
  const { followLog } = await import('./follow-log.ts');
  await withSignals(reporter, 'stopped following', (signal) =>
    followLog({
      file,
      out: process.stdout,
      signal,
      // Following ends with the instance: its supervisor gone, nothing more will be written.
      isRunning: async () => !state || (await loadState(dir)).kind === 'ok',
    }),
  );
  return 0;
}

/**
 * A stopped instance's log file name for `source`: `<source>.log`, and for the VMM's own log the
 * one of whichever backend last ran it (each backend's features name its file).
 */
async function stoppedLogName(stopped: string, source: LogSource): Promise<string> {
  if (source !== 'vmm') return `${source}.log`;
  // The VMM registry loads every backend's module: only `logs --source vmm` of a stopped instance needs it.
  const { backendFeatures } = await import('../vmm/registry.ts');
  const names = Object.values(backendFeatures()).map((features) => features.vmmLog);
  return names.find((name) => fs.existsSync(path.join(stopped, name))) ?? (names[0] as string);
}

/** An instance's status, and whether its own gateway rootfs is built (list's MODE, status's rootfs line). */
interface ShownStatus extends InstanceStatus {
  readonly hasRootfs: boolean;
}

async function describeInstance(env: HostEnvironment, name: string): Promise<ShownStatus> {
  const status = await inspectInstance(env, name);
  // The instance's own rootfs (rootfsDir in src/rootfs/layout.ts), built when its record is there.
  const record = path.join(instanceDir(env, name), 'rootfs', ROOTFS_PATHS.record);
  return { ...status, hasRootfs: await pathExists(record) };
}

function toJson(s: ShownStatus): Record<string, unknown> {
  const st = s.state;
  return {
    name: s.name,
    status: s.status,
    problems: s.problems,
    ...(s.busy ? { busy: s.busy } : {}),
    hasRootfs: s.hasRootfs,
    ...(st
      ? {
          mode: st.mode,
          pid: st.supervisor.pid,
          detached: st.detached,
          backend: st.backend,
          accel: st.accel,
          arch: st.arch,
          vcpus: st.vcpus,
          memMib: st.memMib,
          startedAt: st.startedAt,
          readyAt: st.readyAt,
          forwards: st.forwards,
          endpoints: st.endpoints ?? {},
          processes: st.processes,
          sockets: st.sockets,
          logs: st.logs,
          command: st.command,
          clockDiffMs: s.clockDiffMs,
        }
      : {}),
  };
}

function render(s: ShownStatus): string {
  const st = s.state;
  const lines = [`${s.name}: ${s.status}${s.busy ? ` (${s.busy})` : ''}`];
  for (const p of s.problems) lines.push(`  problem    ${p}`);
  if (st) {
    const up = Math.round((Date.now() - Date.parse(st.startedAt)) / 1000);
    lines.push(
      `  mode       ${st.mode}${st.command ? ` (${st.command.join(' ')})` : ''}${st.detached ? ', detached' : ''}`,
    );
    lines.push(
      `  vm         ${st.backend}/${st.accel} ${st.arch}, ${st.vcpus} vCPU, ${st.memMib} MiB, up ${up} s`,
    );
    lines.push(`  supervisor openshell-vm pid ${st.supervisor.pid}`);
    for (const p of st.processes) lines.push(`  process    ${p.name} pid ${p.pid}`);
    for (const f of st.forwards) lines.push(`  forward    ${f}`);
    const e = st.endpoints ?? {};
    if (e.gateway) lines.push(`  endpoint   ${e.gateway}`);
    if (e.gatewayVersion !== undefined)
      lines.push(`  health     HEALTHY at ready (${describeVersion(e.gatewayVersion)})`);
    if (e.kubeApi) lines.push(`  kube API   ${e.kubeApi}`);
    if (e.kubeconfig) lines.push(`  kubeconfig ${e.kubeconfig}`);
    if (e.mtlsDir) lines.push(`  mTLS       ${e.mtlsDir}`);
    if (s.clockDiffMs !== undefined)
      lines.push(
        `  clock      guest ${s.clockDiffMs >= 0 ? '+' : ''}${(s.clockDiffMs / 1000).toFixed(3)} s from the host`,
      );
    lines.push(`  logs       openshell-vm logs ${s.name} [--source console|gvproxy|virtiofsd|vmm]`);
  } else if (s.status === 'stopped') {
    lines.push(`  rootfs     ${s.hasRootfs ? 'built' : 'not built'}`);
  }
  return `${lines.join('\n')}\n`;
}

function isErrnoError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
}
