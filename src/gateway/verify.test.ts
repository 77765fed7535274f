import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startGrpcGateway } from '../../test/fixtures/grpc-gateway.ts';
import { buildKubeconfig } from './kubeconfig-entry.ts';
import { generatePki } from './pki.ts';
import { verifyGateway } from './verify.ts';

// A fake Kubernetes API server (HTTPS with the gateway's PKI, asking for the client certificate;
// canned JSON): verify's checks are exercised against healthy and broken clusters here; the real
// one runs in the OPENSHELL_VM_K3S-gated e2e test. verify takes only kubeconfigs shaped like ours.
const pki = await generatePki();
const b64 = (s: string) => Buffer.from(s).toString('base64');
const kubeconfigFor = (port: number) =>
  buildKubeconfig({
    name: 'gw',
    port,
    credentials: { caData: b64(pki.caCert), certData: b64(pki.clientCert), keyData: b64(pki.clientKey) },
  });
type Routes = Record<string, unknown>;

function healthy(): Routes {
  return {
    '/api/v1/nodes': {
      items: [{ metadata: { name: 'gateway' }, status: { conditions: [{ type: 'Ready', status: 'True' }] } }],
    },
    '/api/v1/namespaces/kube-system/pods': {
      items: [{ metadata: { name: 'coredns-1' }, status: { phase: 'Running' } }],
    },
    '/api/v1/events': { items: [] },
    '/api/v1/pods': {
      items: [
        { metadata: { namespace: 'openshell', name: 'openshell-0' }, status: { containerStatuses: [] } },
      ],
    },
    '/api/v1/namespaces/openshell': { metadata: { name: 'openshell' }, status: { phase: 'Active' } },
    '/api/v1/namespaces/openshell/pods/openshell-0': {
      metadata: { name: 'openshell-0' },
      status: { phase: 'Running', podIP: '10.42.0.9', conditions: [{ type: 'Ready', status: 'True' }] },
    },
    '/api/v1/namespaces/openshell/services': { items: [{ metadata: { name: 'openshell' } }] },
    '/api/v1/namespaces/default/services/kubernetes': {
      metadata: { name: 'kubernetes' },
      spec: { clusterIP: '10.43.0.1' },
    },
  };
}

async function fakeApi(t: { after: (fn: () => void) => void }, routes: Routes) {
  const server = https.createServer(
    { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert, requestCert: true, rejectUnauthorized: true },
    (req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      const body = routes[url.pathname];
      if (body === undefined) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ kind: 'Status', message: `${url.pathname} not found`, code: 404 }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    },
  );
  // exec upgrades (websocket) are refused, as an API server does for a user without pods/exec.
  server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 403 Forbidden\r\n\r\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-verify-'));
  t.after(() => void fs.rm(dir, { recursive: true, force: true }));
  const kubeconfig = path.join(dir, 'kubeconfig');
  await fs.writeFile(kubeconfig, kubeconfigFor(port));
  return kubeconfig;
}

const byName = (r: Awaited<ReturnType<typeof verifyGateway>>) =>
  Object.fromEntries(r.results.map((c) => [c.name, c.status]));

test('verify: a healthy cluster passes every check', async (t) => {
  const kubeconfig = await fakeApi(t, healthy());
  const report = await verifyGateway({ kubeconfig, timeoutMs: 5_000, exec: false });
  assert.equal(report.reachable, true);
  assert.equal(report.fail, 0, JSON.stringify(report.results, null, 2));
  assert.deepEqual(byName(report), {
    'api-server': 'pass',
    'node-exists': 'pass',
    'node-ready': 'pass',
    'kube-system-pods': 'pass',
    'no-sandbox-failures': 'pass',
    'no-cni-errors': 'pass',
    'no-port-clash': 'pass',
    'no-hostnetwork-fallback': 'pass',
    'no-crashloop': 'pass',
    'namespace-openshell': 'pass',
    'gateway-pod-ready': 'pass',
    'gateway-pod-network': 'pass',
    'gateway-services': 'pass',
    'kubernetes-service-vip': 'pass',
  });
});

test('verify: each broken part fails its own check, with the reason', async (t) => {
  const routes = healthy();
  routes['/api/v1/nodes'] = {
    items: [
      {
        metadata: { name: 'gateway' },
        status: { conditions: [{ type: 'Ready', status: 'False', reason: 'KubeletNotReady' }] },
      },
    ],
  };
  routes['/api/v1/namespaces/kube-system/pods'] = {
    items: [{ metadata: { name: 'coredns-1' }, status: { phase: 'Pending' } }],
  };
  routes['/api/v1/events'] = {
    items: [
      {
        reason: 'FailedCreatePodSandBox',
        type: 'Warning',
        message: 'failed to setup network for sandbox: plugin type="bridge" failed: file exists',
        involvedObject: { namespace: 'openshell', name: 'openshell-0' },
      },
    ],
  };
  routes['/api/v1/pods'] = {
    items: [
      {
        metadata: { namespace: 'openshell', name: 'openshell-0' },
        status: { containerStatuses: [{ state: { waiting: { reason: 'CrashLoopBackOff' } } }] },
      },
    ],
  };
  routes['/api/v1/namespaces/openshell/pods/openshell-0'] = {
    status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'False' }] },
  };
  delete routes['/api/v1/namespaces/openshell/services'];
  const kubeconfig = await fakeApi(t, routes);
  const report = await verifyGateway({ kubeconfig, timeoutMs: 5_000 });
  const status = byName(report);
  for (const name of [
    'node-ready',
    'kube-system-pods',
    'no-sandbox-failures',
    'no-cni-errors',
    'no-crashloop',
    'gateway-pod-ready',
    'gateway-pod-network',
    'gateway-services',
    'pod-reaches-kubernetes-svc',
  ]) {
    assert.equal(status[name], 'fail', name);
  }
  assert.equal(status['node-exists'], 'pass');
  const detail = (name: string) => report.results.find((r) => r.name === name)?.detail ?? '';
  assert.match(detail('node-ready'), /Ready=False \(KubeletNotReady\)/);
  assert.match(detail('kube-system-pods'), /Pending: coredns-1/);
  assert.match(
    detail('no-sandbox-failures'),
    /openshell\/openshell-0: FailedCreatePodSandBox: .*file exists/,
  );
  assert.match(detail('no-crashloop'), /CrashLoopBackOff: openshell\/openshell-0/);
  assert.match(detail('gateway-services'), /HTTP 404/);
  assert.match(detail('pod-reaches-kubernetes-svc'), /exec in openshell\/openshell-0: .+/);
  assert.equal(report.fail, 9);
});

test('verify: an API server that does not answer is a prerequisite failure', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-verify-'));
  const kubeconfig = path.join(dir, 'kubeconfig');
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  await fs.writeFile(kubeconfig, kubeconfigFor(port));
  const report = await verifyGateway({ kubeconfig, timeoutMs: 500 });
  await fs.rm(dir, { recursive: true, force: true });
  assert.equal(report.reachable, false);
  assert.deepEqual(byName(report), { 'api-server': 'fail' });
  assert.match(report.results[0]?.detail ?? '', /did not answer within 1 s: fetch failed: .*ECONNREFUSED/);
});

test("verify: the gateway's port is checked by mTLS and Health, also when the API does not answer", async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-verify-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const kubeconfig = path.join(dir, 'kubeconfig');
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const apiPort = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  await fs.writeFile(kubeconfig, kubeconfigFor(apiPort));
  const bundle = { caCert: pki.caCert, clientCert: pki.clientCert, clientKey: pki.clientKey };
  const run = async (answers: Parameters<typeof startGrpcGateway>[1]) => {
    const gw = await startGrpcGateway(pki, answers);
    try {
      return await verifyGateway({ kubeconfig, timeoutMs: 300, gateway: { port: gw.port, bundle } });
    } finally {
      await gw.stop();
    }
  };
  const good = await run([{ status: 1, version: '0.3.1' }]);
  assert.equal(good.reachable, false);
  assert.deepEqual(byName(good), {
    'api-server': 'fail',
    'gateway-port-mtls': 'pass',
    'gateway-health': 'pass',
  });
  assert.match(
    good.results.at(-1)?.detail ?? '',
    /openshell\.v1\.OpenShell\/Health: HEALTHY \(version 0\.3\.1\)/,
  );
  const degraded = await run([{ status: 2, version: '0.3.1' }]);
  assert.equal(byName(degraded)['gateway-health'], 'fail');
  assert.match(degraded.results.at(-1)?.detail ?? '', /DEGRADED \(version 0\.3\.1\)/);
});
