import assert from 'node:assert/strict';
import { test } from 'node:test';
import YAML from 'yaml';
import { generatePki } from './pki.ts';
import { renderTlsSecretsManifest } from './tls-secrets.ts';

test('the TLS secrets manifest has the namespace and the three Secrets with the exact names, types and keys', async () => {
  const pki = await generatePki();
  const docs = YAML.parseAllDocuments(renderTlsSecretsManifest(pki)).map((d) => d.toJS());
  assert.deepEqual(
    docs.map((d) => [
      d.kind,
      d.metadata.name,
      d.metadata.namespace,
      d.type,
      Object.keys(d.data ?? {})
        .sort()
        .join(','),
    ]),
    [
      ['Namespace', 'openshell', undefined, undefined, ''],
      ['Secret', 'openshell-server-tls', 'openshell', 'kubernetes.io/tls', 'tls.crt,tls.key'],
      ['Secret', 'openshell-server-client-ca', 'openshell', 'Opaque', 'ca.crt'],
      ['Secret', 'openshell-client-tls', 'openshell', 'Opaque', 'ca.crt,tls.crt,tls.key'],
    ],
  );
  const decode = (s: string) => Buffer.from(s, 'base64').toString();
  assert.equal(decode(docs[1].data['tls.crt']), pki.serverCert);
  assert.equal(decode(docs[1].data['tls.key']), pki.serverKey);
  assert.equal(decode(docs[2].data['ca.crt']), pki.caCert);
  assert.equal(decode(docs[3].data['tls.key']), pki.clientKey);
});
