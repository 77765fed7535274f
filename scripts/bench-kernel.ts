// Guest kernel benchmark: the built kernel (`openshell-vm kernel build`: everything built in, no
// modules) against Debian's cloud kernel (modules loaded by the initramfs), paired: each round
// boots both, the order alternating, so drift in host load affects both alike.
// - run: `openshell-vm run --net none -- /bin/true`; per run the wall time to the CLI's exit and,
//   from its events, the time to "command started in the guest".
// - gateway (skip with --no-gateway): ONE gateway rootfs built with the stand-in k3s (as
//   test/e2e/gateway.test.ts does; it carries the Debian kernel's modules, which the built kernel
//   does not check for, so both kernels boot it), booted until Ready, then stopped with SIGINT
//   (exit 0, no helper process or socket left). Per boot, from the guest console log's uptime
//   stamps (so host load matters less): "ovm-init: started" (kernel and initramfs done) to
//   "ovm-gateway: starting k3s" (the gateway init's capability check and state preparation),
//   plus the host wall time to Ready.
// One warm-up of each kernel first (it builds each kernel's initramfs; the gateway's first boot
// runs the host bootstrap), not counted. Everything runs in a private data, runtime, config and
// home directory, removed at the end. It boots VMs: run it under the machine's VM lock
// (`flock /tmp/ovm-vm.lock npm run bench:kernel`). Prints a JSON document, then tables.
// usage: node scripts/bench-kernel.ts [--runs N] [--arch A] [--cache DIR] [--no-gateway]
//   --cache: the openshell-vm cache holding the built kernel (default: the kernel e2e test's,
//            <XDG_CACHE_HOME>/openshell-vm-e2e-kernel, whose host inputs link to the shared cache;
//            `OPENSHELL_VM_CACHE_DIR=DIR openshell-vm kernel build` fills another).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { STAND_IN_BUILD } from '../test/fixtures/stand-in.ts';
import { scriptArgs } from './bench-args.ts';

const { argv, option, fail } = scriptArgs('bench-kernel');
const runs = Number(option('--runs') ?? 1);
if (!Number.isInteger(runs) || runs < 1 || runs > 100)
  fail(`--runs: expected 1..100, got ${option('--runs')}`);
const withGateway = !argv.includes('--no-gateway');
const arch = option('--arch') ?? (os.arch() === 'arm64' ? 'aarch64' : 'x86_64');
const cache = path.resolve(
  option('--cache') ??
    path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'openshell-vm-e2e-kernel'),
);
const cli = path.join(import.meta.dirname, '..', 'bin', 'openshell-vm');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-kernel-'));
process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));
// The sandbox of test/e2e/harness.ts: private data, runtime, home and config directories (the
// gateway's bootstrap writes OpenShell files and a kubeconfig there); the cache holding the kernel.
const dataDir = path.join(work, 'data');
const runtimeDir = path.join(work, 'rt');
for (const d of [runtimeDir, path.join(work, 'home')]) fs.mkdirSync(d, { recursive: true });
const baseEnv: NodeJS.ProcessEnv = {
  ...process.env,
  OPENSHELL_VM_CACHE_DIR: cache,
  OPENSHELL_VM_DATA_DIR: dataDir,
  XDG_RUNTIME_DIR: runtimeDir,
  HOME: path.join(work, 'home'),
  XDG_CONFIG_HOME: path.join(work, 'config'),
};

type Kernel = 'built' | 'debian';
interface Event {
  readonly type?: string;
  readonly message?: string;
  readonly elapsedMs?: number;
  readonly action?: string;
  readonly process?: { name: string; pid: number };
}
interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly wallMs: number;
  readonly events: readonly Event[];
  /** Host time from the spawn to the first event `untilEvent` matched (it is then sent SIGINT). */
  readonly matchedMs: number | undefined;
}

const readEvents = (file: string): Event[] =>
  fs.existsSync(file)
    ? fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Event)
    : [];

/** Runs the CLI with an events file; with `untilEvent`, sends SIGINT when an event matches. */
function runCli(
  args: readonly string[],
  kernel: Kernel | undefined,
  events: string,
  untilEvent?: (e: Event) => boolean,
): Promise<CliResult> {
  const env = { ...baseEnv, ...(kernel ? { OPENSHELL_VM_KERNEL: kernel } : {}) };
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const since = () => Number(process.hrtime.bigint() - start) / 1e6;
    const child = spawn(cli, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let matchedMs: number | undefined;
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4000);
    });
    // Polled as test/e2e/harness.ts does (every 20 ms): Ready is seen within that.
    const watcher = untilEvent
      ? setInterval(() => {
          if (matchedMs === undefined && readEvents(events).some(untilEvent)) {
            matchedMs = since();
            child.kill('SIGINT');
          }
        }, 20)
      : undefined;
    const timer = setTimeout(() => child.kill('SIGKILL'), 900_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const wallMs = since();
      clearTimeout(timer);
      if (watcher) clearInterval(watcher);
      resolve({ code, signal, stderr, wallMs, events: readEvents(events), matchedMs });
    });
  });
}

const kernelOf = (events: readonly Event[]) =>
  events.find((e) => /guest artifacts/.test(e.message ?? ''))?.message;

/** The built kernel's absence, said with the command that builds it into this cache. */
function failed(what: string, kernel: Kernel, r: CliResult): Error {
  if (kernel === 'built' && /built kernel/.test(r.stderr))
    return new Error(
      `${what}: no usable built kernel in ${cache}:\n${r.stderr}\nbuild it (about 15 min on 2 cores) with:\n` +
        `  flock /tmp/ovm-vm.lock env OPENSHELL_VM_CACHE_DIR=${cache} bin/openshell-vm kernel build --arch ${arch}\n` +
        `or pass --cache DIR for a cache that holds one`,
    );
  return new Error(`${what} with the ${kernel} kernel exited ${r.code ?? r.signal}:\n${r.stderr}`);
}

interface RunSample {
  readonly kernel: Kernel;
  readonly wallMs: number;
  /** From the CLI's events: the guest agent started the command. */
  readonly commandStartedMs: number | undefined;
  readonly kernelLine: string | undefined;
}

async function runOnce(kernel: Kernel, n: number): Promise<RunSample> {
  const events = path.join(work, `run-${kernel}-${n}.ndjson`);
  const r = await runCli(
    ['run', '--events', events, '--arch', arch, '--net', 'none', '--', '/bin/true'],
    kernel,
    events,
  );
  if (r.code !== 0) throw failed('run', kernel, r);
  const started = r.events.find((e) => /command started in the guest/.test(e.message ?? ''));
  return { kernel, wallMs: r.wallMs, commandStartedMs: started?.elapsedMs, kernelLine: kernelOf(r.events) };
}

interface GatewaySample {
  readonly kernel: Kernel;
  /** Host: spawn of `openshell-vm` to its Ready event. */
  readonly readyMs: number;
  /** Guest uptime at "ovm-init: started": the kernel and the initramfs (module loading) done. */
  readonly initStartedUptimeS: number;
  /** Guest uptime at "ovm-gateway: starting k3s". */
  readonly k3sStartingUptimeS: number;
  /** The guest-side interval start of init → k3s started. */
  readonly initToK3sS: number;
}

const INSTANCE = 'bench-gw';
const runsDir = path.join(dataDir, 'instances', INSTANCE, 'runs');
const uptimeOf = (log: string, re: RegExp) => {
  const m = new RegExp(`\\[(\\d+\\.\\d+)\\] ${re.source}`).exec(log);
  return m ? Number(m[1]) : undefined;
};

/** Boots the gateway until Ready, stops it with SIGINT, checks that nothing is left, reads its console log. */
async function gatewayOnce(kernel: Kernel, n: number): Promise<GatewaySample> {
  const events = path.join(work, `gateway-${kernel}-${n}.ndjson`);
  const before = new Set(fs.existsSync(runsDir) ? fs.readdirSync(runsDir) : []);
  const args = ['--events', events, '--name', INSTANCE, '--json', '--keep-logs', '--ready-timeout', '800'];
  const r = await runCli(args, kernel, events, (e) => e.type === 'ready');
  if (r.matchedMs === undefined) throw failed('the gateway (it ended before Ready)', kernel, r);
  if (r.code !== 0) throw failed('the gateway stopped with SIGINT after Ready', kernel, r);
  // Nothing left: every helper the CLI started is gone, and no socket remains outside the rootfs.
  for (const p of r.events.filter((e) => e.type === 'process' && e.action === 'started')) {
    const pid = p.process?.pid as number;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (alive) throw new Error(`${p.process?.name} (pid ${pid}) is still running after the gateway exited`);
  }
  for (const dir of [dataDir, runtimeDir]) {
    for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
      const full = path.join(e.parentPath, e.name);
      if (!full.includes(`${path.sep}rootfs${path.sep}`) && e.isSocket())
        throw new Error(`a socket is left after the gateway exited: ${full}`);
    }
  }
  const fresh = fs.readdirSync(runsDir).filter((id) => !before.has(id));
  if (fresh.length !== 1)
    throw new Error(`expected one kept run directory in ${runsDir}, found ${fresh.length}`);
  const runDir = path.join(runsDir, fresh[0] as string);
  const log = fs.readFileSync(path.join(runDir, 'console.log'), 'utf8');
  fs.rmSync(runDir, { recursive: true, force: true });
  const init = uptimeOf(log, /ovm-init: started/);
  const k3s = uptimeOf(log, /ovm-gateway: starting k3s/);
  if (init === undefined || k3s === undefined)
    throw new Error(`the console log of the ${kernel} kernel's boot lacks the init's or k3s's start line`);
  return {
    kernel,
    readyMs: r.matchedMs,
    initStartedUptimeS: init,
    k3sStartingUptimeS: k3s,
    initToK3sS: Math.round((k3s - init) * 1000) / 1000,
  };
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const ratio = (a: number | undefined, b: number | undefined) =>
  a && b ? Math.round((b / a) * 100) / 100 : undefined;
const orderOf = (i: number): Kernel[] => (i % 2 ? ['built', 'debian'] : ['debian', 'built']);

async function paired<S extends { kernel: Kernel }>(once: (k: Kernel, n: number) => Promise<S>) {
  // Warm-up, not counted.
  const warm = [await once('built', 0), await once('debian', 0)];
  const samples: S[] = [];
  for (let i = 1; i <= runs; i++) for (const kernel of orderOf(i)) samples.push(await once(kernel, i));
  return { warm, samples };
}

try {
  const run = await paired(runOnce);
  const runSummary = (kernel: Kernel) => {
    const mine = run.samples.filter((s) => s.kernel === kernel);
    const started = mine.map((s) => s.commandStartedMs).filter((x): x is number => x !== undefined);
    return {
      kernel,
      description: run.warm.find((w) => w.kernel === kernel)?.kernelLine,
      runs: mine.length,
      wallMsMedian: Math.round(median(mine.map((s) => s.wallMs))),
      commandStartedMsMedian: started.length ? Math.round(median(started)) : undefined,
    };
  };
  const built = runSummary('built');
  const debian = runSummary('debian');

  let gateway:
    | {
        rootfsBuildMs: number;
        built: ReturnType<typeof gatewaySummary>;
        debian: ReturnType<typeof gatewaySummary>;
        speedup: Record<string, number | undefined>;
        samples: GatewaySample[];
      }
    | undefined;
  function gatewaySummary(samples: readonly GatewaySample[], kernel: Kernel) {
    const mine = samples.filter((s) => s.kernel === kernel);
    return {
      kernel,
      runs: mine.length,
      initToK3sSMedian: median(mine.map((s) => s.initToK3sS)),
      initStartedUptimeSMedian: median(mine.map((s) => s.initStartedUptimeS)),
      k3sStartingUptimeSMedian: median(mine.map((s) => s.k3sStartingUptimeS)),
      readyMsMedian: Math.round(median(mine.map((s) => s.readyMs))),
    };
  }
  if (withGateway) {
    // ONE rootfs for both kernels: it carries the Debian kernel's modules (checked against the
    // Debian kernel's release at boot); the built kernel has none to check (src/rootfs/boot-prep.ts).
    const events = path.join(work, 'prepare-rootfs.ndjson');
    const build = await runCli(
      ['prepare-rootfs', '--events', events, '--name', INSTANCE, '-q', ...STAND_IN_BUILD],
      undefined,
      events,
    );
    if (build.code !== 0)
      throw new Error(`prepare-rootfs exited ${build.code ?? build.signal}:\n${build.stderr}`);
    const g = await paired(gatewayOnce);
    const gb = gatewaySummary(g.samples, 'built');
    const gd = gatewaySummary(g.samples, 'debian');
    gateway = {
      rootfsBuildMs: Math.round(build.wallMs),
      built: gb,
      debian: gd,
      speedup: {
        initToK3s: ratio(gb.initToK3sSMedian, gd.initToK3sSMedian),
        k3sStartingUptime: ratio(gb.k3sStartingUptimeSMedian, gd.k3sStartingUptimeSMedian),
        ready: ratio(gb.readyMsMedian, gd.readyMsMedian),
      },
      samples: g.samples,
    };
  }

  const result = {
    benchmark: 'built kernel vs Debian cloud kernel (paired, order alternating)',
    arch,
    host: { cpus: os.availableParallelism(), kernel: os.release() },
    cache,
    run: {
      what: 'run --net none -- /bin/true',
      built,
      debian,
      speedup: {
        wall: ratio(built.wallMsMedian, debian.wallMsMedian),
        commandStarted: ratio(built.commandStartedMsMedian, debian.commandStartedMsMedian),
      },
      samples: run.samples,
    },
    gateway: gateway && {
      what: 'gateway with the stand-in k3s: guest uptime from "ovm-init: started" to "ovm-gateway: starting k3s"; host wall time to Ready; stopped with SIGINT',
      ...gateway,
    },
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n\n`);
  const row = (cells: readonly (string | number | undefined)[]) =>
    `| ${cells.map((c) => c ?? '-').join(' | ')} |`;
  const x = (r: number | undefined) => (r === undefined ? '-' : `${r}x`);
  const lines = [
    row(['run /bin/true', 'runs', 'wall (median ms)', 'command started (median ms)']),
    row(['---', '---', '---', '---']),
    ...[built, debian].map((s) => row([s.kernel, s.runs, s.wallMsMedian, s.commandStartedMsMedian])),
    row(['Debian / built', '', x(result.run.speedup.wall), x(result.run.speedup.commandStarted)]),
  ];
  if (gateway)
    lines.push(
      '',
      row([
        'gateway',
        'runs',
        'init → k3s started (guest s)',
        'k3s started (guest uptime s)',
        'Ready (host median ms)',
      ]),
      row(['---', '---', '---', '---', '---']),
      ...[gateway.built, gateway.debian].map((s) =>
        row([s.kernel, s.runs, s.initToK3sSMedian, s.k3sStartingUptimeSMedian, s.readyMsMedian]),
      ),
      row([
        'Debian / built',
        '',
        x(gateway.speedup.initToK3s),
        x(gateway.speedup.k3sStartingUptime),
        x(gateway.speedup.ready),
      ]),
    );
  process.stdout.write(`${lines.join('\n')}\n`);
} catch (err) {
  process.stderr.write(`bench-kernel: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
