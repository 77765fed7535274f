// Hostile guest → host through the kubeconfig (issue 13, item 1). The guest writes
// /etc/rancher/k3s/k3s.yaml; the gateway turns it into ~/.kube/NAME.yaml (and, with
// --merge-kubeconfig, entries in ~/.kube/config) with rewriteKubeconfig, and `verify` reads that
// file. Nothing the guest puts there may make the host run a command or trust another server.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import { mergeKubeconfig, rewriteKubeconfig } from '../../src/gateway/kubeconfig.ts';
import { generatePki } from '../../src/gateway/pki.ts';
import { verifyGateway } from '../../src/gateway/verify.ts';

const pki = await generatePki();
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A guest-written k3s.yaml: k3s's real shape and credentials, plus what the attacker adds. */
function hostileK3sYaml(extra: { cluster?: object; user?: object }): string {
  return YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: 'default',
        cluster: {
          'certificate-authority-data': b64(pki.caCert),
          server: 'https://127.0.0.1:6443',
          ...extra.cluster,
        },
      },
    ],
    users: [
      {
        name: 'default',
        user: {
          'client-certificate-data': b64(pki.clientCert),
          'client-key-data': b64(pki.clientKey),
          ...extra.user,
        },
      },
    ],
    contexts: [{ name: 'default', context: { cluster: 'default', user: 'default' } }],
    'current-context': 'default',
  });
}

/** The host's kubeconfig from the guest's file, as the gateway writes it; its one cluster and user. */
function hostEntry(extra: { cluster?: object; user?: object }) {
  let text: string;
  try {
    text = rewriteKubeconfig(hostileK3sYaml(extra), { name: 'gw', port: 40123 });
  } catch (err) {
    return { refused: err as Error, text: '', cluster: {}, user: {} };
  }
  const doc = YAML.parse(text);
  return { refused: undefined, text, cluster: doc.clusters[0].cluster, user: doc.users[0].user };
}

const DATA_ONLY_USER = ['client-certificate-data', 'client-key-data'];
const DATA_ONLY_CLUSTER = ['certificate-authority-data', 'server'];

test('hostile guest: an exec plugin in k3s.yaml is not carried into the host kubeconfig', () => {
  const e = hostEntry({
    user: { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: '/bin/sh', args: ['-c', 'id'] } },
  });
  assert.equal(e.refused, undefined);
  assert.deepEqual(Object.keys(e.user).sort(), DATA_ONLY_USER);
  assert.doesNotMatch(e.text, /exec|\/bin\/sh/);
});

test('hostile guest: an auth-provider in k3s.yaml is not carried into the host kubeconfig', () => {
  const e = hostEntry({
    user: { 'auth-provider': { name: 'gcp', config: { 'cmd-path': '/bin/sh', 'cmd-args': '-c id' } } },
  });
  assert.deepEqual(Object.keys(e.user).sort(), DATA_ONLY_USER);
  assert.doesNotMatch(e.text, /auth-provider|cmd-path/);
});

test('hostile guest: a tokenFile (or other file path) in k3s.yaml is not carried into the host kubeconfig', () => {
  const e = hostEntry({
    user: { tokenFile: '/root/.ssh/id_ed25519', 'client-key': '/etc/shadow' },
    cluster: { 'certificate-authority': '/etc/ssl/private/host.pem' },
  });
  assert.deepEqual(Object.keys(e.user).sort(), DATA_ONLY_USER);
  assert.deepEqual(Object.keys(e.cluster).sort(), DATA_ONLY_CLUSTER);
  assert.doesNotMatch(e.text, /tokenFile|\/etc\/shadow|\/root\/|\/etc\/ssl/);
});

test('hostile guest: insecure-skip-tls-verify in k3s.yaml is not carried into the host kubeconfig', () => {
  const e = hostEntry({ cluster: { 'insecure-skip-tls-verify': true } });
  assert.deepEqual(Object.keys(e.cluster).sort(), DATA_ONLY_CLUSTER);
  assert.doesNotMatch(e.text, /insecure/);
});

test('hostile guest: a cluster pointing elsewhere (server, proxy-url, tls-server-name) is replaced by our loopback server', () => {
  const e = hostEntry({
    cluster: {
      server: 'https://attacker.example:6443',
      'proxy-url': 'http://attacker.example:3128',
      'tls-server-name': 'attacker.example',
      extensions: [{ name: 'x', extension: {} }],
    },
  });
  assert.equal(e.cluster.server, 'https://127.0.0.1:40123');
  assert.deepEqual(Object.keys(e.cluster).sort(), DATA_ONLY_CLUSTER);
  assert.doesNotMatch(e.text, /attacker/);
});

test('hostile guest: a CA or client key that is not PEM data is refused, not written', () => {
  for (const extra of [
    { cluster: { 'certificate-authority-data': b64('/etc/ssl/certs/ca.pem') } },
    { user: { 'client-key-data': undefined, 'client-key': '/home/user/.ssh/id_rsa' } },
  ]) {
    assert.match(String(hostEntry(extra).refused?.message), /is not PEM|is missing|not the PEM private key/);
  }
});

test('hostile guest: --merge-kubeconfig puts no exec plugin from k3s.yaml into ~/.kube/config', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-hostile-kube-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const target = path.join(dir, 'config');
  let entry: string;
  try {
    entry = rewriteKubeconfig(
      hostileK3sYaml({ user: { exec: { command: '/bin/sh', args: ['-c', 'id'] } } }),
      {
        name: 'gw',
        port: 40123,
      },
    );
  } catch {
    return; // refused: nothing merged
  }
  await mergeKubeconfig(target, entry);
  const merged = await fs.readFile(target, 'utf8');
  assert.doesNotMatch(merged, /exec|\/bin\/sh/);
});

test('hostile guest: verify does not run an exec plugin planted in the kubeconfig', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-hostile-verify-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const marker = path.join(dir, 'PWNED');
  // A loopback port nobody listens on: the exec plugin runs (if it runs) before the request fails.
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const credential = JSON.stringify({
    apiVersion: 'client.authentication.k8s.io/v1',
    kind: 'ExecCredential',
    status: { token: 'x' },
  });
  // What 5ac75d2 wrote to ~/.kube/NAME.yaml from a hostile k3s.yaml: the guest's user, verbatim.
  const planted = YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: 'gw',
        cluster: { server: `https://127.0.0.1:${port}`, 'certificate-authority-data': b64(pki.caCert) },
      },
    ],
    users: [
      {
        name: 'gw',
        user: {
          exec: {
            apiVersion: 'client.authentication.k8s.io/v1',
            command: '/bin/sh',
            args: ['-c', `touch '${marker}'; echo '${credential}'`],
            interactiveMode: 'Never',
          },
        },
      },
    ],
    contexts: [{ name: 'gw', context: { cluster: 'gw', user: 'gw' } }],
    'current-context': 'gw',
  });
  const kubeconfig = path.join(dir, 'gw.yaml');
  await fs.writeFile(kubeconfig, planted, { mode: 0o600 });
  const outcome = await verifyGateway({ kubeconfig, timeoutMs: 1_000, exec: false }).catch(
    (err: Error) => err,
  );
  const ran = await fs
    .access(marker)
    .then(() => true)
    .catch(() => false);
  assert.equal(ran, false, 'the planted exec plugin ran on the host');
  assert.ok(outcome instanceof Error, 'a kubeconfig with an exec plugin is refused');
  assert.match(outcome.message, /has exec/);
});
