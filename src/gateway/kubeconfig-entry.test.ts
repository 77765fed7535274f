import assert from 'node:assert/strict';
import { test } from 'node:test';
import YAML from 'yaml';
import {
  buildKubeconfig,
  parseHostileYaml,
  readGatewayKubeconfig,
  readK3sCredentials,
  rewriteKubeconfig,
} from './kubeconfig-entry.ts';
import { generatePki } from './pki.ts';

const pki = await generatePki();
const other = await generatePki();
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** What k3s writes to /etc/rancher/k3s/k3s.yaml, with `user` and `cluster` extras mixed in. */
function k3sYaml(extra: { cluster?: object; user?: object } = {}, keys = pki): string {
  return YAML.stringify({
    apiVersion: 'v1',
    clusters: [
      {
        name: 'default',
        cluster: {
          'certificate-authority-data': b64(keys.caCert),
          server: 'https://127.0.0.1:6443',
          ...extra.cluster,
        },
      },
    ],
    contexts: [{ name: 'default', context: { cluster: 'default', user: 'default' } }],
    'current-context': 'default',
    kind: 'Config',
    users: [
      {
        name: 'default',
        user: {
          'client-certificate-data': b64(keys.clientCert + keys.caCert),
          'client-key-data': b64(keys.clientKey),
          ...extra.user,
        },
      },
    ],
  });
}

test("k3s's kubeconfig is rewritten to the forwarded port, named for the instance, with its data only", () => {
  const doc = YAML.parse(rewriteKubeconfig(k3sYaml(), { name: 'gw', port: 41234 }));
  assert.deepEqual(Object.keys(doc.clusters[0].cluster), ['server', 'certificate-authority-data']);
  assert.equal(doc.clusters[0].cluster.server, 'https://127.0.0.1:41234');
  assert.deepEqual(Object.keys(doc.users[0].user), ['client-certificate-data', 'client-key-data']);
  assert.deepEqual(doc.contexts, [{ name: 'gw', context: { cluster: 'gw', user: 'gw' } }]);
  assert.equal(doc['current-context'], 'gw');
  // The data is what k3s gave (re-encoded from the parsed PEM): the same certificates and key.
  const creds = readK3sCredentials(k3sYaml());
  assert.equal(Buffer.from(creds.keyData, 'base64').toString().trim(), pki.clientKey.trim());
  assert.match(Buffer.from(creds.certData, 'base64').toString(), /(-----BEGIN CERTIFICATE-----[\s\S]+){2}/);
});

test('executable or path-carrying fields in the guest file are dropped, not copied', () => {
  const text = rewriteKubeconfig(
    k3sYaml({
      cluster: { 'insecure-skip-tls-verify': true, 'proxy-url': 'http://evil:3128', extensions: [{ a: 1 }] },
      user: { exec: { command: '/bin/sh' }, 'auth-provider': { name: 'x' }, tokenFile: '/etc/shadow' },
    }),
    { name: 'gw', port: 1 },
  );
  for (const word of ['exec', 'auth-provider', 'tokenFile', 'insecure', 'proxy', 'extensions', '6443'])
    assert.ok(!text.includes(word), word);
  // ...and what we write is accepted by the strict host reader.
  assert.equal(readGatewayKubeconfig(text, 'x').server, 'https://127.0.0.1:1');
});

test('credentials that are not PEM of the right kind are refused', () => {
  const bad: [object, RegExp][] = [
    [{ cluster: { 'certificate-authority-data': 'Q0EK' } }, /certificate-authority-data is not PEM/],
    [{ cluster: { 'certificate-authority-data': b64(pki.clientCert) } }, /not a CA certificate/],
    [{ cluster: { 'certificate-authority-data': 'not base64!' } }, /not base64/],
    [{ user: { 'client-certificate-data': undefined } }, /client-certificate-data is missing/],
    [{ user: { 'client-certificate-data': b64(`${pki.clientCert}junk\n`) } }, /not PEM certificates/],
    [{ user: { 'client-key-data': b64(pki.clientCert) } }, /client-key-data is not the PEM private key/],
    [{ user: { 'client-key-data': b64(other.clientKey) } }, /client-key-data is not the PEM private key/],
    [{ user: { 'client-key-data': '/etc/key' } }, /client-key-data is not the PEM private key/],
  ];
  for (const [extra, message] of bad) assert.throws(() => readK3sCredentials(k3sYaml(extra)), message);
});

test('odd shapes and hostile YAML are refused with a message, never a TypeError', () => {
  const cases: [string, RegExp][] = [
    ['users: {}\nclusters: {}\n', /has no cluster or user/],
    ['users: null\nclusters: [1]\n', /has no cluster or user/],
    ['users: "x"\n', /'users' is not a list/],
    ['clusters: [{cluster: 5}]\nusers: [{user: []}]\n', /has no cluster or user/],
    ['- a list\n', /is not a kubeconfig/],
    ['kind: Pod\n', /is not a kubeconfig/],
    ['a: 1\na: 2\n', /not valid YAML/],
    ['a: &x [1]\nb: *x\n', /not valid YAML: .*[Aa]lias/],
    [`${'x'.repeat(2 * 1024 * 1024)}\n`, /longer than/],
  ];
  for (const [text, message] of cases)
    assert.throws(() => readK3sCredentials(text), message, text.slice(0, 40));
  // A billion laughs stays bounded even where aliases are allowed.
  const laughs = `a: &a [x,x,x,x,x,x,x,x,x]\n${Array.from(
    { length: 9 },
    (_, i) =>
      `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(9)
        .fill(`*${String.fromCharCode(97 + i)}`)
        .join(',')}]`,
  ).join('\n')}\n`;
  assert.throws(() => parseHostileYaml(laughs, 'laughs', 100), /not valid YAML/);
});

test('the host reader takes only our shape: loopback https, data credentials, nothing else', () => {
  const ours = buildKubeconfig({ name: 'gw', port: 6000, credentials: readK3sCredentials(k3sYaml()) });
  const doc = YAML.parse(ours);
  const edit = (f: (d: typeof doc) => void) => {
    const d = structuredClone(doc);
    f(d);
    return YAML.stringify(d);
  };
  const refused: [string, RegExp][] = [
    [edit((d) => (d.users[0].user.exec = { command: 'sh' })), /user 'gw' has exec/],
    [edit((d) => (d.users[0].user.token = 't')), /user 'gw' has token/],
    [edit((d) => (d.clusters[0].cluster['insecure-skip-tls-verify'] = true)), /insecure-skip-tls-verify/],
    [
      edit((d) => (d.clusters[0].cluster.server = 'https://evil.example:6443')),
      /is not https:\/\/127\.0\.0\.1/,
    ],
    [edit((d) => (d.clusters[0].cluster.server = 'http://127.0.0.1:6000')), /is not https/],
    [edit((d) => (d['current-context'] = 'nope')), /no current context/],
    [edit((d) => (d.contexts[0].context.user = 'nobody')), /has no cluster or user/],
  ];
  for (const [text, message] of refused) assert.throws(() => readGatewayKubeconfig(text, 'f'), message);
  const read = readGatewayKubeconfig(ours, 'f');
  assert.deepEqual([read.name, read.server], ['gw', 'https://127.0.0.1:6000']);
});
