import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { readEnvironment } from '../../src/config/environment.ts';
import { readMtlsBundle } from '../../src/gateway/client-config.ts';
import { generatePki } from '../../src/gateway/pki.ts';
import { mtlsHandshake } from '../../src/gateway/readiness.ts';
import { findGvproxy } from '../../src/net/gvproxy.ts';
import { buildLibkrunDouble } from '../fixtures/libkrun-double.ts';
import { buildFakeLibkrunfw, fakeKernelImage } from '../fixtures/libkrunfw/fake-libkrunfw.ts';
import { mmdebstrapMissing, STAND_IN_BUILD } from '../fixtures/stand-in.ts';
import { type CliRun, type Sandbox, sandbox } from './harness.ts';

// The gateway's guest init in a real VM (TCG) on a Debian rootfs from the rootfs builder, with a
// STAND-IN k3s (test/fixtures/k3s-stand-in.sh): it is not k3s; it records what the init gave it,
// probes the network, and serves mTLS on the gateway port with the certificates the host bootstrap
// injected. Real k3s is exercised by k3s.test.ts when OPENSHELL_VM_K3S is set.
const missing = mmdebstrapMissing;

const K3S = 'var/lib/rancher/k3s';
const CONTAINERD = `${K3S}/agent/containerd`;

/** Runs the gateway until Ready, hands the Ready object to `whileReady`, then stops it with SIGINT. */
async function bootGateway(
  box: Sandbox,
  args: readonly string[],
  whileReady: (ready: Record<string, unknown>) => Promise<void>,
): Promise<CliRun> {
  let resolveReady: (v: { ready: Record<string, unknown>; kill: (s: NodeJS.Signals) => void }) => void;
  const readyP = new Promise<{ ready: Record<string, unknown>; kill: (s: NodeJS.Signals) => void }>(
    (r) => (resolveReady = r),
  );
  const running = box.run(['--name', 'gw', '--json', ...args], {
    timeoutMs: 600_000,
    onEvent: (e, child) => {
      if (e.type === 'ready') resolveReady({ ready: e, kill: child.kill });
    },
  });
  const first = await Promise.race([readyP, running]);
  if ('code' in first) assert.fail(`the gateway ended before Ready (exit ${first.code}):\n${first.stderr}`);
  try {
    await whileReady(first.ready);
  } finally {
    first.kill('SIGINT');
  }
  const result = await running;
  assert.equal(result.code, 0, `Ctrl-C after Ready exits 0:\n${result.stderr}`);
  await box.assertClean(result, 'gw');
  return result;
}

describe('gateway boot with a stand-in k3s', { skip: missing }, () => {
  let box: Sandbox;
  let rootfs: string;
  let hostHttp: http.Server;
  let hostPort: number;
  const at = (p: string) => path.join(rootfs, p);
  const record = (name: string) => fs.readFileSync(at(`var/log/k3s-stand-in/${name}`), 'utf8');

  before(async () => {
    box = sandbox();
    hostHttp = http.createServer((_req, res) => res.end('host says hi\n'));
    await new Promise<void>((r) => hostHttp.listen(0, '127.0.0.1', r));
    hostPort = (hostHttp.address() as AddressInfo).port;
    const build = await box.run(['prepare-rootfs', '--name', 'gw', '-q', ...STAND_IN_BUILD]);
    assert.equal(build.code, 0, build.stderr);
    rootfs = path.join(box.dataDir, 'instances', 'gw', 'rootfs');
  });
  after(() => {
    hostHttp?.close();
    box?.cleanup();
  });

  test('a kernel or rootfs that lacks a capability fails fast, naming it', { timeout: 300_000 }, async () => {
    fs.renameSync(at('usr/local/bin/k3s'), at('usr/local/bin/k3s.away'));
    try {
      const r = await box.run(['--name', 'gw', '--ready-timeout', '300']);
      assert.equal(r.code, 125, r.stderr);
      assert.match(
        r.stderr,
        /error: the gateway guest stopped: this kernel cannot run the gateway: missing k3s_bin \(k3s at \/usr\/local\/bin\/k3s\)/,
      );
      assert.match(r.stderr, /hint: last console lines:/);
      assert.match(r.stderr, /guest: stale runtime and network state removed/, 'guest progress is shown');
      await box.assertClean(r, 'gw');
    } finally {
      fs.renameSync(at('usr/local/bin/k3s.away'), at('usr/local/bin/k3s'));
    }
  });

  test('--backend libkrun: a libkrunfw whose kernel lacks an option, or cannot be read, is refused naming it, before any libkrun call', async () => {
    const bundle = fs.mkdtempSync(path.join(box.dataDir, 'krun-'));
    buildLibkrunDouble(bundle);
    fs.symlinkSync(await findGvproxy(readEnvironment()), path.join(bundle, 'gvproxy'));
    const calls = path.join(bundle, 'calls.ndjson');
    const env = { OPENSHELL_VM_RUNTIME_DIR: bundle, KRUN_DOUBLE_LOG: calls };
    // The double's stand-in libkrunfw has no kernel to read.
    const unreadable = await box.run(['--name', 'gw', '--backend', 'libkrun'], { env });
    assert.equal(unreadable.code, 2, unreadable.stderr);
    assert.match(
      unreadable.stderr,
      /--backend libkrun: the gateway cannot run on this runtime: its libkrunfw cannot be read/,
    );
    assert.match(unreadable.stderr, /openshell-vm kernel build --target libkrunfw/);
    assert.deepEqual(unreadable.processes, []);
    await box.assertClean(unreadable, 'gw');
    // A kernel whose configuration (IKCONFIG) lacks CONFIG_NETFILTER: named, with the fix.
    const fragment = fs.readFileSync(new URL('../../src/kernel/openshell.kconfig', import.meta.url), 'utf8');
    const config = fragment
      .split('\n')
      .filter((l) => /^CONFIG_\w+=/.test(l) && !l.startsWith('CONFIG_NETFILTER='))
      .map((l) => l.replace(/=m$/, '=y'))
      .join('\n');
    buildFakeLibkrunfw(path.join(bundle, 'libkrunfw.so.5'), {
      kernel: fakeKernelImage({ release: '6.12.118-standin', ikconfig: `${config}\n` }),
    });
    const lacking = await box.run(['--name', 'gw', '--backend', 'libkrun'], { env });
    assert.equal(lacking.code, 2, lacking.stderr);
    assert.match(
      lacking.stderr,
      /the gateway cannot run on this runtime: libkrunfw libkrunfw\.so\.5: its kernel lacks 1 option\(s\) the gateway needs built in: CONFIG_NETFILTER/,
    );
    assert.match(lacking.stderr, /openshell-vm kernel build --target libkrunfw/);
    assert.deepEqual(lacking.processes, []);
    assert.equal(fs.existsSync(calls), false, 'no libkrun call was made');
    await box.assertClean(lacking, 'gw');
  });

  test('readiness: the deadline ends the boot with the console lines, leaving nothing', {
    timeout: 300_000,
  }, async () => {
    const r = await box.run(['--name', 'gw', '--ready-timeout', '2']);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr, /error: the gateway did not answer mTLS on 127\.0\.0\.1:30051 within 2 s/);
    assert.match(r.stderr, /hint: .*--ready-timeout/);
    await box.assertClean(r, 'gw');
  });

  test('cold boot: stale state cleaned, manifests and CNI written, k3s argv, mTLS and kubeconfig', {
    timeout: 600_000,
  }, async () => {
    // A first boot for this host and rootfs (the tests above ran the bootstrap already).
    fs.rmSync(path.join(box.configDir, 'openshell'), { recursive: true, force: true });
    fs.rmSync(at(`${K3S}/server/manifests/openshell-tls-secrets.yaml`), { force: true });
    // Stale state as a crashed gateway leaves it on disk, and things that must survive.
    const plant = (p: string, data = 'x') => {
      fs.mkdirSync(path.dirname(at(p)), { recursive: true });
      fs.writeFileSync(at(p), data);
    };
    const socket = (p: string) => {
      fs.mkdirSync(path.dirname(at(p)), { recursive: true });
      // A relative path: the full one is longer than a socket address may be.
      const made = spawnSync(
        process.execPath,
        [
          '-e',
          `require('net').createServer().listen(${JSON.stringify(path.basename(p))}, () => process.exit(0))`,
        ],
        { stdio: 'inherit', cwd: path.dirname(at(p)) },
      );
      assert.equal(made.status, 0);
      assert.ok(fs.lstatSync(at(p)).isSocket());
    };
    socket(`${K3S}/server/kine.sock`);
    plant(`${K3S}/server/cred/node-passwd`);
    plant(`${K3S}/server/tls/temporary-certs/x.crt`);
    plant(`${CONTAINERD}/io.containerd.runtime.v2.task/k8s.io/abc/shim.pid`, '4242');
    plant(`${CONTAINERD}/io.containerd.sandbox.controller.v1.shim/abc/state`);
    plant(`${CONTAINERD}/io.containerd.content.v1.content/ingest/stale`);
    plant(`${CONTAINERD}/io.containerd.metadata.v1.bolt/meta.db`, 'bolt');
    plant(`${CONTAINERD}/io.containerd.content.v1.content/blobs/sha256/keep`, 'blob');
    plant(`${CONTAINERD}/io.containerd.snapshotter.v1.native/snapshots/1/keep`, 'layer');
    socket(`${CONTAINERD}/io.containerd.snapshotter.v1.native/snapshots/1/keep.sock`);
    plant('var/lib/cni/networks/bridge/10.42.0.7', 'abc');
    plant('var/lib/cni/results/bridge-abc-eth0', '{}');
    plant(`${K3S}/agent/etc/cni/net.d/10-flannel.conflist`, '{}');
    plant('etc/cni/net.d/10-ptp.conflist', '{}');
    plant(`${K3S}/server/manifests/openshell-orphan.yaml`, 'kind: ConfigMap\n');
    plant(`${K3S}/server/manifests/agent-orphan.yaml`, 'kind: ConfigMap\n');
    plant(`${K3S}/server/manifests/user-own.yaml`, 'kind: ConfigMap\n');
    const sandboxYaml =
      'kind: Deployment\nspec:\n  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n  x: 1\n';
    plant('opt/openshell/manifests/agent-sandbox.yaml', sandboxYaml);
    // The stand-in's Health answers DEGRADED twice, then HEALTHY (test/fixtures/k3s-stand-in.sh).
    plant(
      'etc/ovm-stand-in.env',
      `HOST_HTTP_PORT=${hostPort}\nHEALTH_SEQUENCE='DEGRADED DEGRADED HEALTHY'\nHEALTH_VERSION=0.0.0-stand-in\n`,
    );

    const run = await bootGateway(box, ['--ready-timeout', '400'], async (ready) => {
      // Ready only once Health said HEALTHY: the calls before it were DEGRADED, and it said so.
      assert.deepEqual(record('health-calls').trim().split('\n').slice(0, 3), [
        '1 DEGRADED',
        '2 DEGRADED',
        '3 HEALTHY',
      ]);
      assert.equal(ready.gatewayVersion, '0.0.0-stand-in');
      // verify: no Kubernetes API in the stand-in (exit 2), but the gateway port's checks pass.
      const verify = await box.run(['verify', '--name', 'gw', '--timeout', '2', '--json']);
      assert.equal(verify.code, 2, verify.stderr);
      const checks = Object.fromEntries(
        (
          JSON.parse(verify.stdout.toString()).results as { name: string; status: string; detail: string }[]
        ).map((c) => [c.name, `${c.status}: ${c.detail}`]),
      );
      assert.match(checks['gateway-port-mtls'] ?? '', /^pass/);
      assert.match(
        checks['gateway-health'] ?? '',
        /^pass: openshell\.v1\.OpenShell\/Health: HEALTHY \(version 0\.0\.0-stand-in\)/,
      );
      assert.equal(ready.bootstrap, 'cold');
      assert.equal(ready.endpoint, 'https://127.0.0.1:30051');
      // The host's files, in the OpenShell CLI's layout and modes.
      const gw = path.join(box.configDir, 'openshell', 'gateways', 'gw');
      assert.equal(ready.mtlsDir, path.join(gw, 'mtls'));
      const meta = JSON.parse(fs.readFileSync(path.join(gw, 'metadata.json'), 'utf8'));
      assert.deepEqual(meta, {
        name: 'gw',
        gateway_endpoint: 'https://127.0.0.1:30051',
        is_remote: false,
        gateway_port: 30051,
      });
      assert.equal(fs.statSync(path.join(gw, 'mtls')).mode & 0o777, 0o700);
      assert.equal(fs.statSync(path.join(gw, 'mtls', 'tls.key')).mode & 0o777, 0o600);
      assert.equal(fs.readFileSync(path.join(box.configDir, 'openshell', 'active_gateway'), 'utf8'), 'gw');
      const bundle = await readMtlsBundle(path.join(box.configDir, 'openshell'), 'gw');
      assert.ok(bundle);
      const client = new X509Certificate(bundle.clientCert);
      assert.match(client.toLegacyObject().ext_key_usage?.join(',') ?? '', /1\.3\.6\.1\.5\.5\.7\.3\.2/);

      // The stand-in's server accepts the host's client certificate, and no other.
      assert.equal(await mtlsHandshake(30051, bundle), 'ok');
      const stranger = await generatePki();
      const foreign = {
        caCert: bundle.caCert,
        clientCert: stranger.clientCert,
        clientKey: stranger.clientKey,
      };
      const refused = await mtlsHandshake(30051, foreign).catch((e: Error) => e.message);
      assert.ok(
        refused === 'closed' || /refuses the client certificate/.test(refused),
        `a foreign client certificate: ${refused}`,
      );
      await assert.rejects(
        mtlsHandshake(30051, { ...bundle, caCert: stranger.caCert }),
        /fails mTLS/,
        'a server the CA did not sign is refused',
      );

      // The kubeconfig: k3s's, pointed at the forwarded API port and named for the instance.
      const kube = YAML.parse(fs.readFileSync(path.join(box.homeDir, '.kube', 'gw.yaml'), 'utf8'));
      assert.equal(ready.kubeconfig, path.join(box.homeDir, '.kube', 'gw.yaml'));
      assert.equal(kube.clusters[0].cluster.server, ready.kubeApi);
      assert.match(String(ready.kubeApi), /^https:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(kube['current-context'], 'gw');
      assert.equal(fs.statSync(path.join(box.homeDir, '.kube', 'gw.yaml')).mode & 0o777, 0o600);
      assert.equal(
        fs.existsSync(path.join(box.homeDir, '.kube', 'config')),
        false,
        '~/.kube/config untouched',
      );
    });
    const ready = JSON.parse(run.stdout.toString().trim());
    assert.equal(ready.name, 'gw');
    // The wait said why it went on, once: the progress line of the DEGRADED answers.
    const said =
      run.stderr.match(/Health says DEGRADED \(version 0\.0\.0-stand-in\); waiting for HEALTHY/g) ?? [];
    assert.equal(said.length, 1, run.stderr);

    // What the stand-in saw when the init started it.
    assert.deepEqual(record('argv').trim().split('\n'), [
      'server',
      '--disable=traefik,servicelb,metrics-server',
      '--disable-network-policy',
      '--write-kubeconfig-mode=644',
      '--node-ip=192.168.127.2',
      '--kube-apiserver-arg=bind-address=0.0.0.0',
      '--resolv-conf=/etc/resolv.conf',
      '--tls-san=localhost,127.0.0.1,10.0.2.15,192.168.127.2',
      '--flannel-backend=none',
      '--snapshotter=native',
      '--kube-proxy-arg=proxy-mode=nftables',
    ]);
    assert.deepEqual(
      record('env')
        .trim()
        .split('\n')
        .map((l) => l.split('=')[0]),
      ['HOME', 'PATH', 'PWD'],
    );
    assert.equal(record('hostname').trim(), 'gateway');
    const files = record('files');
    const section = (name: string) =>
      (files.split(`## ${name}\n`)[1] ?? '').split('\n## ')[0]?.trim().split('\n').filter(Boolean) ?? [];
    assert.deepEqual(section('manifests').sort(), [
      'agent-sandbox.yaml',
      'openshell-helmchart.yaml',
      'openshell-tls-secrets.yaml',
      'user-own.yaml',
    ]);
    assert.deepEqual(section('cni'), ['10-bridge.conflist']);
    assert.deepEqual(section('present').sort(), [
      `/${CONTAINERD}/io.containerd.content.v1.content/blobs/sha256/keep`,
      `/${CONTAINERD}/io.containerd.metadata.v1.bolt/meta.db`,
      `/${CONTAINERD}/io.containerd.snapshotter.v1.native/snapshots/1/keep`,
      `/${CONTAINERD}/io.containerd.snapshotter.v1.native/snapshots/1/keep.sock`,
      `/${K3S}/server/manifests/user-own.yaml`,
    ]);
    const conflist = JSON.parse(record('conflist'));
    assert.equal(conflist.cniVersion, '1.0.0');
    assert.deepEqual(
      conflist.plugins.map((p: { type: string }) => p.type),
      ['bridge', 'portmap', 'loopback'],
    );
    assert.equal(conflist.plugins[0].bridge, 'cni0');
    assert.equal(conflist.plugins[0].ipMasq, true);
    assert.deepEqual(conflist.plugins[0].ipam.ranges, [[{ subnet: '10.42.0.0/24' }]]);
    assert.doesNotMatch(record('helmchart'), /__[A-Z_]+__/);
    assert.equal(record('agent-sandbox'), 'kind: Deployment\nspec:\n  x: 1\n');
    assert.match(record('nft'), /ip daddr 192\.168\.127\.1 tcp dport 80 .*drop/);

    // gvproxy's API is out of reach from the guest and from a pod-like namespace, with the
    // guest's nftables guard and without it (the host's frame filter drops it: guest root deleting
    // the guard changes nothing); DNS and outbound traffic through gvproxy work.
    const probes = Object.fromEntries(
      record('probes')
        .trim()
        .split('\n')
        .map((l) => l.split(' ')),
    );
    for (const name of ['guest-host-http', 'pod-host-http'])
      if (probes[name] !== 'ok')
        console.error(
          `${name}: tries`,
          JSON.stringify(record(`tries-${name}`)),
          'later:',
          JSON.stringify(record('host-http-raw')),
        );
    assert.deepEqual(probes, {
      // (on failure, var/log/k3s-stand-in/host-http-raw holds the host server's raw answer)
      'guest-gvproxy-api': 'fail',
      'guest-dns': 'ok',
      'guest-host-http': 'ok',
      'pod-gvproxy-api': 'fail',
      'pod-host-http': 'ok',
      'guest-gvproxy-api-unguarded': 'fail',
      'pod-gvproxy-api-unguarded': 'fail',
      'guest-gvproxy-api-reguarded': 'fail',
    });

    // Stale pod networking in a running kernel, removed by the init's clean-network step.
    const clean = record('clean-network');
    const before = (clean.split('## before\n')[1] ?? '').split('## after')[0] ?? '';
    const afterPart = (clean.split('## after\n')[1] ?? '').split('## end')[0] ?? '';
    for (const name of ['cni0', 'vstale0', 'stale-pod']) assert.match(before, new RegExp(name));
    assert.deepEqual(afterPart.trim().split('\n'), ['lo', 'eth0']);
  });

  test('warm boot on another port: same credentials, metadata follows --port, --merge-kubeconfig', {
    timeout: 600_000,
  }, async () => {
    const cfg = path.join(box.configDir, 'openshell');
    const before = await readMtlsBundle(cfg, 'gw');
    const kubeDir = path.join(box.homeDir, '.kube');
    const existing = YAML.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'work', cluster: { server: 'https://work.example:6443' } }],
      users: [{ name: 'work', user: { token: 't' } }],
      contexts: [{ name: 'work', context: { cluster: 'work', user: 'work' } }],
      'current-context': 'work',
    });
    fs.mkdirSync(kubeDir, { recursive: true });
    fs.writeFileSync(path.join(kubeDir, 'config'), existing);
    await bootGateway(
      box,
      ['-p', '30951:30051', '--merge-kubeconfig', '--ready-timeout', '400'],
      async (ready) => {
        assert.equal(ready.bootstrap, 'warm');
        assert.equal(ready.endpoint, 'https://127.0.0.1:30951');
        const meta = JSON.parse(fs.readFileSync(path.join(cfg, 'gateways', 'gw', 'metadata.json'), 'utf8'));
        assert.equal(meta.gateway_port, 30951);
        const after = await readMtlsBundle(cfg, 'gw');
        assert.deepEqual(after, before);
        assert.equal(await mtlsHandshake(30951, after as NonNullable<typeof after>), 'ok');
        const merged = YAML.parse(fs.readFileSync(path.join(kubeDir, 'config'), 'utf8'));
        assert.deepEqual(merged.contexts.map((c: { name: string }) => c.name).sort(), [
          'openshell-gw',
          'work',
        ]);
        assert.equal(merged['current-context'], 'work', 'current-context is kept unless --use-context');
        assert.equal(typeof ready.kubeconfigBackup, 'string');
        assert.equal(fs.readFileSync(String(ready.kubeconfigBackup), 'utf8'), existing);
        // The running gateway as status and exec see it: endpoints, KUBECONFIG in the guest.
        const status = JSON.parse((await box.run(['status', 'gw', '--json'])).stdout.toString());
        assert.equal(status.status, 'running');
        assert.equal(status.mode, 'gateway');
        assert.equal(status.endpoints.gateway, 'https://127.0.0.1:30951');
        assert.equal(status.endpoints.gatewayVersion, '0.0.0-stand-in');
        const exec = await box.run(['exec', 'gw', '--', 'sh', '-c', 'echo "$KUBECONFIG"; hostname']);
        assert.equal(exec.code, 0, exec.stderr);
        assert.equal(exec.stdout.toString(), '/etc/rancher/k3s/k3s.yaml\ngateway\n');
        // The agent runs from its copy in /run (tmpfs), not from the virtio-fs root (TCG: stale code).
        const agentExe = await box.run(['exec', 'gw', '--', 'sh', '-c', 'readlink /proc/$PPID/exe']);
        assert.equal(agentExe.stdout.toString().trim(), '/run/ovm-agent', agentExe.stderr);
      },
    );
    // Ctrl-C stopped the guest in order: the agent asked PID 1, which stopped k3s first.
    const console = await box.run(['logs', 'gw']);
    assert.match(console.stdout.toString(), /stopping k3s/);
    // The stale state of a stopped gateway (the stand-in's own kubeconfig and records) is there,
    // and this boot's cleanup ran again: no leftovers from the first boot's task dirs.
    assert.equal(fs.existsSync(at(`${CONTAINERD}/io.containerd.runtime.v2.task`)), false);
    assert.ok(fs.existsSync(at(`${CONTAINERD}/io.containerd.metadata.v1.bolt/meta.db`)));
  });

  // The last test: it resets, then deletes the instance (rootfs included).
  test('--reset: cold bootstrap with new credentials, cluster state gone, images kept, merged context taken out; then delete', {
    timeout: 600_000,
  }, async () => {
    const cfg = path.join(box.configDir, 'openshell');
    const kubeDir = path.join(box.homeDir, '.kube');
    const config = path.join(kubeDir, 'config');
    const caOf = (
      doc: { clusters: { name: string; cluster: Record<string, string> }[] },
      name = 'openshell-gw',
    ) => doc.clusters.find((c) => c.name === name)?.cluster['certificate-authority-data'];
    const before = await readMtlsBundle(cfg, 'gw');
    const mergedBefore = YAML.parse(fs.readFileSync(config, 'utf8'));
    const oldCa = caOf(mergedBefore);
    assert.ok(before && oldCa, 'the previous test left credentials and a merged context');
    const notGw = (list: { name: string }[]) => list.filter((x) => x.name !== 'openshell-gw');
    const theirs = {
      ...mergedBefore,
      clusters: notGw(mergedBefore.clusters),
      users: notGw(mergedBefore.users),
      contexts: notGw(mergedBefore.contexts),
    };
    // Cluster state to forget, and an image layer to keep.
    fs.mkdirSync(at(`${K3S}/server/tls`), { recursive: true });
    fs.writeFileSync(at(`${K3S}/server/tls/planted-by-test`), 'x');
    fs.writeFileSync(at(`${K3S}/server/token`), 'old-token');
    const kept = at(`${CONTAINERD}/io.containerd.content.v1.content/planted-by-test`);
    fs.mkdirSync(path.dirname(kept), { recursive: true });
    fs.writeFileSync(kept, 'layer');
    const run = await bootGateway(box, ['--reset', '--ready-timeout', '400'], async (ready) => {
      assert.equal(ready.bootstrap, 'cold');
      const after = await readMtlsBundle(cfg, 'gw');
      assert.ok(after);
      assert.notEqual(after.caCert, before.caCert, 'a new CA');
      assert.equal(await mtlsHandshake(30051, after), 'ok');
      assert.notEqual(
        await mtlsHandshake(30051, before).catch(() => 'refused'),
        'ok',
        'the old client is refused',
      );
      // The merged context went with the old credentials; the user's own entries stayed.
      assert.deepEqual(YAML.parse(fs.readFileSync(config, 'utf8')), theirs);
      assert.notEqual(
        caOf(YAML.parse(fs.readFileSync(path.join(kubeDir, 'gw.yaml'), 'utf8')), 'gw'),
        oldCa,
        'the new kubeconfig carries the new CA',
      );
    });
    assert.match(run.stderr, /reset: cluster state and credentials of 'gw' removed/);
    assert.match(run.stderr, /reset: taken out of .*config: cluster, user, context 'openshell-gw' \(backup /);
    assert.equal(fs.existsSync(at(`${K3S}/server/tls/planted-by-test`)), false);
    assert.equal(fs.existsSync(at(`${K3S}/server/token`)), false);
    assert.equal(fs.readFileSync(kept, 'utf8'), 'layer', 'the content store is kept');

    // Merged again, then delete takes out what --merge-kubeconfig added, and nothing else.
    await bootGateway(box, ['--merge-kubeconfig', '--ready-timeout', '400'], async () => {
      assert.deepEqual(
        YAML.parse(fs.readFileSync(config, 'utf8'))
          .contexts.map((c: { name: string }) => c.name)
          .sort(),
        ['openshell-gw', 'work'],
      );
    });
    const del = await box.run(['delete', 'gw']);
    assert.equal(del.code, 0, del.stderr);
    assert.match(del.stdout.toString(), /config: cluster, user, context 'openshell-gw' \(backup /);
    assert.deepEqual(YAML.parse(fs.readFileSync(config, 'utf8')), theirs);
    assert.equal(fs.existsSync(path.join(kubeDir, 'gw.yaml')), false);
    assert.equal(fs.existsSync(path.join(cfg, 'gateways', 'gw')), false);
    assert.equal(fs.existsSync(path.join(box.dataDir, 'instances', 'gw')), false);
  });
});
