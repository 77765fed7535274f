// Start-up benchmark of the CLI: wall time (median, p90) and peak RSS of `--version`, `list` and
// `exec NAME -- /bin/true` into a running instance, each paired with `node -e 0` run in the same
// rounds (the order rotates every round, so drift in host load affects all alike), and the
// resident size of the running instance's supervisor (the detached process that holds the VM).
// The instance (`run --name bench-<pid> --detach -- sleep 600`) is started by this script (once
// before, as a warm-up of Node's compile cache) and stopped and deleted at the end, also after an
// error or Ctrl-C. It boots a VM: run this under
// the machine's VM lock when there is one (`flock /tmp/ovm-vm.lock npm run bench:startup`).
// With --baseline, a second checkout (an older revision) is measured in the same rounds, with its
// own instance and supervisor, so a before/after comparison shares the host's conditions.
// Prints a JSON document, then a table.
// usage: node scripts/bench-startup.ts [--runs N] [--root CHECKOUT] [--baseline CHECKOUT] [--no-exec] [--arch A]
//   --root: the checkout whose bin/openshell-vm is measured (default: this one), to measure an
//           older revision (a `git worktree`) with the same script.
//   --baseline: another checkout measured beside --root in the same run (its rows are marked
//           "baseline"); `git worktree add /tmp/before HEAD~1` makes one.
//   --no-exec: measure only --version and list (no VM).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scriptArgs } from './bench-args.ts';

const { argv, option, fail } = scriptArgs('bench-startup');
const runs = Number(option('--runs') ?? 20);
if (!Number.isInteger(runs) || runs < 1 || runs > 1000)
  fail(`--runs: expected 1..1000, got ${option('--runs')}`);
/** A checkout under test: its CLI and the instance this run starts with it. */
interface Checkout {
  readonly label: string;
  readonly root: string;
  readonly cli: string;
  readonly instance: string;
}
function checkout(label: string, dir: string, instance: string, flag: string): Checkout {
  const root = path.resolve(dir);
  const cli = path.join(root, 'bin', 'openshell-vm');
  if (!fs.existsSync(cli)) fail(`no ${cli} (${flag} must be an openshell-vm checkout)`);
  return { label, root, cli, instance };
}
const main = checkout(
  'root',
  option('--root') ?? path.join(import.meta.dirname, '..'),
  `bench-${process.pid}`,
  '--root',
);
const baselineDir = option('--baseline');
const baseline = baselineDir
  ? checkout('baseline', baselineDir, `bench-${process.pid}-base`, '--baseline')
  : undefined;
const checkouts: readonly Checkout[] = baseline ? [main, baseline] : [main];
const { root } = main;
const withExec = !argv.includes('--no-exec');
const arch = option('--arch');

/** GNU time's %M (peak RSS, KiB) when it is there; else peak RSS is not reported. */
const TIME = '/usr/bin/time';
const hasGnuTime = spawnSync(TIME, ['-f', '%M', 'true'], { encoding: 'utf8' }).status === 0;

type Sample = { readonly ms: number; readonly peakKiB: number | undefined };

/** Runs `cmd args` to its exit (stdout and stderr discarded unless it fails) and measures it. */
function measure(cmd: string, args: readonly string[], expectCode = 0): Promise<Sample> {
  const rssFile = path.join(os.tmpdir(), `ovm-bench-startup-${process.pid}.rss`);
  const [file, fileArgs] = hasGnuTime
    ? [TIME, ['-q', '-f', '%M', '-o', rssFile, cmd, ...args]]
    : [cmd, [...args]];
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(file, fileArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4000);
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== expectCode) {
        reject(
          new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal} (expected ${expectCode}): ${stderr}`),
        );
        return;
      }
      let peakKiB: number | undefined;
      if (hasGnuTime) {
        peakKiB = Number(fs.readFileSync(rssFile, 'utf8').trim().split('\n').at(-1));
        fs.rmSync(rssFile, { force: true });
      }
      resolve({ ms, peakKiB });
    });
  });
}

/** Runs a checkout's CLI for its side effect (start, stop, delete), with its output shown on failure. */
function cliOnce(
  c: Checkout,
  args: readonly string[],
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(c.cli, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const started = new Set<Checkout>();
function stopAndDelete(c: Checkout): void {
  started.delete(c);
  const stop = cliOnce(c, ['stop', c.instance]);
  if (stop.status !== 0) process.stderr.write(`bench-startup: stop ${c.instance} failed: ${stop.stderr}`);
  const del = cliOnce(c, ['delete', c.instance]);
  if (del.status !== 0) process.stderr.write(`bench-startup: delete ${c.instance} failed: ${del.stderr}`);
}
function cleanUp(): void {
  for (const c of started) stopAndDelete(c);
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    process.stderr.write(
      `bench-startup: ${sig}: stopping and deleting ${[...started].map((c) => c.instance)}\n`,
    );
    cleanUp();
    process.exit(128 + (os.constants.signals[sig] ?? 0));
  });
}

/**
 * VmRSS and VmHWM (KiB) of a pid, from /proc, and the RSS split into anonymous memory (heap, JIT
 * code, buffers: the process's own) and file-backed pages (mostly the node binary's code and
 * read-only data, shared with every other Node process through the page cache).
 */
function residentKiB(pid: number): { rssKiB: number; hwmKiB: number; anonKiB: number; fileKiB: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(m[1]);
  };
  return {
    rssKiB: field('VmRSS'),
    hwmKiB: field('VmHWM'),
    anonKiB: field('RssAnon'),
    fileKiB: field('RssFile'),
  };
}

function supervisorPid(c: Checkout): number {
  const r = cliOnce(c, ['status', c.instance, '--json']);
  if (r.status !== 0) throw new Error(`status ${c.instance} --json exited ${r.status}: ${r.stderr}`);
  const pid = (JSON.parse(r.stdout) as { pid?: unknown }).pid;
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 1) {
    throw new Error(`status ${c.instance} --json gave no supervisor pid: ${r.stdout.slice(0, 400)}`);
  }
  return pid;
}

/**
 * The supervisor's own Node flags (src/cli/detach.ts), which the floor process is run with too;
 * none for a revision that has no such list.
 */
const SUPERVISOR_FLAGS: readonly string[] = await import(path.join(root, 'src', 'cli', 'detach.ts')).then(
  (m: { SUPERVISOR_NODE_OPTIONS?: readonly string[] }) => m.SUPERVISOR_NODE_OPTIONS ?? [],
  () => [],
);

const cases: { readonly name: string; readonly cmd: string; readonly args: readonly string[] }[] = [
  { name: 'node -e 0', cmd: process.execPath, args: ['-e', '0'] },
];
/** A row's name: the command, marked for the baseline checkout. */
const rowName = (c: Checkout, name: string) => (c === main ? name : `${name} (baseline)`);
for (const c of checkouts) {
  cases.push({ name: rowName(c, '--version'), cmd: c.cli, args: ['--version'] });
  cases.push({ name: rowName(c, 'list'), cmd: c.cli, args: ['list'] });
  if (withExec)
    cases.push({
      name: rowName(c, 'exec -- /bin/true'),
      cmd: c.cli,
      args: ['exec', c.instance, '--', '/bin/true'],
    });
}

type Supervisor = {
  pid: number;
  afterStart: ReturnType<typeof residentKiB>;
  afterExec?: ReturnType<typeof residentKiB>;
};
/**
 * Node's own floor for a resident process like the supervisor: `node` with a Unix socket server
 * that has echoed one connection, a child process and a SHA-256, nothing else loaded; its RSS a
 * second later. The supervisor's target is read against this.
 */
const FLOOR_SCRIPT = `
const net = require('node:net'), fs = require('node:fs'), path = require('node:path');
const sock = path.join(require('node:os').tmpdir(), 'ovm-bench-floor-' + process.pid + '.sock');
const child = require('node:child_process').spawn('sleep', ['600'], { stdio: 'ignore' });
require('node:crypto').createHash('sha256').update(Buffer.alloc(1 << 20, 7)).digest();
const server = net.createServer((c) => c.pipe(c)).listen(sock, () => {
  const c = net.connect(sock, () => c.write('x'.repeat(4096)));
  c.once('data', () => { c.end(); setTimeout(() => process.stdout.write('ready\\n'), 1000); });
});
process.on('SIGTERM', () => { child.kill(); server.close(); fs.rmSync(sock, { force: true }); process.exit(0); });
`;

async function nodeFloorKiB(): Promise<ReturnType<typeof residentKiB>> {
  const child = spawn(process.execPath, [...SUPERVISOR_FLAGS, '-e', FLOOR_SCRIPT], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => d.includes('ready') && resolve());
      child.once('exit', (code) => reject(new Error(`the floor process exited ${code} before it was ready`)));
    });
    return residentKiB(child.pid as number);
  } finally {
    child.kill('SIGTERM');
  }
}

const supervisors = new Map<Checkout, Supervisor>();
let floor: ReturnType<typeof residentKiB> | undefined;
const samples = new Map<string, Sample[]>(cases.map((c) => [c.name, []]));
try {
  if (withExec) {
    for (const c of checkouts) {
      const start = () => {
        started.add(c);
        const r = cliOnce(c, [
          '-q',
          'run',
          '--name',
          c.instance,
          ...(arch ? ['--arch', arch] : []),
          '--detach',
          '--',
          'sleep',
          '600',
        ]);
        if (r.status !== 0)
          throw new Error(`run --name ${c.instance} --detach exited ${r.status}: ${r.stderr}`);
      };
      // A warm-up instance first: the first supervisor after a source change compiles (and, from
      // the sources, type-strips) its modules into Node's compile cache, and keeps what that took
      // (~13 MiB more, measured) for its life. Measured is the supervisor of every later start.
      start();
      stopAndDelete(c);
      start();
      const pid = supervisorPid(c);
      supervisors.set(c, { pid, afterStart: residentKiB(pid) });
    }
    floor = await nodeFloorKiB();
  }
  // One warm-up of each, not counted (page cache, compile cache).
  for (const c of cases) await measure(c.cmd, c.args);
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < cases.length; k++) {
      const c = cases[(round + k) % cases.length] as (typeof cases)[number];
      samples.get(c.name)?.push(await measure(c.cmd, c.args));
    }
  }
  for (const sv of supervisors.values()) sv.afterExec = residentKiB(sv.pid);
} finally {
  cleanUp();
}

const quantile = (sorted: readonly number[], q: number) => {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (i - lo);
};
const mib = (kib: number) => Number((kib / 1024).toFixed(1));
const summary = (xs: readonly Sample[]) => {
  const ms = xs.map((s) => s.ms).sort((a, b) => a - b);
  const peaks = xs.map((s) => s.peakKiB).filter((p): p is number => p !== undefined);
  return {
    medianMs: Number(quantile(ms, 0.5).toFixed(1)),
    p90Ms: Number(quantile(ms, 0.9).toFixed(1)),
    minMs: Number((ms[0] as number).toFixed(1)),
    peakRssMiB: peaks.length
      ? mib(
          quantile(
            [...peaks].sort((a, b) => a - b),
            0.5,
          ),
        )
      : null,
  };
};
const results = Object.fromEntries(cases.map((c) => [c.name, summary(samples.get(c.name) ?? [])]));
const nodeRow = results['node -e 0'] as ReturnType<typeof summary>;
const TARGET_MS: Record<string, number> = { '--version': 100, list: 100, 'exec -- /bin/true': 150 };
const TARGETS_MS: Record<string, number> = Object.fromEntries(
  checkouts.flatMap((c) => Object.entries(TARGET_MS).map(([name, ms]) => [rowName(c, name), ms])),
);
const revision = (dir: string) => {
  const head = spawnSync('git', ['-C', dir, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  return head.status === 0 ? head.stdout.trim() : null;
};
const mb = (kib: number) => (kib * 1024) / 1e6;
const supervisorResult = (sv: Supervisor) => {
  const last = sv.afterExec ?? sv.afterStart;
  return {
    pid: sv.pid,
    rssMiBAfterStart: mib(sv.afterStart.rssKiB),
    rssMiBAfterExecs: sv.afterExec ? mib(sv.afterExec.rssKiB) : null,
    rssMBAfterExecs: Number(mb(last.rssKiB).toFixed(1)),
    peakRssMiB: mib(last.hwmKiB),
    anonRssMiBAfterExecs: mib(last.anonKiB),
    fileRssMiBAfterExecs: mib(last.fileKiB),
    nodeFloorRssMiB: floor ? mib(floor.rssKiB) : null,
    nodeFloorAnonRssMiB: floor ? mib(floor.anonKiB) : null,
    targetRssMB: 60,
    met: mb(last.rssKiB) <= 60,
  };
};
const mainSupervisor = supervisors.get(main);
const baseSupervisor = baseline ? supervisors.get(baseline) : undefined;
const result = {
  benchmark: 'CLI start-up: wall time and peak RSS, paired with node -e 0 in the same rounds',
  root,
  revision: revision(root),
  baseline: baseline ? { root: baseline.root, revision: revision(baseline.root) } : null,
  runs,
  host: {
    cpus: os.availableParallelism(),
    node: process.version,
    peakRss: hasGnuTime ? 'GNU time %M' : null,
  },
  commands: Object.fromEntries(
    cases.map((c) => {
      const s = results[c.name] as ReturnType<typeof summary>;
      return [
        c.name,
        {
          ...s,
          overNodeMs: Number((s.medianMs - nodeRow.medianMs).toFixed(1)),
          ...(TARGETS_MS[c.name]
            ? { targetMedianMs: TARGETS_MS[c.name], met: s.medianMs <= (TARGETS_MS[c.name] as number) }
            : {}),
        },
      ];
    }),
  ),
  supervisor: mainSupervisor ? supervisorResult(mainSupervisor) : null,
  baselineSupervisor: baseSupervisor ? supervisorResult(baseSupervisor) : null,
  samplesMs: Object.fromEntries(
    cases.map((c) => [c.name, (samples.get(c.name) ?? []).map((s) => Math.round(s.ms))]),
  ),
};
console.log(JSON.stringify(result, null, 2));
const NAME_WIDTH = Math.max(22, ...cases.map((c) => c.name.length));
const cell = (v: number | null | undefined, width: number) => String(v ?? '-').padStart(width);
console.log(`
| ${`command (${runs} rounds)`.padEnd(NAME_WIDTH)} | median ms |  p90 ms | over node ms | peak RSS MiB | target |
|${'-'.repeat(NAME_WIDTH + 2)}|-----------|---------|--------------|--------------|--------|`);
for (const c of cases) {
  const s = result.commands[c.name] as ReturnType<typeof summary> & {
    overNodeMs: number;
    targetMedianMs?: number;
    met?: boolean;
  };
  const target = s.targetMedianMs === undefined ? '' : `${s.met ? 'ok' : 'MISS'} ${s.targetMedianMs}`;
  console.log(
    `| ${c.name.padEnd(NAME_WIDTH)} | ${cell(s.medianMs, 9)} | ${cell(s.p90Ms, 7)} | ${cell(s.overNodeMs, 12)} | ${cell(s.peakRssMiB, 12)} | ${target.padEnd(6)} |`,
  );
}
for (const [label, s] of [
  ['supervisor', result.supervisor],
  ['baseline supervisor', result.baselineSupervisor],
] as const) {
  if (!s) continue;
  console.log(
    `\n${label} (pid ${s.pid}): RSS ${s.rssMiBAfterStart} MiB after start, ${s.rssMiBAfterExecs} MiB (${s.rssMBAfterExecs} MB) after the execs (${s.anonRssMiBAfterExecs} anonymous, ${s.fileRssMiBAfterExecs} file-backed), peak ${s.peakRssMiB} MiB (target <= ${s.targetRssMB} MB: ${s.met ? 'ok' : 'MISS'}); Node's floor (a socket server, a child, a hash) ${s.nodeFloorRssMiB} MiB (${s.nodeFloorAnonRssMiB} anonymous)`,
  );
}
