// End-to-end warm pool with real microVMs (TCG): a pool of 2, sequential and concurrent runs
// taken from it (exit codes, outputs, stdin, -p, a fresh VM each time: no file and no random
// numbers carried over), kill -9 of the pool supervisor then recovery, and `pool stop` leaving
// nothing (no process, socket, run or instance directory).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import type { InstanceState } from '../../src/instance/state.ts';
import { isSameProcess } from '../../src/supervisor/identity.ts';
import { CLI, freePort, sandbox } from './harness.ts';

const box = sandbox();
const LIGHT = ['--vcpus', '1', '--mem', '256'];

interface Result {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: readonly string[], input?: string, timeoutMs = 240_000): Promise<Result> {
  const child = spawn(CLI, args, {
    env: box.env,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (input !== undefined) child.stdin?.end(input);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

interface PoolJson {
  readonly id: string;
  readonly status: string;
  readonly ready: string[];
  readonly inUse: string[];
  readonly booting: string[];
  readonly supervisor?: { pid: number; startTime?: string };
}

async function pools(): Promise<PoolJson[]> {
  const r = await cli(['pool', 'status', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pools: PoolJson[] }).pools;
}

/** Waits until the pool has `n` ready members (replacements boot one at a time, ~5 s each here). */
async function waitReady(n: number, timeoutMs = 120_000): Promise<PoolJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [p] = await pools();
    assert.ok(p && p.status === 'running', `the pool runs: ${JSON.stringify(p)}`);
    if (p.ready.length >= n) return p;
    assert.ok(Date.now() < deadline, `${n} ready members within ${timeoutMs / 1000} s: ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function instances(): string[] {
  const dir = path.join(box.dataDir, 'instances');
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.startsWith('pool-')) : [];
}

function memberStates(): InstanceState[] {
  return instances()
    .map((n) => path.join(box.dataDir, 'instances', n, 'state.json'))
    .filter((f) => fs.existsSync(f))
    .map((f) => JSON.parse(fs.readFileSync(f, 'utf8')) as InstanceState);
}

function sockets(): string[] {
  const out: string[] = [];
  for (const dir of [box.dataDir, box.runtimeDir]) {
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (e.isSocket()) out.push(path.join(e.parentPath, e.name));
    }
  }
  return out;
}

async function assertNothingLeft(states: readonly InstanceState[]): Promise<void> {
  for (const s of states) {
    for (const p of [s.supervisor, ...s.processes]) {
      assert.equal(
        await isSameProcess(p.pid, p.startTime),
        false,
        `${s.instance}: ${p.name} (pid ${p.pid}) still runs`,
      );
    }
  }
  assert.deepEqual(sockets(), [], 'no socket left');
  assert.deepEqual(instances(), [], 'no member instance (nor its run directory) left');
  assert.deepEqual(
    fs.existsSync(path.join(box.dataDir, 'pools')) ? fs.readdirSync(path.join(box.dataDir, 'pools')) : [],
    [],
    'no pool directory left',
  );
}

const MARK = '/root/pool-mark';
const PROBE = `[ -e ${MARK} ] && echo LEAKED; touch ${MARK}; head -c 32 /dev/urandom | sha256sum | cut -c1-64; echo "$GREETING from $(pwd)"`;

after(async () => {
  await cli(['pool', 'stop', '--timeout', '5']);
  box.cleanup();
});

describe('warm pool', { timeout: 600_000 }, () => {
  test('a pool of 2: five sequential runs and two concurrent ones, each on a fresh VM', async () => {
    const start = await cli(['pool', 'start', '--size', '2', '-q', ...LIGHT]);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, /Pool [0-9a-f]{10} ready: 2 microVM/);
    const again = await cli(['pool', 'start', '--size', '2', ...LIGHT]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already running/);

    const hashes: string[] = [];
    const members = new Set<string>();
    const take = (r: Result, code: number) => {
      assert.equal(r.code, code, r.stderr);
      const member = /warm pool [0-9a-f]{10}: (pool-[0-9a-f]{10}-[0-9]+)/.exec(r.stderr)?.[1];
      assert.ok(member, `the run was taken from the pool: ${r.stderr}`);
      assert.ok(!members.has(member), `${member} was used twice`);
      members.add(member);
      const [hash, line] = r.stdout.trim().split('\n');
      assert.match(hash ?? '', /^[0-9a-f]{64}$/, r.stdout);
      assert.doesNotMatch(r.stdout, /LEAKED/, 'a file written by an earlier run is absent');
      hashes.push(hash as string);
      return line;
    };
    for (let i = 0; i < 5; i++) {
      await waitReady(1);
      const r = await cli([
        'run',
        ...LIGHT,
        '--env',
        `GREETING=run${i}`,
        '--workdir',
        '/tmp',
        '--',
        '/bin/sh',
        '-c',
        `${PROBE}; exit ${i + 3}`,
      ]);
      assert.equal(take(r, i + 3), `run${i} from /tmp`);
    }
    await waitReady(2);
    const both = await Promise.all(
      [7, 9].map((code) =>
        cli(['run', ...LIGHT, '--env', `GREETING=c${code}`, '--', '/bin/sh', '-c', `${PROBE}; exit ${code}`]),
      ),
    );
    assert.equal(take(both[0] as Result, 7), 'c7 from /');
    assert.equal(take(both[1] as Result, 9), 'c9 from /');
    assert.equal(
      new Set(hashes).size,
      hashes.length,
      `the guests' random numbers differ: ${hashes.join(' ')}`,
    );

    // stdin passes through; -p forwards are the run's own; --no-pool boots cold.
    await waitReady(1);
    const cat = await cli(['run', ...LIGHT, '--', 'cat'], 'through stdin\n');
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'through stdin\n');
    assert.match(cat.stderr, /warm pool/);
    await waitReady(1);
    const port = await freePort();
    const serve = cli([
      'run',
      ...LIGHT,
      '-p',
      `${port}:8080`,
      '--',
      '/bin/sh',
      '-c',
      'mkdir /w; echo pooled > /w/index.html; httpd -p 8080 -h /w; sleep 8',
    ]);
    let body = '';
    for (let i = 0; i < 60 && !body; i++) {
      body = await fetch(`http://127.0.0.1:${port}/`).then(
        (r) => r.text(),
        () => '',
      );
      if (!body) await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(body, 'pooled\n', "the run's -p forward reaches its pooled VM");
    const served = await serve;
    assert.equal(served.code, 0, served.stderr);
    assert.match(served.stderr, /warm pool/);
    const cold = await cli(['run', '--no-pool', ...LIGHT, '--', '/bin/sh', '-c', 'exit 4']);
    assert.equal(cold.code, 4, cold.stderr);
    assert.doesNotMatch(cold.stderr, /warm pool/);
  });

  test('kill -9 of the pool supervisor: status and run recover, nothing of the pool is left', async () => {
    const p = await waitReady(2);
    const states = memberStates();
    assert.ok(states.length >= 2, 'the members have state files');
    process.kill(p.supervisor?.pid as number, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const [after] = await pools();
    assert.equal(after?.status, 'recovered', JSON.stringify(after));
    await assertNothingLeft(states);
    assert.deepEqual(await pools(), [], 'recovered once, then gone');
    const cold = await cli(['run', ...LIGHT, '--', '/bin/sh', '-c', 'exit 5']);
    assert.equal(cold.code, 5, cold.stderr);
    assert.doesNotMatch(cold.stderr, /warm pool/);
  });

  test('pool stop leaves no process, socket, run or instance directory', async () => {
    const start = await cli(['pool', 'start', '--size', '2', '-q', ...LIGHT]);
    assert.equal(start.code, 0, start.stderr);
    const [p] = await pools();
    const states = memberStates();
    const stop = await cli(['pool', 'stop', '--json']);
    assert.equal(stop.code, 0, stop.stderr);
    const out = JSON.parse(stop.stdout) as { stopped: { wasRunning: boolean; forced: boolean }[] };
    assert.deepEqual(
      out.stopped.map((s) => [s.wasRunning, s.forced]),
      [[true, false]],
    );
    assert.equal(await isSameProcess(p?.supervisor?.pid as number, p?.supervisor?.startTime), false);
    await assertNothingLeft(states);
  });
});
