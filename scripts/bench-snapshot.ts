// Gateway snapshot benchmark (--snapshot), with the STAND-IN k3s (test/fixtures/k3s-stand-in.sh:
// not k3s; real k3s cannot be downloaded here): the gateway's time to Ready booted cold
// (--no-snapshot, the baseline) against restored from its saved state, paired (the two alternate,
// so host load affects both alike), with the time to build the disk image and to save the state
// (the VM's pause), the state's size and the image's space on disk. The readiness figures are the
// gateway's own readyMs (from the supervisor's start to Ready: mTLS and Health answered) and the
// wall time of `openshell-vm start` to its return at Ready. A private data directory is used.
// usage: node scripts/bench-snapshot.ts [--runs N] [--arch A]   (npm run bench includes it)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { STAND_IN_BUILD } from '../test/fixtures/stand-in.ts';
import { scriptArgs, timedCli } from './bench-args.ts';
import { type Stats, stats } from './bench-pool.ts';

export interface SnapshotBench {
  readonly benchmark: string;
  readonly runs: number;
  readonly coldReadyMs: Stats;
  readonly restoredReadyMs: Stats;
  readonly coldWallMs: Stats;
  readonly restoredWallMs: Stats;
  /** Cold median over restored median (readyMs). */
  readonly speedup: number;
  readonly target: { readonly restoredReadyMs: number };
  /** The --snapshot cold boot: its Ready (including the save), the image build, the save's pause. */
  readonly saveBoot: { readonly readyMs: number; readonly imageMs: number; readonly pausedMs: number };
  readonly stateMib: number;
  readonly diskAllocatedMib: number;
  readonly diskSizeMib: number;
  readonly samples: { readonly cold: readonly number[]; readonly restored: readonly number[] };
}

export function benchSnapshot(root: string, options: { runs: number; arch: string }): SnapshotBench {
  const cli = path.join(root, 'bin', 'openshell-vm');
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-snap-'));
  const env = {
    ...process.env,
    OPENSHELL_VM_DATA_DIR: path.join(base, 'data'),
    HOME: path.join(base, 'home'),
    XDG_CONFIG_HOME: path.join(base, 'config'),
    // The shared artifact cache (gvproxy, the guest kernel, rootfs bases), not the private HOME's.
    XDG_CACHE_HOME: process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  };
  const name = 'bench-snap';
  const sh = timedCli(cli, env);
  // Detached: `start` returns at Ready with the Ready object; `stop` ends it in order.
  const boot = (flag: string) => {
    const r = sh(['start', '--name', name, '--arch', options.arch, '--json', '--ready-timeout', '600', flag]);
    const ready = JSON.parse(r.stdout) as { readyMs: number; start: string };
    sh(['stop', name]);
    return { ...ready, wallMs: r.ms, stderr: r.stderr };
  };
  try {
    process.stderr.write('bench-snapshot: building the stand-in gateway rootfs\n');
    sh(['prepare-rootfs', '--name', name, '--arch', options.arch, '-q', ...STAND_IN_BUILD]);
    // Not counted: a first cold boot (page cache, guest artifacts).
    boot('--no-snapshot');
    const save = boot('--snapshot');
    if (save.start !== 'booted') throw new Error(`the --snapshot boot was not cold: ${save.stderr}`);
    const num = (re: RegExp) => Number(re.exec(save.stderr)?.[1] ?? Number.NaN);
    const imageMs = num(/root disk image: .* in (\d+\.\d) s/) * 1000;
    const snapDir = path.join(env.OPENSHELL_VM_DATA_DIR, 'instances', name, 'snapshot');
    const meta = JSON.parse(fs.readFileSync(path.join(snapDir, 'snapshot.json'), 'utf8')) as {
      stateBytes: number;
      pausedMs: number;
    };
    const disk = fs.statSync(path.join(snapDir, 'disk.raw'));
    const cold: number[] = [];
    const restored: number[] = [];
    const coldWall: number[] = [];
    const restoredWall: number[] = [];
    for (let i = 0; i < options.runs; i++) {
      const r = boot('--snapshot');
      if (r.start !== 'restored') throw new Error(`run ${i + 1} did not restore: ${r.stderr}`);
      restored.push(r.readyMs);
      restoredWall.push(r.wallMs);
      const c = boot('--no-snapshot');
      cold.push(c.readyMs);
      coldWall.push(c.wallMs);
      process.stderr.write(
        `snapshot run ${i + 1}/${options.runs}: restored ${r.readyMs} ms, cold ${c.readyMs} ms (to Ready)\n`,
      );
    }
    const [cs, rs] = [stats(cold), stats(restored)];
    const mib = (b: number) => Number((b / (1 << 20)).toFixed(1));
    return {
      benchmark:
        'gateway (stand-in k3s) to Ready: restored from its saved state (--snapshot) vs a cold boot (--no-snapshot)',
      runs: options.runs,
      coldReadyMs: cs,
      restoredReadyMs: rs,
      coldWallMs: stats(coldWall),
      restoredWallMs: stats(restoredWall),
      speedup: Number((cs.median / rs.median).toFixed(1)),
      target: { restoredReadyMs: 5000 },
      saveBoot: { readyMs: save.readyMs, imageMs, pausedMs: meta.pausedMs },
      stateMib: mib(meta.stateBytes),
      diskAllocatedMib: mib(disk.blocks * 512),
      diskSizeMib: mib(disk.size),
      samples: { cold, restored },
    };
  } finally {
    spawnSync(cli, ['stop', name], { env, stdio: 'ignore' });
    fs.rmSync(base, { recursive: true, force: true });
  }
}

export function snapshotTable(r: SnapshotBench): string {
  const row = (label: string, s: Stats) =>
    `| ${label.padEnd(34)} | ${String(s.min).padStart(7)} | ${String(s.median).padStart(9)} | ${String(s.max).padStart(7)} |`;
  return `
| gateway to Ready (${r.runs} runs, paired)  | min ms | median ms | max ms |
|------------------------------------|---------|-----------|---------|
${row('restored (readyMs)', r.restoredReadyMs)}
${row('cold, --no-snapshot (readyMs)', r.coldReadyMs)}
${row('restored (start to return)', r.restoredWallMs)}
${row('cold (start to return)', r.coldWallMs)}

restored vs cold (readyMs medians): ${r.speedup}x faster (target: restored <= ${r.target.restoredReadyMs} ms)
the --snapshot cold boot: Ready in ${r.saveBoot.readyMs} ms including the save; disk image built in ${r.saveBoot.imageMs} ms; the VM paused ${r.saveBoot.pausedMs} ms to save
saved state ${r.stateMib} MiB; disk image ${r.diskAllocatedMib} MiB on disk (${r.diskSizeMib} MiB sparse)`;
}

if (import.meta.main) {
  const { option } = scriptArgs('bench-snapshot');
  const root = path.resolve(import.meta.dirname, '..');
  const arch = option('--arch') ?? (process.arch === 'arm64' ? 'aarch64' : 'x86_64');
  const result = benchSnapshot(root, { runs: Number(option('--runs') ?? 3), arch });
  console.log(JSON.stringify(result, null, 2));
  console.log(snapshotTable(result));
}
