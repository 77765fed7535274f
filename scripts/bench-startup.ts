// Start-up benchmark of the CLI: wall time (median, p90) and peak RSS of `--version`, `list` and
// `exec NAME -- /bin/true` into a running instance, each paired with `node -e 0` run in the same
// rounds (the order rotates every round, so drift in host load affects all alike), and the
// resident size of the running instance's supervisor (the detached process that holds the VM).
// The instance (`run --name bench-<pid> --detach -- sleep 600`) is started by this script and
// stopped and deleted at the end, also after an error or Ctrl-C. It boots a VM: run this under
// the machine's VM lock when there is one (`flock /tmp/ovm-vm.lock npm run bench:startup`).
// Prints a JSON document, then a table.
// usage: node scripts/bench-startup.ts [--runs N] [--root CHECKOUT] [--no-exec] [--arch A]
//   --root: the checkout whose bin/openshell-vm is measured (default: this one), to measure an
//           older revision (a `git worktree`) with the same script.
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
const root = path.resolve(option('--root') ?? path.join(import.meta.dirname, '..'));
const cli = path.join(root, 'bin', 'openshell-vm');
if (!fs.existsSync(cli)) fail(`no ${cli} (--root must be an openshell-vm checkout)`);
const withExec = !argv.includes('--no-exec');
const arch = option('--arch');
const instance = `bench-${process.pid}`;

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

/** Runs the CLI for its side effect (start, stop, delete), with its output shown on failure. */
function cliOnce(args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cli, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let started = false;
function cleanUp(): void {
  if (!started) return;
  started = false;
  const stop = cliOnce(['stop', instance]);
  if (stop.status !== 0) process.stderr.write(`bench-startup: stop ${instance} failed: ${stop.stderr}`);
  const del = cliOnce(['delete', instance]);
  if (del.status !== 0) process.stderr.write(`bench-startup: delete ${instance} failed: ${del.stderr}`);
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    process.stderr.write(`bench-startup: ${sig}: stopping and deleting ${instance}\n`);
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

function supervisorPid(): number {
  const r = cliOnce(['status', instance, '--json']);
  if (r.status !== 0) throw new Error(`status ${instance} --json exited ${r.status}: ${r.stderr}`);
  const pid = (JSON.parse(r.stdout) as { pid?: unknown }).pid;
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 1) {
    throw new Error(`status ${instance} --json gave no supervisor pid: ${r.stdout.slice(0, 400)}`);
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
  { name: '--version', cmd: cli, args: ['--version'] },
  { name: 'list', cmd: cli, args: ['list'] },
];
if (withExec)
  cases.push({ name: 'exec -- /bin/true', cmd: cli, args: ['exec', instance, '--', '/bin/true'] });

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

let supervisor: Supervisor | undefined;
let floor: ReturnType<typeof residentKiB> | undefined;
const samples = new Map<string, Sample[]>(cases.map((c) => [c.name, []]));
try {
  if (withExec) {
    started = true;
    const r = cliOnce([
      '-q',
      'run',
      '--name',
      instance,
      ...(arch ? ['--arch', arch] : []),
      '--detach',
      '--',
      'sleep',
      '600',
    ]);
    if (r.status !== 0) throw new Error(`run --name ${instance} --detach exited ${r.status}: ${r.stderr}`);
    const pid = supervisorPid();
    supervisor = { pid, afterStart: residentKiB(pid) };
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
  if (supervisor) supervisor.afterExec = residentKiB(supervisor.pid);
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
const baseline = results['node -e 0'] as ReturnType<typeof summary>;
const TARGETS_MS: Record<string, number> = { '--version': 100, list: 100, 'exec -- /bin/true': 150 };
const head = spawnSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
const result = {
  benchmark: 'CLI start-up: wall time and peak RSS, paired with node -e 0 in the same rounds',
  root,
  revision: head.status === 0 ? head.stdout.trim() : null,
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
          overNodeMs: Number((s.medianMs - baseline.medianMs).toFixed(1)),
          ...(TARGETS_MS[c.name]
            ? { targetMedianMs: TARGETS_MS[c.name], met: s.medianMs <= (TARGETS_MS[c.name] as number) }
            : {}),
        },
      ];
    }),
  ),
  supervisor: supervisor
    ? {
        pid: supervisor.pid,
        rssMiBAfterStart: mib(supervisor.afterStart.rssKiB),
        rssMiBAfterExecs: supervisor.afterExec ? mib(supervisor.afterExec.rssKiB) : null,
        peakRssMiB: mib((supervisor.afterExec ?? supervisor.afterStart).hwmKiB),
        anonRssMiBAfterExecs: mib((supervisor.afterExec ?? supervisor.afterStart).anonKiB),
        fileRssMiBAfterExecs: mib((supervisor.afterExec ?? supervisor.afterStart).fileKiB),
        nodeFloorRssMiB: floor ? mib(floor.rssKiB) : null,
        nodeFloorAnonRssMiB: floor ? mib(floor.anonKiB) : null,
        targetRssMB: 60,
        met: ((supervisor.afterExec ?? supervisor.afterStart).rssKiB * 1024) / 1e6 <= 60,
      }
    : null,
  samplesMs: Object.fromEntries(
    cases.map((c) => [c.name, (samples.get(c.name) ?? []).map((s) => Math.round(s.ms))]),
  ),
};
console.log(JSON.stringify(result, null, 2));
const cell = (v: number | null | undefined, width: number) => String(v ?? '-').padStart(width);
console.log(`
| command (${runs} rounds)      | median ms |  p90 ms | over node ms | peak RSS MiB | target |
|------------------------|-----------|---------|--------------|--------------|--------|`);
for (const c of cases) {
  const s = result.commands[c.name] as ReturnType<typeof summary> & {
    overNodeMs: number;
    targetMedianMs?: number;
    met?: boolean;
  };
  const target = s.targetMedianMs === undefined ? '' : `${s.met ? 'ok' : 'MISS'} ${s.targetMedianMs}`;
  console.log(
    `| ${c.name.padEnd(22)} | ${cell(s.medianMs, 9)} | ${cell(s.p90Ms, 7)} | ${cell(s.overNodeMs, 12)} | ${cell(s.peakRssMiB, 12)} | ${target.padEnd(6)} |`,
  );
}
if (result.supervisor) {
  const s = result.supervisor;
  console.log(
    `\nsupervisor (pid ${s.pid}): RSS ${s.rssMiBAfterStart} MiB after start, ${s.rssMiBAfterExecs} MiB after the execs (${s.anonRssMiBAfterExecs} anonymous, ${s.fileRssMiBAfterExecs} file-backed), peak ${s.peakRssMiB} MiB (target <= ${s.targetRssMB} MB: ${s.met ? 'ok' : 'MISS'}); Node's floor (a socket server, a child, a hash) ${s.nodeFloorRssMiB} MiB (${s.nodeFloorAnonRssMiB} anonymous)`,
  );
}
