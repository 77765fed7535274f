import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { mmdebstrapMissing, STAND_IN_BUILD } from '../fixtures/stand-in.ts';
import { type Sandbox, sandbox } from './harness.ts';

// The gateway on REAL libkrun (Linux with KVM, or macOS with HVF), end to end: prepare-rootfs,
// boot with --backend libkrun (openshell-vm's init as PID 1 under libkrun's init, the agent on
// vsock), Ready, `exec` through the agent, and with a real k3s (OPENSHELL_VM_K3S) `verify`; then
// Ctrl-C leaves nothing. These machines have no libkrun and no usable KVM, so it runs only where
// asked for; the call sequence is proven against the libkrun double (src/vmm/libkrun/
// contract.test.ts) and the guest half under QEMU (test/e2e/kernel-build.test.ts).
const skip =
  process.env.OPENSHELL_VM_LIBKRUN === '1'
    ? mmdebstrapMissing
    : 'OPENSHELL_VM_LIBKRUN is not set: set OPENSHELL_VM_LIBKRUN=1 on a host with libkrun, KVM or HVF, and a libkrunfw whose kernel has every gateway option (openshell-vm kernel build --target libkrunfw; OPENSHELL_VM_RUNTIME_DIR names the runtime), to boot the gateway on real libkrun; OPENSHELL_VM_K3S=<k3s binary> adds verify against real k3s';
const K3S = process.env.OPENSHELL_VM_K3S;

describe('the gateway on real libkrun', { skip }, () => {
  let box: Sandbox;
  before(() => {
    box = sandbox();
  });
  after(() => box?.cleanup());

  test('prepare-rootfs, boot on libkrun to Ready, exec, verify (real k3s), Ctrl-C leaves nothing', {
    timeout: 3_600_000,
  }, async () => {
    const build = await box.run(
      ['prepare-rootfs', '--name', 'kr', ...(K3S ? ['--k3s', K3S] : STAND_IN_BUILD)],
      { timeoutMs: 1_800_000 },
    );
    assert.equal(build.code, 0, build.stderr);
    let resolveReady: (kill: (s: NodeJS.Signals) => void) => void;
    const ready = new Promise<(s: NodeJS.Signals) => void>((r) => (resolveReady = r));
    const running = box.run(['--name', 'kr', '--backend', 'libkrun', '--json', '--ready-timeout', '1500'], {
      timeoutMs: 3_000_000,
      onEvent: (e, child) => {
        if (e.type === 'ready') resolveReady(child.kill);
      },
    });
    const first = await Promise.race([ready, running]);
    if (typeof first !== 'function')
      assert.fail(`the gateway ended before Ready (exit ${first.code}):\n${first.stderr}`);
    try {
      const exec = await box.run([
        'exec',
        'kr',
        '--',
        'sh',
        '-c',
        'echo "pid1: $(cat /proc/1/comm)"; hostname',
      ]);
      assert.equal(exec.code, 0, exec.stderr);
      assert.match(exec.stdout.toString(), /^openshell-vm$/m);
      if (K3S) {
        const verify = await box.run(['verify', '--name', 'kr', '--timeout', '300', '--json']);
        assert.equal(verify.code, 0, verify.stdout.toString());
      }
    } finally {
      first('SIGINT');
    }
    const result = await running;
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /backend: libkrun/);
    await box.assertClean(result, 'kr');
  });
});
