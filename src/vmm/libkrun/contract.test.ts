// Contract tests of the libkrun backend's FFI layer against a TEST DOUBLE of libkrun's C ABI
// (test/fixtures/libkrun-double.c), compiled here with the machine's C compiler. The double is not
// libkrun: it records each call with its decoded arguments, injects failures, and ends
// krun_start_enter with a chosen status, as libkrun ends the process with the guest's status.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { buildLibkrunDouble } from '../../../test/fixtures/libkrun-double.ts';
import { COMPAT_NET_FEATURES, type KrunCall, krunCalls, type LibkrunConfig } from './plan.ts';

const ROOT = new URL('../../../', import.meta.url).pathname;
const RUNNER = path.join(ROOT, 'src/vmm/libkrun/runner.ts');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krun-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

let libkrun = '';
let libkrunNoVsock = '';
let libkrunfw = '';
before(() => {
  ({ libkrun, libkrunfw } = buildLibkrunDouble(work));
  libkrunNoVsock = buildLibkrunDouble(path.join(work, 'old'), ['krun_add_vsock']).libkrun;
});

const GATEWAY: LibkrunConfig = {
  logLevel: 1,
  vcpus: 4,
  memMib: 8192,
  rootDir: '/data/instances/default/rootfs',
  workdir: '/',
  exec: {
    path: '/srv/openshell-vm-init.sh',
    args: [],
    env: ['HOME=/root', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'TERM=xterm'],
  },
  net: {
    mode: 'gvproxy',
    socketPath: '/run/ovm/gv-qemu.sock',
    mac: '5a:94:ef:e4:0c:ee',
  },
  vsockPorts: [],
  consoleOutput: '/data/instances/default/console.log',
};

interface Recorded {
  fn: string;
  args: unknown[];
  ret: number;
}

async function runRunner(config: LibkrunConfig, env: NodeJS.ProcessEnv = {}, lib = libkrun) {
  const dir = fs.mkdtempSync(path.join(work, 'run-'));
  const log = path.join(dir, 'calls.ndjson');
  const errorFile = path.join(dir, 'error.json');
  const input = path.join(dir, 'input.json');
  fs.writeFileSync(input, JSON.stringify({ libkrun: lib, libkrunfw: [libkrunfw], config, errorFile }));
  // A low soft open-file limit: the VMM process must run with it raised to the hard one (Node
  // does this at start-up; this checks that the runner keeps that property).
  const child = spawn('sh', ['-c', 'ulimit -Sn 256 && exec "$0" "$@"', process.execPath, RUNNER, input], {
    env: { ...process.env, KRUN_DOUBLE_LOG: log, ...env },
    stdio: 'ignore',
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])),
  );
  const recorded = fs.existsSync(log)
    ? fs
        .readFileSync(log, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Recorded)
    : [];
  // The double's record of the open-file limits it saw, apart from the libkrun calls.
  const limits = recorded.find((c) => c.fn === 'rlimit_nofile')?.args as [number, number] | undefined;
  const calls = recorded.filter((c) => c.fn !== 'rlimit_nofile');
  const error = fs.existsSync(errorFile)
    ? (JSON.parse(fs.readFileSync(errorFile, 'utf8')) as { fn?: string; code?: number; message: string })
    : undefined;
  return { code, signal, calls, error, limits };
}

/** The planned calls with the context id the double hands out (7) in place of 'ctx'. */
function expected(calls: KrunCall[]) {
  return calls.map((c) => ({ fn: c.fn, args: c.args.map((a) => (a === 'ctx' ? 7 : a)) }));
}

test('gateway mode (Linux): the call sequence and every argument reach libkrun as planned', async () => {
  const r = await runRunner(GATEWAY, { KRUN_DOUBLE_EXIT: '0' });
  assert.equal(r.error, undefined);
  assert.equal(r.code, 0);
  assert.ok(r.limits, 'the double recorded the open-file limits');
  assert.notEqual(r.limits[0], 256, 'the soft limit was raised');
  assert.equal(r.limits[0], r.limits[1]);
  assert.deepEqual(
    r.calls.map(({ fn, args }) => ({ fn, args })),
    expected(krunCalls(GATEWAY)),
  );
  assert.deepEqual(
    r.calls.map((c) => c.fn),
    [
      'krun_init_log',
      'krun_create_ctx',
      'krun_set_vm_config',
      'krun_set_root',
      'krun_set_workdir',
      'krun_disable_implicit_vsock',
      'krun_add_vsock',
      'krun_add_net_unixstream',
      'krun_set_console_output',
      'krun_set_exec',
      'krun_start_enter',
    ],
  );
  const net = r.calls.find((c) => c.fn === 'krun_add_net_unixstream');
  assert.deepEqual(net?.args, [7, '/run/ovm/gv-qemu.sock', -1, '5a:94:ef:e4:0c:ee', 19587, 0]);
  assert.equal(COMPAT_NET_FEATURES, 19587);
});

test('exec mode: awkward argv/env, vsock ports, TSI port map', async () => {
  const config: LibkrunConfig = {
    ...GATEWAY,
    vcpus: 2,
    memMib: 2048,
    exec: {
      path: '/bin/sh',
      args: ['-c', 'echo "$1"', '', "it's", 'ünï ✓', 'a\nb'],
      env: ['A=b=c', 'EMPTY='],
    },
    net: { mode: 'gvproxy', socketPath: '/tmp/gv.sock', mac: '5a:94:ef:e4:0c:ee' },
    vsockPorts: [{ port: 10777, socketPath: '/tmp/exec.sock', listen: true }],
  };
  const r = await runRunner(config, { KRUN_DOUBLE_EXIT: '3' });
  assert.equal(r.code, 3);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_add_net_unixstream')?.args.slice(4), [19587, 0]);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_set_exec')?.args, [
    7,
    '/bin/sh',
    config.exec.args,
    config.exec.env,
  ]);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_add_vsock_port2')?.args, [
    7,
    10777,
    '/tmp/exec.sock',
    true,
  ]);

  const tsi = await runRunner({
    ...config,
    net: { mode: 'tsi', portMap: ['30051:30051', '6443:6443'] },
    vsockPorts: [],
  });
  const fns = tsi.calls.map((c) => c.fn);
  assert.ok(!fns.includes('krun_disable_implicit_vsock'), 'TSI keeps the implicit vsock');
  assert.deepEqual(tsi.calls.find((c) => c.fn === 'krun_set_port_map')?.args, [
    7,
    ['30051:30051', '6443:6443'],
  ]);
});

test("the guest's exit status and a fatal signal come out of the runner as libkrun ends it", async () => {
  assert.equal((await runRunner(GATEWAY, { KRUN_DOUBLE_EXIT: '42' })).code, 42);
  const killed = await runRunner(GATEWAY, { KRUN_DOUBLE_SIGNAL: '9' });
  assert.equal(killed.signal, 'SIGKILL');
});

test('a libkrun without a required symbol fails naming it, before any call', async () => {
  const r = await runRunner(GATEWAY, {}, libkrunNoVsock);
  assert.equal(r.code, 125);
  assert.match(r.error?.message ?? '', /has no symbol krun_add_vsock/);
  assert.deepEqual(r.calls, []);
});

test('a negative return from any call stops there, naming the function and the errno', async () => {
  const planned = krunCalls({ ...GATEWAY, vsockPorts: [{ port: 1, socketPath: '/s', listen: false }] });
  for (const [i, call] of planned.entries()) {
    const r = await runRunner(
      { ...GATEWAY, vsockPorts: [{ port: 1, socketPath: '/s', listen: false }] },
      { KRUN_DOUBLE_FAIL: `${call.fn}:-22` },
    );
    assert.equal(r.code, 125, call.fn);
    assert.equal(r.error?.fn, call.fn);
    assert.equal(r.error?.code, -22);
    assert.match(r.error?.message ?? '', new RegExp(`^${call.fn} failed: -22 \\(EINVAL\\)$`));
    // After a failure the only further call is freeing the context, once one exists.
    const created = planned.findIndex((c) => c.fn === 'krun_create_ctx') < i;
    assert.deepEqual(
      r.calls.slice(i + 1).map((c) => [c.fn, c.args]),
      created ? [['krun_free_ctx', [7]]] : [],
      `calls after ${call.fn}`,
    );
  }
});
