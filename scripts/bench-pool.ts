// Warm pool benchmark: `openshell-vm run -q -- /bin/true` from process start to exit, taken from a
// warm pool of 2 against a cold boot (--no-pool) with the same (default) VM options, paired: the
// two alternate, and each starts with the pool full again, so host load and the pool's replacement
// boots affect both alike. Also the host RSS of the idle pool of 2 (the pool supervisor and every
// process under it: QEMU, virtiofsd, gvproxy per member). A private data directory is used.
// usage: node scripts/bench-pool.ts [--runs N] [--arch A]   (npm run bench includes it)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scriptArgs, timedCli } from './bench-args.ts';

export interface PoolBench {
  readonly benchmark: string;
  readonly runs: number;
  readonly poolMs: Stats;
  readonly coldMs: Stats;
  /** Cold median over pool median. */
  readonly speedup: number;
  readonly target: { readonly poolMedianMs: number; readonly speedup: number };
  /** Host RSS of the idle pool of 2, MiB, and its processes. */
  readonly idlePoolRssMib: number;
  readonly idlePoolProcesses: readonly {
    readonly pid: number;
    readonly name: string;
    readonly rssMib: number;
  }[];
  readonly samples: { readonly pool: readonly number[]; readonly cold: readonly number[] };
}

export interface Stats {
  readonly min: number;
  readonly median: number;
  readonly max: number;
}

export function stats(xs: readonly number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
  return { min: Math.round(s[0] as number), median: Math.round(median), max: Math.round(s.at(-1) as number) };
}

function procStatus(pid: number): { name: string; ppid: number; rssKib: number } | undefined {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)?.[1] ?? '';
    return {
      name: field('Name'),
      ppid: Number(field('PPid')),
      rssKib: Number.parseInt(field('VmRSS'), 10) || 0,
    };
  } catch {
    return undefined;
  }
}

/** `root` and every process below it, with their RSS. */
function treeRss(root: number): { pid: number; name: string; rssMib: number }[] {
  const all = fs
    .readdirSync('/proc')
    .filter((d) => /^[0-9]+$/.test(d))
    .map((d) => ({ pid: Number(d), s: procStatus(Number(d)) }));
  const inTree = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (p.s && !inTree.has(p.pid) && inTree.has(p.s.ppid)) {
        inTree.add(p.pid);
        grew = true;
      }
    }
  }
  return all
    .filter((p) => inTree.has(p.pid) && p.s)
    .map((p) => ({
      pid: p.pid,
      name: p.s?.name ?? '',
      rssMib: Number(((p.s?.rssKib ?? 0) / 1024).toFixed(1)),
    }));
}

export async function benchPool(root: string, options: { runs: number; arch: string }): Promise<PoolBench> {
  const cli = path.join(root, 'bin', 'openshell-vm');
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-pool-'));
  const env = { ...process.env, OPENSHELL_VM_DATA_DIR: data };
  const vm = ['--arch', options.arch];
  const sh = timedCli(cli, env);
  const status = () =>
    (
      JSON.parse(sh(['pool', 'status', '--json']).stdout) as {
        pools: { ready: string[]; supervisor?: { pid: number } }[];
      }
    ).pools[0];
  const waitFull = async () => {
    const deadline = Date.now() + 180_000;
    for (;;) {
      const p = status();
      if (p && p.ready.length >= 2) return p;
      if (Date.now() > deadline) throw new Error(`the pool did not refill: ${JSON.stringify(p)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  try {
    sh(['pool', 'start', '--size', '2', '-q', ...vm]);
    const idle = await waitFull();
    // Idle: a few seconds after the last warm-up, so the guests have settled.
    await new Promise((r) => setTimeout(r, 3_000));
    const processes = treeRss(idle.supervisor?.pid as number);
    const pool: number[] = [];
    const cold: number[] = [];
    // One of each first, not counted (page cache, artifact check).
    sh(['run', '-q', ...vm, '--', '/bin/true']);
    await waitFull();
    sh(['run', '-q', '--no-pool', ...vm, '--', '/bin/true']);
    for (let i = 0; i < options.runs; i++) {
      await waitFull();
      const p = sh(['run', ...vm, '--', '/bin/true']);
      if (!/warm pool/.test(p.stderr))
        throw new Error(`run ${i + 1} was not taken from the pool: ${p.stderr}`);
      pool.push(p.ms);
      await waitFull();
      cold.push(sh(['run', '-q', '--no-pool', ...vm, '--', '/bin/true']).ms);
      process.stderr.write(
        `pool run ${i + 1}/${options.runs}: pool ${pool.at(-1)?.toFixed(0)} ms, cold ${cold.at(-1)?.toFixed(0)} ms\n`,
      );
    }
    const [ps, cs] = [stats(pool), stats(cold)];
    return {
      benchmark: 'run /bin/true, process start to exit: from a warm pool of 2 vs a cold boot (--no-pool)',
      runs: options.runs,
      poolMs: ps,
      coldMs: cs,
      speedup: Number((cs.median / ps.median).toFixed(1)),
      target: { poolMedianMs: 150, speedup: 20 },
      idlePoolRssMib: Number(processes.reduce((s, p) => s + p.rssMib, 0).toFixed(1)),
      idlePoolProcesses: processes,
      samples: { pool: pool.map(Math.round), cold: cold.map(Math.round) },
    };
  } finally {
    spawnSync(cli, ['pool', 'stop', '--timeout', '10'], { env, stdio: 'ignore' });
    fs.rmSync(data, { recursive: true, force: true });
  }
}

export function poolTable(r: PoolBench): string {
  const row = (name: string, s: Stats) =>
    `| ${name.padEnd(26)} | ${String(s.min).padStart(7)} | ${String(s.median).padStart(9)} | ${String(s.max).padStart(7)} |`;
  return `
| run /bin/true (${r.runs} runs, paired) | min ms | median ms | max ms |
|----------------------------|---------|-----------|---------|
${row('from the warm pool', r.poolMs)}
${row('cold (--no-pool)', r.coldMs)}

pool vs cold (medians): ${r.speedup}x faster (targets: pool median <= ${r.target.poolMedianMs} ms, >= ${r.target.speedup}x)
host RSS of the idle pool of 2: ${r.idlePoolRssMib} MiB (${r.idlePoolProcesses.map((p) => `${p.name} ${p.rssMib}`).join(', ')})`;
}

if (import.meta.main) {
  const { option } = scriptArgs('bench-pool');
  const root = path.resolve(import.meta.dirname, '..');
  const arch = option('--arch') ?? (process.arch === 'arm64' ? 'aarch64' : 'x86_64');
  const result = await benchPool(root, { runs: Number(option('--runs') ?? 10), arch });
  console.log(JSON.stringify(result, null, 2));
  console.log(poolTable(result));
}
