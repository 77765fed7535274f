// Contract tests of the libkrun backend's FFI layer against a TEST DOUBLE of libkrun's C ABI
// (test/fixtures/libkrun-double.c), compiled here with the machine's C compiler. The double is not
// libkrun: it records each call with its decoded arguments, injects failures, and in
// krun_start_enter runs the workload on the host from the root it was given (no VM), ending the
// process with the workload's status as libkrun does.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { buildLibkrunDouble } from '../../../test/fixtures/libkrun-double.ts';
import { AGENT_VSOCK_PORT } from '../../guest/agent-build.ts';
import { isSameProcess, processStartTime } from '../../supervisor/identity.ts';
import type { VmSpec } from '../backend.ts';
import { libkrunConfig } from './backend.ts';
import { COMPAT_NET_FEATURES, type KrunCall, krunCalls, type LibkrunConfig } from './plan.ts';

const ROOT = new URL('../../../', import.meta.url).pathname;
const RUNNER = path.join(ROOT, 'src/vmm/libkrun/runner.ts');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krun-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

/**
 * The guest root the double runs workloads from: a script that prints its arguments, environment
 * and working directory to its output (the console), starts what $BACKGROUND says in the
 * background, and then exits with $EXIT, kills itself with signal $KILL, or waits ($WAIT).
 */
const guestRoot = path.join(work, 'root');
const WORKLOAD = '/srv/openshell-vm-init.sh';
fs.mkdirSync(path.join(guestRoot, 'srv'), { recursive: true });
fs.writeFileSync(
  path.join(guestRoot, WORKLOAD),
  [
    '#!/bin/sh',
    'for a in "$@"; do printf "arg:%s\\n" "$a"; done',
    'env | sort | sed "s/^/env:/"',
    'echo "cwd:$(pwd)"',
    '[ -n "$BACKGROUND" ] && { sh -c "$BACKGROUND" & }',
    '[ -n "$KILL" ] && kill -"$KILL" $$',
    '[ -n "$WAIT" ] && while :; do sleep 0.1; done',
    `exit "\${EXIT:-0}"`,
    '',
  ].join('\n'),
  { mode: 0o755 },
);
fs.writeFileSync(path.join(guestRoot, 'srv', 'plain'), 'not a program\n', { mode: 0o644 });

let libkrun = '';
let libkrunNoVsock = '';
let libkrunfw = '';
before(() => {
  ({ libkrun, libkrunfw } = buildLibkrunDouble(work));
  libkrunNoVsock = buildLibkrunDouble(path.join(work, 'old'), ['krun_add_vsock']).libkrun;
});

const GUEST_ENV = [
  'HOME=/root',
  'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'TERM=xterm',
];

const GATEWAY: LibkrunConfig = {
  logLevel: 1,
  vcpus: 4,
  memMib: 8192,
  rootDir: guestRoot,
  workdir: '/',
  exec: { path: WORKLOAD, args: [], env: GUEST_ENV },
  net: {
    mode: 'gvproxy',
    socketPath: '/run/ovm/gv-qemu.sock',
    mac: '5a:94:ef:e4:0c:ee',
  },
  vsockPorts: [],
  consoleOutput: '/set/per/run/console.log',
};

interface Recorded {
  fn: string;
  args: unknown[];
  ret: number;
}

/** Spawns the runner on `config` (its console in a file of its own); `during` runs while it does. */
async function runRunner(
  config: LibkrunConfig,
  options: {
    lib?: string;
    env?: NodeJS.ProcessEnv;
    during?: (pid: number, console: string) => Promise<void>;
  } = {},
) {
  const dir = fs.mkdtempSync(path.join(work, 'run-'));
  const log = path.join(dir, 'calls.ndjson');
  const console = path.join(dir, 'console.log');
  const input = path.join(dir, 'input.json');
  const withConsole = config.consoleOutput ? { ...config, consoleOutput: console } : config;
  fs.writeFileSync(
    input,
    JSON.stringify({ libkrun: options.lib ?? libkrun, libkrunfw: [libkrunfw], config: withConsole }),
  );
  // A low soft open-file limit: the VMM process must run with it raised to the hard one (Node
  // does this at start-up; this checks that the runner keeps that property).
  const child = spawn('sh', ['-c', 'ulimit -Sn 256 && exec "$0" "$@"', process.execPath, RUNNER, input], {
    env: { ...process.env, KRUN_DOUBLE_LOG: log, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const closed = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])),
  );
  await options.during?.(child.pid as number, console);
  const [code, signal] = await closed;
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
  const consoleText = fs.existsSync(console) ? fs.readFileSync(console, 'utf8') : '';
  return { code, signal, calls, limits, output, console: consoleText, config: withConsole };
}

/** The planned calls with the context id the double hands out (7) in place of 'ctx'. */
function expected(calls: KrunCall[]) {
  return calls.map((c) => ({ fn: c.fn, args: c.args.map((a) => (a === 'ctx' ? 7 : a)) }));
}

/** The workload's environment as it printed it, without what sh itself adds. */
const printedEnv = (console: string) =>
  console
    .split('\n')
    .filter((l) => l.startsWith('env:') && !/^env:(PWD|SHLVL|_)=/.test(l))
    .map((l) => l.slice(4));

test('gateway mode (Linux): the call sequence and every argument reach libkrun as planned; the workload runs', async () => {
  const r = await runRunner(GATEWAY);
  assert.equal(r.code, 0, r.output);
  assert.ok(r.limits, 'the double recorded the open-file limits');
  assert.notEqual(r.limits[0], 256, 'the soft limit was raised');
  assert.equal(r.limits[0], r.limits[1]);
  assert.deepEqual(
    r.calls.map(({ fn, args }) => ({ fn, args })),
    expected(krunCalls(r.config)),
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
  // The workload ran from the root, with exactly krun_set_exec's environment (nothing of the
  // runner's), in the work directory, its output on the console.
  assert.deepEqual(printedEnv(r.console), [...GUEST_ENV].sort());
  assert.match(r.console, /^cwd:\/$/m);
  assert.equal(r.output, '', "nothing on the runner's own output");
});

test('exec mode: awkward argv/env reach libkrun and the workload; a vsock port is its host socket; TSI port map', async () => {
  const config: LibkrunConfig = {
    ...GATEWAY,
    vcpus: 2,
    memMib: 2048,
    workdir: '/tmp',
    exec: {
      path: WORKLOAD,
      args: ['', "it's", 'ünï ✓', 'a\tb', '--vsock', '10777', '--vsock', '99'],
      env: ['A=b=c', 'EMPTY=', 'EXIT=3'],
    },
    net: { mode: 'gvproxy', socketPath: '/tmp/gv.sock', mac: '5a:94:ef:e4:0c:ee' },
    vsockPorts: [{ port: 10777, socketPath: '/tmp/exec.sock', listen: true }],
  };
  const r = await runRunner(config);
  assert.equal(r.code, 3, r.output);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_add_net_unixstream')?.args.slice(4), [19587, 0]);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_set_exec')?.args, [
    7,
    WORKLOAD,
    config.exec.args,
    config.exec.env,
  ]);
  assert.deepEqual(r.calls.find((c) => c.fn === 'krun_add_vsock_port2')?.args, [
    7,
    10777,
    '/tmp/exec.sock',
    true,
  ]);
  // What the workload got: every argument as it was, --vsock 10777 as --unix <its socket> (a port
  // without a socket stays as it is), exactly the environment, the work directory.
  assert.deepEqual(
    r.console.split('\n').filter((l) => l.startsWith('arg:')),
    ['', "it's", 'ünï ✓', 'a\tb', '--unix', '/tmp/exec.sock', '--vsock', '99'].map((a) => `arg:${a}`),
  );
  assert.deepEqual(printedEnv(r.console), ['A=b=c', 'EMPTY=', 'EXIT=3']);
  assert.match(r.console, /^cwd:\/tmp$/m);

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

test("the workload's status is the runner's, as libkrun's init reports it: N, 128+N for signal N, 127, 126", async () => {
  const withEnv = (...env: string[]) => ({
    ...GATEWAY,
    exec: { ...GATEWAY.exec, env: [...GUEST_ENV, ...env] },
  });
  assert.equal((await runRunner(withEnv('EXIT=42'))).code, 42);
  const killed = await runRunner(withEnv('KILL=9'));
  assert.deepEqual([killed.code, killed.signal], [137, null]);
  const missing = await runRunner({ ...GATEWAY, exec: { ...GATEWAY.exec, path: '/srv/none' } });
  assert.equal(missing.code, 127);
  assert.match(missing.console, /Couldn't execute '\/srv\/none' inside the vm: No such file or directory/);
  const plain = await runRunner({ ...GATEWAY, exec: { ...GATEWAY.exec, path: '/srv/plain' } });
  assert.equal(plain.code, 126);
  // Without a console file, the workload writes to the runner's own output.
  const noConsole = await runRunner({ ...GATEWAY, consoleOutput: undefined });
  assert.match(noConsole.output, /^cwd:\/$/m);
});

test('the VM ends with its workload, and SIGTERM to the runner ends the VM: nothing of the guest is left', async () => {
  const marker = path.join(work, 'background.pid');
  const background = `echo $$ > ${marker}; exec sleep 60`;
  const withEnv = (...env: string[]) => ({
    ...GATEWAY,
    exec: { ...GATEWAY.exec, env: [...GUEST_ENV, ...env] },
  });
  const pidOf = async () => {
    for (let i = 0; i < 200 && !fs.existsSync(marker); i++) await new Promise((r) => setTimeout(r, 20));
    const pid = Number(fs.readFileSync(marker, 'utf8'));
    fs.rmSync(marker);
    return { pid, startTime: await processStartTime(pid) };
  };

  // The workload exits with a process of its own still running (an orphan): it goes too.
  let orphan: { pid: number; startTime: string | undefined } | undefined;
  const ended = await runRunner(withEnv(`BACKGROUND=${background}`, 'EXIT=5'), {
    during: async () => {
      orphan = await pidOf();
    },
  });
  assert.equal(ended.code, 5, ended.output);
  assert.ok(orphan?.startTime, 'the background process ran');
  assert.equal(await isSameProcess(orphan.pid, orphan.startTime), false, 'the orphan died with the VM');

  // SIGTERM while the workload runs: it and its children are killed, then the runner dies of it.
  let child: { pid: number; startTime: string | undefined } | undefined;
  const stopped = await runRunner(withEnv(`BACKGROUND=${background}`, 'WAIT=1'), {
    during: async (pid) => {
      child = await pidOf();
      process.kill(pid, 'SIGTERM');
    },
  });
  assert.deepEqual([stopped.code, stopped.signal], [null, 'SIGTERM'], stopped.output);
  assert.ok(child?.startTime);
  assert.equal(await isSameProcess(child.pid, child.startTime), false, "the workload's child was killed");
});

test('a libkrun without a required symbol fails naming it, before any call', async () => {
  const r = await runRunner(GATEWAY, { lib: libkrunNoVsock });
  assert.equal(r.code, 125);
  assert.match(r.output, /^libkrun did not start the VM: .* has no symbol krun_add_vsock \(hint: /);
  assert.deepEqual(r.calls, []);
});

test('a negative return from any call stops there, naming the function and the errno', async () => {
  const planned = krunCalls({ ...GATEWAY, vsockPorts: [{ port: 1, socketPath: '/s', listen: false }] });
  for (const [i, call] of planned.entries()) {
    const r = await runRunner(
      { ...GATEWAY, vsockPorts: [{ port: 1, socketPath: '/s', listen: false }] },
      { env: { KRUN_DOUBLE_FAIL: `${call.fn}:-22` } },
    );
    assert.equal(r.code, 125, call.fn);
    // One line on the runner's stderr (its log): the function, the errno, where libkrun says more.
    assert.match(
      r.output,
      new RegExp(
        `^libkrun did not start the VM: ${call.fn} failed: -22 \\(EINVAL\\) \\(hint: [^\\n]*libkrun\\.log[^\\n]*\\)\\n$`,
      ),
    );
    assert.equal(r.console, '', 'the workload did not run');
    // After a failure the only further call is freeing the context, once one exists.
    const created = planned.findIndex((c) => c.fn === 'krun_create_ctx') < i;
    assert.deepEqual(
      r.calls.slice(i + 1).map((c) => [c.fn, c.args]),
      created ? [['krun_free_ctx', [7]]] : [],
      `calls after ${call.fn}`,
    );
  }
});

/** The gateway preset's VM spec (vCPUs/RAM as given), its /sbin/ovm-init a script printing what it got. */
function gatewaySpec(vcpus = 4, memMib = 8192): VmSpec {
  // The double runs the workload from the root: the real init is booted under QEMU's krun
  // handoff instead (test/e2e/kernel-build.test.ts, "libkrun's guest handoff under QEMU").
  fs.mkdirSync(path.join(guestRoot, 'sbin'), { recursive: true });
  fs.copyFileSync(path.join(guestRoot, WORKLOAD), path.join(guestRoot, 'sbin', 'ovm-init'));
  return {
    arch: 'x86_64',
    accel: 'kvm',
    vcpus,
    memMib,
    kernel: '/unused/by/libkrun',
    initramfs: '/unused/by/libkrun',
    guestMode: 'gateway',
    kernelArgs: [],
    rootDir: guestRoot,
    rootMode: 'rw',
    agentSocket: '/run/ovm/agent.sock',
    network: { mode: 'gvproxy', socketPath: '/run/ovm/relay.sock', mac: '5a:94:ef:e4:0c:ee' },
    runDir: '/run/ovm',
    socketDir: '/run/ovm',
    consoleLog: '/run/ovm/console.log',
  };
}

test("the gateway preset's libkrun config: the root, openshell-vm's init as PID 1 with its words in its environment, console, stream net, the agent's vsock port, vCPUs/RAM", async () => {
  const spec = gatewaySpec();
  const config = libkrunConfig(spec);
  const r = await runRunner(config);
  assert.equal(r.code, 0, r.output);
  assert.deepEqual(
    r.calls.map((c) => [c.fn, c.args]),
    [
      ['krun_init_log', [-1, 1, 0, 1]],
      ['krun_create_ctx', []],
      ['krun_set_vm_config', [7, 4, 8192]],
      ['krun_set_root', [7, guestRoot]],
      ['krun_set_workdir', [7, '/']],
      ['krun_disable_implicit_vsock', [7]],
      ['krun_add_vsock', [7, 0]],
      [
        'krun_add_net_unixstream',
        [7, '/run/ovm/relay.sock', -1, '5a:94:ef:e4:0c:ee', COMPAT_NET_FEATURES, 0],
      ],
      ['krun_add_vsock_port2', [7, AGENT_VSOCK_PORT, '/run/ovm/agent.sock', false]],
      ['krun_set_console_output', [7, r.config.consoleOutput]],
      [
        'krun_set_exec',
        [
          7,
          '/sbin/ovm-init',
          [],
          [
            'KRUN_INIT_PID1=1',
            'OVM_MODE=gateway',
            'OVM_NET=gvproxy',
            `OVM_AGENT=vsock:${AGENT_VSOCK_PORT}`,
            ...GUEST_ENV,
          ],
        ],
      ],
      ['krun_start_enter', [7]],
    ],
  );
  // The init got exactly that environment and no argument (no command-line mode words).
  assert.deepEqual(
    printedEnv(r.console),
    ['KRUN_INIT_PID1=1', 'OVM_AGENT=vsock:10000', 'OVM_MODE=gateway', 'OVM_NET=gvproxy', ...GUEST_ENV].sort(),
  );
  assert.deepEqual(
    r.console.split('\n').filter((l) => l.startsWith('arg:')),
    [],
  );
  // macOS takes the same stream transport (the frame filter relays streams only): the config has
  // no platform in it, and exec mode keeps the agent as the workload on the same port.
  const exec = libkrunConfig({ ...spec, guestMode: 'exec', rootMode: 'overlay' });
  assert.deepEqual(exec.net, config.net);
  assert.deepEqual(exec.exec.path, '/sbin/ovm-agent');
  assert.deepEqual(exec.exec.args, ['--vsock', String(AGENT_VSOCK_PORT), '--workload']);
  assert.ok(!exec.exec.env.some((e) => e.startsWith('OVM_') || e.startsWith('KRUN_')));
});

test('a refused call in the gateway config frees the context and starts nothing', async () => {
  const config = libkrunConfig(gatewaySpec(2, 4096));
  for (const fn of ['krun_set_root', 'krun_add_net_unixstream', 'krun_add_vsock_port2', 'krun_set_exec']) {
    const r = await runRunner(config, { env: { KRUN_DOUBLE_FAIL: `${fn}:-2` } });
    assert.equal(r.code, 125, fn);
    assert.match(r.output, new RegExp(`${fn} failed: -2 \\(ENOENT\\)`));
    assert.deepEqual(r.calls.at(-1)?.fn, 'krun_free_ctx', fn);
    assert.ok(!r.calls.some((c) => c.fn === 'krun_start_enter'), fn);
    assert.equal(r.console, '', 'the init did not run');
  }
});

test("OPENSHELL_VM_KRUN_LOG_LEVEL reaches krun_init_log (clamped to libkrun's 0..5)", () => {
  const spec: VmSpec = { ...gatewaySpec(), guestMode: 'exec', rootMode: 'overlay' };
  assert.deepEqual(krunCalls(libkrunConfig(spec, 4))[0], { fn: 'krun_init_log', args: [-1, 4, 0, 1] });
  assert.deepEqual(krunCalls(libkrunConfig(spec, 9))[0]?.args[1], 5);
  assert.deepEqual(krunCalls(libkrunConfig(spec))[0]?.args[1], 1);
});
