import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Sandbox, sandbox } from './harness.ts';

// The gateway with REAL k3s, end to end: prepare-rootfs with the given k3s binary and OpenShell's
// published chart and images (network access to their registry is needed), boot, Ready, then
// `openshell-vm verify` against the cluster (its checks include OpenShell's Health RPC). k3s cannot be downloaded on the machines this
// project's CI runs on, so the test runs only where a k3s binary is supplied.
const K3S = process.env.OPENSHELL_VM_K3S;
const skip = K3S
  ? fs.existsSync(K3S)
    ? undefined
    : `OPENSHELL_VM_K3S=${K3S} does not exist`
  : "OPENSHELL_VM_K3S is not set: set it to a k3s binary (e.g. v1.35.2+k3s1 for this host's architecture) to boot real k3s and run verify; the build also pulls the OpenShell chart and images, so it needs network access";

describe('gateway with real k3s, then verify', { skip }, () => {
  let box: Sandbox;
  before(() => {
    box = sandbox();
  });
  after(() => box?.cleanup());

  test('boots, reports Ready, and verify passes', { timeout: 3_600_000 }, async () => {
    const build = await box.run(['prepare-rootfs', '--name', 'k3s', '--k3s', K3S as string], {
      timeoutMs: 1_800_000,
    });
    assert.equal(build.code, 0, build.stderr);
    let kill: ((s: NodeJS.Signals) => void) | undefined;
    let resolveReady: (e: Record<string, unknown>) => void;
    const ready = new Promise<Record<string, unknown>>((r) => (resolveReady = r));
    const running = box.run(['--name', 'k3s', '--ready-timeout', '1500'], {
      timeoutMs: 3_000_000,
      onEvent: (e, child) => {
        kill = child.kill;
        if (e.type === 'ready') resolveReady(e);
      },
    });
    const first = await Promise.race([ready, running]);
    if ('code' in first) assert.fail(`the gateway ended before Ready (exit ${first.code}):\n${first.stderr}`);
    try {
      const verify = await box.run(['verify', '--name', 'k3s', '--timeout', '300', '--json']);
      const report = JSON.parse(verify.stdout.toString());
      assert.equal(verify.code, 0, JSON.stringify(report.results, null, 2));
      assert.equal(report.fail, 0);
      // Ready meant openshell.v1.OpenShell/Health said HEALTHY, and verify called it again.
      assert.equal(typeof first.gatewayVersion, 'string');
      const health = report.results.find((r: { name: string }) => r.name === 'gateway-health');
      assert.equal(health?.status, 'pass', JSON.stringify(health));
      assert.match(health.detail, /HEALTHY/);
      assert.ok(fs.existsSync(path.join(box.homeDir, '.kube', 'k3s.yaml')));
    } finally {
      kill?.('SIGINT');
    }
    const result = await running;
    assert.equal(result.code, 0, result.stderr);
    await box.assertClean(result, 'k3s');
  });
});
