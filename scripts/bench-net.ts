// Forwarded-port measurements for scripts/bench.ts: for --net gvproxy and --net user, the time from
// launching the CLI until a forwarded port answers HTTP, TCP connect latency, small-request latency,
// and download throughput of a file served by busybox httpd in the guest.
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

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
