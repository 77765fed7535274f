// Network measurements.
// - benchForwarding (for scripts/bench.ts): for --net gvproxy (through the frame filter) and --net
//   user, the time from launching the CLI until a forwarded port answers HTTP, TCP connect latency,
//   small-request latency, and download throughput of a file served by busybox httpd in the guest.
// - benchFrameFilter (run this file directly: `node scripts/bench-net.ts [--json]`): the frame
//   filter's own cost, paired in one run: the same frame stream pushed from a VMM stand-in to a
//   gvproxy stand-in directly and through the filter (GvproxyRelay), alternating, both ways.
//   Under TCG the guest is far slower than either, so this is the filter's ceiling, not the VM's.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { GvproxyRelay } from '../src/net/frame-relay.ts';
import { encodeRecord } from '../src/net/qemu-stream.ts';

const FILE_MIB = 16;
const SAMPLES = 30;

export interface ForwardingResult {
  readonly net: 'gvproxy' | 'user';
  readonly launchToAnswerMs: number;
  readonly connectMs: { min: number; median: number; max: number };
  readonly requestMs: { min: number; median: number; max: number };
  readonly downloadMBps: number;
  readonly fileMiB: number;
}

export async function benchForwarding(root: string, arch: string): Promise<ForwardingResult[]> {
  const results: ForwardingResult[] = [];
  for (const mode of ['gvproxy', 'user'] as const) {
    const port = await freePort();
    const guestScript = `mkdir -p /www && echo ok > /www/small && head -c ${FILE_MIB * 1048576} /dev/zero > /www/big && httpd -p 8080 -h /www && sleep 600`;
    const start = performance.now();
    const cli = spawn(
      path.join(root, 'bin', 'openshell-vm'),
      ['-q', '--arch', arch, '--net', mode, '-p', `${port}:8080`, 'run', '--', '/bin/sh', '-c', guestScript],
      {
        stdio: ['ignore', 'ignore', 'inherit'],
      },
    );
    try {
      while ((await get(port, '/small').catch(() => undefined)) === undefined) {
        if (cli.exitCode !== null) throw new Error(`openshell-vm --net ${mode} exited ${cli.exitCode}`);
        if (performance.now() - start > 180_000) throw new Error(`--net ${mode}: no answer within 180 s`);
        await sleep(20);
      }
      const launchToAnswerMs = Math.round(performance.now() - start);
      const connects: number[] = [];
      const requests: number[] = [];
      for (let i = 0; i < SAMPLES; i++) connects.push(await connectTime(port));
      for (let i = 0; i < SAMPLES; i++) {
        const t = performance.now();
        await get(port, '/small');
        requests.push(performance.now() - t);
      }
      const t = performance.now();
      const bytes = (await get(port, '/big')) ?? 0;
      const seconds = (performance.now() - t) / 1000;
      results.push({
        net: mode,
        launchToAnswerMs,
        connectMs: stats(connects),
        requestMs: stats(requests),
        downloadMBps: Number((bytes / 1048576 / seconds).toFixed(1)),
        fileMiB: FILE_MIB,
      });
      process.stderr.write(`--net ${mode}: answered after ${launchToAnswerMs} ms\n`);
    } finally {
      cli.kill('SIGTERM');
      await new Promise((resolve) =>
        cli.exitCode !== null ? resolve(undefined) : cli.once('exit', resolve),
      );
    }
  }
  return results;
}

function get(port: number, urlPath: string): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 30_000 }, (res) => {
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
      });
      res.on('end', () =>
        res.statusCode === 200 ? resolve(bytes) : reject(new Error(`HTTP ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

function connectTime(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      resolve(performance.now() - t);
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function stats(xs: number[]): { min: number; median: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const r = (n: number) => Number(n.toFixed(2));
  return { min: r(s[0] as number), median: r(s[s.length >> 1] as number), max: r(s.at(-1) as number) };
}

export interface FilterRun {
  readonly direction: 'guest-to-gvproxy' | 'gvproxy-to-guest';
  readonly path: 'direct' | 'filter';
  readonly MBps: number;
  readonly kframesPerSecond: number;
}

export interface FilterResult {
  readonly frameBytes: number;
  readonly MiBPerRun: number;
  readonly rounds: number;
  /** Median of the rounds, per direction and path. */
  readonly medians: readonly FilterRun[];
  /** (direct - filter) / direct of the medians, per direction. */
  readonly overheadPercent: Readonly<Record<FilterRun['direction'], number>>;
}

/** A full-size TCP frame, guest 192.168.127.2 -> an outside address (what a download's ACKs and an upload look like). */
function tcpFrame(bytes: number, src: string, dst: string): Buffer {
  const f = Buffer.alloc(bytes);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f.writeUInt16BE(bytes - 14, 16);
  f[23] = 6;
  f.set(src.split('.').map(Number), 26);
  f.set(dst.split('.').map(Number), 30);
  f.writeUInt16BE(40000, 34);
  f.writeUInt16BE(443, 36);
  f[47] = 0x10;
  return f;
}

/** Pushes `total` bytes of `records` from `from` and resolves with the seconds until `to` received them all. */
function pump(from: net.Socket, to: net.Socket, batch: Buffer, total: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let received = 0;
    const onData = (c: Buffer) => {
      received += c.length;
      if (received >= total) {
        to.off('data', onData);
        resolve((performance.now() - start) / 1000);
      }
    };
    to.on('data', onData);
    to.once('error', reject);
    let sent = 0;
    const write = () => {
      while (sent < total) {
        sent += batch.length;
        if (!from.write(batch)) {
          from.once('drain', write);
          return;
        }
      }
    };
    write();
  });
}

async function pairOfSockets(dir: string, name: string, viaFilter: boolean) {
  const gvPath = path.join(dir, `${name}-gv.sock`);
  const vmPath = path.join(dir, `${name}-vm.sock`);
  let resolveGv!: (s: net.Socket) => void;
  const gvSide = new Promise<net.Socket>((r) => (resolveGv = r));
  const gvServer = net.createServer((s) => {
    gvServer.close();
    resolveGv(s);
  });
  await new Promise<void>((r) => gvServer.listen(gvPath, r));
  const relay = viaFilter ? await GvproxyRelay.start({ listenPath: vmPath, gvproxyPath: gvPath }) : undefined;
  const vm = net.connect(viaFilter ? vmPath : gvPath);
  await new Promise((r) => vm.once('connect', r));
  const gv = await gvSide;
  return {
    vm,
    gv,
    close: async () => {
      vm.destroy();
      gv.destroy();
      await relay?.close();
    },
  };
}

export async function benchFrameFilter(
  options: { rounds?: number; MiBPerRun?: number; frameBytes?: number } = {},
): Promise<FilterResult> {
  const rounds = options.rounds ?? 5;
  const MiBPerRun = options.MiBPerRun ?? 256;
  const frameBytes = options.frameBytes ?? 1514;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-net-'));
  const toGvproxy = Buffer.concat(
    Array.from({ length: 40 }, () => encodeRecord(tcpFrame(frameBytes, '192.168.127.2', '93.184.216.34'))),
  );
  const toGuest = Buffer.concat(
    Array.from({ length: 40 }, () => encodeRecord(tcpFrame(frameBytes, '93.184.216.34', '192.168.127.2'))),
  );
  const total = Math.floor((MiBPerRun * 1048576) / toGvproxy.length) * toGvproxy.length;
  const runs: FilterRun[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      // Alternate which path goes first, so drift (thermal, other load) hits both alike.
      const order = round % 2 ? (['filter', 'direct'] as const) : (['direct', 'filter'] as const);
      for (const which of order) {
        const pair = await pairOfSockets(dir, `${which}${round}`, which === 'filter');
        try {
          for (const direction of ['guest-to-gvproxy', 'gvproxy-to-guest'] as const) {
            const [from, to, batch] =
              direction === 'guest-to-gvproxy' ? [pair.vm, pair.gv, toGvproxy] : [pair.gv, pair.vm, toGuest];
            const seconds = await pump(from, to, batch, total);
            const frames = (total / batch.length) * 40;
            runs.push({
              direction,
              path: which,
              MBps: Number((total / 1048576 / seconds).toFixed(1)),
              kframesPerSecond: Number((frames / seconds / 1000).toFixed(1)),
            });
          }
        } finally {
          await pair.close();
        }
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const medians: FilterRun[] = [];
  for (const direction of ['guest-to-gvproxy', 'gvproxy-to-guest'] as const) {
    for (const which of ['direct', 'filter'] as const) {
      const xs = runs.filter((r) => r.direction === direction && r.path === which);
      const mb = stats(xs.map((r) => r.MBps)).median;
      const kf = stats(xs.map((r) => r.kframesPerSecond)).median;
      medians.push({ direction, path: which, MBps: mb, kframesPerSecond: kf });
    }
  }
  const overhead = (direction: FilterRun['direction']) => {
    const d = medians.find((m) => m.direction === direction && m.path === 'direct')?.MBps ?? 0;
    const f = medians.find((m) => m.direction === direction && m.path === 'filter')?.MBps ?? 0;
    return Number((((d - f) / d) * 100).toFixed(1));
  };
  return {
    frameBytes,
    MiBPerRun,
    rounds,
    medians,
    overheadPercent: {
      'guest-to-gvproxy': overhead('guest-to-gvproxy'),
      'gvproxy-to-guest': overhead('gvproxy-to-guest'),
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const result = await benchFrameFilter();
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else {
    process.stdout.write(
      `frame filter, ${result.frameBytes}-byte frames, ${result.MiBPerRun} MiB per run, median of ${result.rounds} paired rounds\n`,
    );
    process.stdout.write('direction          path     MB/s   kframes/s\n');
    for (const m of result.medians)
      process.stdout.write(
        `${m.direction.padEnd(18)} ${m.path.padEnd(7)} ${String(m.MBps).padStart(6)} ${String(m.kframesPerSecond).padStart(10)}\n`,
      );
    for (const [d, p] of Object.entries(result.overheadPercent))
      process.stdout.write(`overhead ${d}: ${p}%\n`);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
}
