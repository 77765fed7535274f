// Guest kernel benchmark: `openshell-vm run --net none -- /bin/true` booting the built kernel
// (`openshell-vm kernel build`: everything built in, no modules) against Debian's cloud kernel
// (modules loaded by the initramfs), paired: each round runs both, the order alternating, so
// drift in host load affects both alike. Per run: the wall time to the CLI's exit and, from its
// events, the time to "command started in the guest". One warm-up run of each first (it builds
// each kernel's initramfs), not counted. It boots VMs: run it under the machine's VM lock
// (`flock /tmp/ovm-vm.lock npm run bench:kernel`). Prints a JSON document, then a table.
// usage: node scripts/bench-kernel.ts [--runs N] [--arch A] [--cache DIR]
//   --cache: the openshell-vm cache holding the built kernel (default: the kernel e2e test's,
//            <XDG_CACHE_HOME>/openshell-vm-e2e-kernel, whose host inputs link to the shared cache;
//            `OPENSHELL_VM_CACHE_DIR=DIR openshell-vm kernel build` fills another).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scriptArgs } from './bench-args.ts';

const { option, fail } = scriptArgs('bench-kernel');
const runs = Number(option('--runs') ?? 1);
if (!Number.isInteger(runs) || runs < 1 || runs > 100)
  fail(`--runs: expected 1..100, got ${option('--runs')}`);
const arch = option('--arch') ?? (os.arch() === 'arm64' ? 'aarch64' : 'x86_64');
const cache = path.resolve(
  option('--cache') ??
    path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'openshell-vm-e2e-kernel'),
);
const cli = path.join(import.meta.dirname, '..', 'bin', 'openshell-vm');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-kernel-'));
process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));

type Kernel = 'built' | 'debian';
interface Sample {
  readonly kernel: Kernel;
  readonly wallMs: number;
  /** From the CLI's events: the guest agent started the command. */
  readonly commandStartedMs: number | undefined;
  readonly kernelLine: string | undefined;
}

function once(kernel: Kernel, n: number): Promise<Sample> {
  const events = path.join(work, `events-${kernel}-${n}.ndjson`);
  const args = ['run', '--events', events, '--arch', arch, '--net', 'none', '--', '/bin/true'];
  const env = { ...process.env, OPENSHELL_VM_CACHE_DIR: cache, OPENSHELL_VM_KERNEL: kernel };
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cli, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4000);
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0)
        return reject(new Error(`run with the ${kernel} kernel exited ${code ?? signal}: ${stderr}`));
      const lines = fs
        .readFileSync(events, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { message?: string; elapsedMs?: number });
      const started = lines.find((e) => /command started in the guest/.test(e.message ?? ''));
      const kernelLine = lines.find((e) => /guest artifacts/.test(e.message ?? ''))?.message;
      resolve({ kernel, wallMs, commandStartedMs: started?.elapsedMs, kernelLine });
    });
  });
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

// Warm-up: each kernel's initramfs is built on its first run.
const warm = [await once('built', 0), await once('debian', 0)];
const samples: Sample[] = [];
for (let i = 1; i <= runs; i++) {
  const order: Kernel[] = i % 2 ? ['built', 'debian'] : ['debian', 'built'];
  for (const kernel of order) samples.push(await once(kernel, i));
}
const summary = (kernel: Kernel) => {
  const mine = samples.filter((s) => s.kernel === kernel);
  const started = mine.map((s) => s.commandStartedMs).filter((x): x is number => x !== undefined);
  return {
    kernel,
    description: warm.find((w) => w.kernel === kernel)?.kernelLine,
    runs: mine.length,
    wallMsMedian: Math.round(median(mine.map((s) => s.wallMs))),
    commandStartedMsMedian: started.length ? Math.round(median(started)) : undefined,
  };
};
const built = summary('built');
const debian = summary('debian');
const ratio = (a: number | undefined, b: number | undefined) =>
  a && b ? Math.round((b / a) * 100) / 100 : undefined;
const result = {
  benchmark: 'run --net none -- /bin/true, built kernel vs Debian cloud kernel (paired)',
  arch,
  host: { cpus: os.availableParallelism(), kernel: os.release() },
  cache,
  built,
  debian,
  speedup: {
    wall: ratio(built.wallMsMedian, debian.wallMsMedian),
    commandStarted: ratio(built.commandStartedMsMedian, debian.commandStartedMsMedian),
  },
  samples,
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n\n`);
const row = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
process.stdout.write(
  `${[
    row(['kernel', 'runs', 'wall (median ms)', 'command started (median ms)']),
    row(['---', '---', '---', '---']),
    ...[built, debian].map((s) =>
      row([s.kernel, String(s.runs), String(s.wallMsMedian), String(s.commandStartedMsMedian ?? '-')]),
    ),
    row(['Debian / built', '', `${result.speedup.wall ?? '-'}x`, `${result.speedup.commandStarted ?? '-'}x`]),
  ].join('\n')}\n`,
);
