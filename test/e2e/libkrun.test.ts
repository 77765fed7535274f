// The libkrun backend end to end through the CLI, with a TEST DOUBLE of libkrun's C ABI
// (test/fixtures/libkrun-double.c, compiled here) as the runtime: not libkrun, which cannot run
// on these machines. It checks the process model: the runner process, exit status and signals,
// libkrun refusing a call, Ctrl-C, gvproxy wiring and the backend choice.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { findGvproxy } from '../../src/net/gvproxy.ts';
import { buildLibkrunDouble } from '../fixtures/libkrun-double.ts';
import { sandbox } from './harness.ts';

const box = sandbox();
const bundle = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krun-e2e-'));
after(() => {
  box.cleanup();
  fs.rmSync(bundle, { recursive: true, force: true });
});
buildLibkrunDouble(bundle);
fs.symlinkSync(await findGvproxy(readEnvironment()), path.join(bundle, 'gvproxy'));

const calls = (log: string) =>
  fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { fn: string; args: unknown[] });

function krunEnv(extra: Record<string, string>) {
  const log = path.join(bundle, `calls-${Date.now()}-${Math.random()}.ndjson`);
  return { log, env: { OPENSHELL_VM_RUNTIME_DIR: bundle, KRUN_DOUBLE_LOG: log, ...extra } };
}

test("--backend libkrun: the command and env reach krun_set_exec; the exit status is the CLI's", async () => {
  const { log, env } = krunEnv({ KRUN_DOUBLE_EXIT: '42' });
  const r = await box.run(
    [
      '--backend',
      'libkrun',
      '--net',
      'none',
      '--env',
      'A=1',
      '--workdir',
      '/tmp',
      'run',
      '--',
      '/bin/sh',
      '-c',
      'exit 42',
    ],
    { env },
  );
  assert.equal(r.code, 42, r.stderr);
  assert.match(r.stderr, /backend: libkrun \(requested with --backend libkrun \(runtime .*\)\)/);
  assert.match(r.stderr, /libkrunfw: libkrunfw.so.5/);
  assert.match(r.stderr, /type: stock/);
  assert.deepEqual(
    r.processes.map((p) => p.name),
    ['libkrun'],
  );
  const recorded = calls(log);
  const exec = recorded.find((c) => c.fn === 'krun_set_exec');
  assert.ok(exec, 'krun_set_exec was called');
  // libkrun's init runs the guest agent, which starts itself beside the command and execs it in
  // its own place; the agent dials vsock port 10000, which libkrun connects to the agent socket.
  assert.deepEqual(exec.args.slice(1, 3), [
    '/sbin/ovm-agent',
    ['--vsock', '10000', '--then', '/bin/sh', '-c', 'exit 42'],
  ]);
  assert.ok((exec.args[3] as string[]).includes('A=1'));
  const vsock = recorded.find((c) => c.fn === 'krun_add_vsock_port2');
  assert.ok(vsock, 'krun_add_vsock_port2 was called');
  assert.equal(vsock.args[1], 10000);
  assert.match(String(vsock.args[2]), /\/agent\.sock$/);
  assert.equal(vsock.args[3], false);
  assert.ok(
    recorded.findIndex((c) => c.fn === 'krun_add_vsock') < recorded.indexOf(vsock),
    'the vsock device exists before its port is added',
  );
  assert.deepEqual(recorded.find((c) => c.fn === 'krun_set_workdir')?.args[1], '/tmp');
  assert.equal(recorded.at(-1)?.fn, 'krun_start_enter');
  await box.assertClean(r);
});

test('a guest killed by a signal gives 128+N; a call libkrun refuses is an error naming it', async () => {
  const killed = await box.run(
    ['-q', '--backend', 'libkrun', '--net', 'none', '--exec', '/bin/true'],
    krunEnv({ KRUN_DOUBLE_SIGNAL: '9' }),
  );
  assert.equal(killed.code, 137, killed.stderr);
  const refused = await box.run(
    ['-q', '--backend', 'libkrun', '--net', 'none', '--exec', '/bin/true'],
    krunEnv({ KRUN_DOUBLE_FAIL: 'krun_set_root:-2' }),
  );
  assert.equal(refused.code, 125);
  assert.match(refused.stderr, /error: libkrun did not start the VM: krun_set_root failed: -2 \(ENOENT\)/);
  await box.assertClean(killed);
  await box.assertClean(refused);
});

test('SIGTERM while libkrun runs stops the runner and exits 143', async () => {
  let sent = false;
  const r = await box.run(['-q', '--backend', 'libkrun', '--net', 'none', '--exec', '/bin/true'], {
    ...krunEnv({ KRUN_DOUBLE_SLEEP: '30' }),
    onEvent: (e, child) => {
      if (!sent && e.type === 'process' && e.action === 'started') {
        sent = true;
        setTimeout(() => child.kill('SIGTERM'), 300);
      }
    },
  });
  assert.equal(r.code, 143, r.stderr);
  await box.assertClean(r);
});

test("with gvproxy, libkrun gets the frame filter's stream socket (never gvproxy's own) and the fixed MAC", async () => {
  const { log, env } = krunEnv({ KRUN_DOUBLE_EXIT: '0' });
  const r = await box.run(['-q', '--backend', 'libkrun', '--exec', '/bin/true'], { env });
  assert.equal(r.code, 0, r.stderr);
  const net = calls(log).find((c) => c.fn === 'krun_add_net_unixstream');
  assert.ok(net, 'krun_add_net_unixstream was called');
  // The supervisor's frame filter (net/frame-relay.ts) listens there and relays to gvproxy.
  assert.match(String(net.args[1]), /gv-vm\.sock$/);
  assert.deepEqual(net.args.slice(3), ['5a:94:ef:e4:0c:ee', 19587, 0]);
  assert.deepEqual(r.processes.map((p) => p.name).sort(), ['gvproxy', 'libkrun']);
  await box.assertClean(r);
});

test('by default, a runtime on a host without a working KVM means QEMU, and the reason is printed', async (t) => {
  if (fs.existsSync('/dev/kvm') && !fs.existsSync('/sys/module/kvm_pvm')) {
    t.skip('this host has a usable /dev/kvm: the default would be libkrun, which the double cannot boot');
    return;
  }
  const r = await box.run(['--net', 'none', '--vcpus', '1', '--mem', '256', '--exec', '/bin/true'], {
    env: { OPENSHELL_VM_RUNTIME_DIR: bundle },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /backend: qemu \(libkrun runtime at .*, but \/dev\/kvm/);
  await box.assertClean(r);
});

test('libkrun refuses what it cannot do: another architecture, --accel tcg, --net user', async () => {
  for (const [args, re] of [
    [['--arch', 'aarch64'], /--arch aarch64: libkrun runs guests of the host's architecture only/],
    [['--accel', 'tcg'], /--accel tcg: libkrun has no software emulation/],
    [['--net', 'user'], /--net user is QEMU's own network/],
  ] as const) {
    const r = await box.run(['--backend', 'libkrun', ...args, '--exec', '/bin/true'], {
      env: { OPENSHELL_VM_RUNTIME_DIR: bundle },
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, re);
    assert.deepEqual(r.processes, []);
  }
  const none = await box.run(['--backend', 'libkrun', '--exec', '/bin/true'], {
    env: { OPENSHELL_VM_RUNTIME_DIR: '/nonexistent' },
  });
  assert.equal(none.code, 125);
  assert.match(none.stderr, /runtime \/nonexistent: is not a directory/);
});

test("--net tsi (libkrun only): -p becomes libkrun's port map and no NIC is added; QEMU refuses it", async () => {
  const { log, env } = krunEnv({ KRUN_DOUBLE_EXIT: '0' });
  const r = await box.run(
    ['-q', '--backend', 'libkrun', '--net', 'tsi', '-p', '38051:30051', '--exec', '/bin/true'],
    { env },
  );
  assert.equal(r.code, 0, r.stderr);
  const recorded = calls(log);
  assert.deepEqual(recorded.find((c) => c.fn === 'krun_set_port_map')?.args, [7, ['38051:30051']]);
  assert.ok(!recorded.some((c) => c.fn.startsWith('krun_add_net') || c.fn === 'krun_disable_implicit_vsock'));
  await box.assertClean(r);
  const qemu = await box.run(['--backend', 'qemu', '--net', 'tsi', '--exec', '/bin/true']);
  assert.equal(qemu.code, 2);
  assert.match(qemu.stderr, /--net tsi is libkrun's network/);
});

test('libkrun (no read-only lower layer) boots a private copy of the shared default rootfs, removed after the run', async () => {
  const { log, env } = krunEnv({ KRUN_DOUBLE_EXIT: '0' });
  const r = await box.run(['--backend', 'libkrun', '--net', 'none', 'run', '--', '/bin/true'], { env });
  assert.equal(r.code, 0, r.stderr);
  const root = String(calls(log).find((c) => c.fn === 'krun_set_root')?.args[1]);
  const runs = path.join(box.dataDir, 'instances', 'default', 'runs');
  assert.ok(root.startsWith(`${runs}/`) && root.endsWith('/share/rootfs'), `krun_set_root got ${root}`);
  assert.equal(fs.existsSync(root), false, 'the private copy is removed after the run');
  await box.assertClean(r);
});
