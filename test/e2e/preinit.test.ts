import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { mmdebstrapMissing, STAND_IN_BUILD, STAND_IN_FILES } from '../fixtures/stand-in.ts';
import { type Sandbox, sandbox } from './harness.ts';

// prepare-rootfs --preinit with the STAND-IN k3s (test/fixtures/k3s-stand-in.sh, serving Health
// through python3-grpcio): the rootfs boots once at build time, its PKI is baked in and marked
// initialized, and the next boot takes the pre-baked path. The stand-in unpacks no images, so the
// time it saves here is the bootstrap's and the first boot's own; with real k3s it is also the
// image import and the chart install. The two boots' times to Ready are printed as a ratio.
describe('prepare-rootfs --preinit', { skip: mmdebstrapMissing }, () => {
  let box: Sandbox;
  before(() => {
    box = sandbox();
  });
  after(() => box?.cleanup());
  const rootfsOf = (name: string) => path.join(box.dataDir, 'instances', name, 'rootfs');

  /** Boots `name` until Ready, stops it with SIGINT; returns the Ready object. */
  async function bootOnce(name: string): Promise<Record<string, unknown>> {
    let ready: Record<string, unknown> | undefined;
    const run = await box.run(['--name', name, '--json', '--ready-timeout', '400'], {
      timeoutMs: 600_000,
      onEvent: (e, child) => {
        if (e.type === 'ready') {
          ready = e;
          child.kill('SIGINT');
        }
      },
    });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(ready, 'Ready was reported');
    await box.assertClean(run, name);
    return ready;
  }

  test('build, preinit, then a boot on the pre-baked path; timed against a cold first boot', {
    timeout: 1_500_000,
  }, async () => {
    const build = await box.run(
      ['prepare-rootfs', '--name', 'pi', '--preinit', '--json', ...STAND_IN_BUILD],
      {
        timeoutMs: 1_200_000,
      },
    );
    assert.equal(build.code, 0, build.stderr);
    assert.match(build.stderr, /preinit: Ready in \d+\.\d s; stopping it in order/);
    const record = JSON.parse(build.stdout.toString());
    const preinit = record.preinit;
    assert.equal(preinit?.gatewayVersion, '0.0.0-stand-in', JSON.stringify(record));
    assert.match(preinit.caSha256, /^[0-9a-f]{64}$/);
    assert.equal(typeof preinit.readyMs, 'number');

    const root = rootfsOf('pi');
    for (const f of ['ca.crt', 'ca.key', 'server.crt', 'server.key', 'client.crt', 'client.key']) {
      assert.equal(fs.statSync(path.join(root, 'opt/openshell/pki', f)).mode & 0o777, 0o600, f);
    }
    assert.equal(fs.statSync(path.join(root, 'opt/openshell/pki')).mode & 0o777, 0o700);
    const marker = JSON.parse(fs.readFileSync(path.join(root, 'opt/openshell/.initialized'), 'utf8'));
    assert.equal(marker.caSha256, preinit.caSha256);
    // The boot ran once: the stand-in left its records in the rootfs.
    assert.ok(fs.existsSync(path.join(root, 'var/log/k3s-stand-in/health-calls')));
    // Nothing of the preinit boot is left on the host: no instance, no credentials, no kubeconfig.
    assert.equal(fs.existsSync(path.join(box.dataDir, 'instances', 'pi-preinit')), false);
    assert.equal(fs.existsSync(path.join(box.configDir, 'openshell', 'gateways', 'pi-preinit')), false);
    assert.equal(fs.existsSync(path.join(box.configDir, 'openshell', 'gateways', 'pi')), false);
    assert.equal(fs.existsSync(path.join(box.homeDir, '.kube')), false);

    // rootfs info shows it.
    const info = await box.run(['rootfs', 'info', '--name', 'pi']);
    assert.equal(info.code, 0, info.stderr);
    assert.match(
      info.stdout.toString(),
      /^preinit: .*Ready in \d+\.\d s \(gateway version 0\.0\.0-stand-in\), PKI baked/m,
    );

    // A cold first boot of the same build without --preinit, then the pre-baked one.
    const plain = await box.run(['prepare-rootfs', '--name', 'cold', '-q', ...STAND_IN_BUILD], {
      timeoutMs: 1_200_000,
    });
    assert.equal(plain.code, 0, plain.stderr);
    const cold = await bootOnce('cold');
    assert.equal(cold.bootstrap, 'cold');
    const baked = await bootOnce('pi');
    assert.equal(baked.bootstrap, 'pre-baked');
    // The client files written from the baked PKI: its CA is the one recorded.
    const ca = fs.readFileSync(
      path.join(box.configDir, 'openshell', 'gateways', 'pi', 'mtls', 'ca.crt'),
      'utf8',
    );
    assert.equal(ca.trim(), fs.readFileSync(path.join(root, 'opt/openshell/pki/ca.crt'), 'utf8').trim());
    const ratio = Number(cold.readyMs) / Number(baked.readyMs);
    console.log(
      `# boot to Ready: cold first boot ${cold.readyMs} ms, pre-initialized ${baked.readyMs} ms (${ratio.toFixed(2)}x)`,
    );
  });

  test('a failed preinit leaves the previous rootfs as it was', { timeout: 900_000 }, async () => {
    // Without python3-grpcio the stand-in serves no Health: the preinit boot never gets Ready.
    const first = await box.run(['prepare-rootfs', '--name', 'keep', '-q', ...STAND_IN_FILES], {
      timeoutMs: 900_000,
    });
    assert.equal(first.code, 0, first.stderr);
    const recordFile = path.join(rootfsOf('keep'), 'opt/openshell/rootfs.json');
    const before = fs.readFileSync(recordFile, 'utf8');
    const failed = await box.run(
      [
        'prepare-rootfs',
        '--name',
        'keep',
        '--force',
        '--preinit',
        '--preinit-timeout',
        '30',
        ...STAND_IN_FILES,
      ],
      { timeoutMs: 900_000 },
    );
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /not HEALTHY within 30 s|did not answer mTLS/);
    assert.match(failed.stderr, /the previous rootfs is kept/);
    assert.equal(fs.existsSync(path.join(rootfsOf('keep'), 'opt/openshell/pki')), false);
    assert.equal(fs.readFileSync(recordFile, 'utf8'), before);
    assert.equal(fs.existsSync(path.join(box.dataDir, 'instances', 'keep-preinit')), false);
    const leftovers = fs
      .readdirSync(path.join(box.dataDir, 'instances', 'keep'))
      .filter((n) => n !== 'rootfs');
    assert.ok(!leftovers.some((n) => n.startsWith('rootfs.')), `temporary trees left: ${leftovers}`);
  });
});
