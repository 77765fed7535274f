import YAML from 'yaml';
import type { PkiBundle } from './pki.ts';

/** The Secrets the OpenShell chart reads (its values name them: tls.certSecretName and the rest). */
export const TLS_SECRETS = {
  namespace: 'openshell',
  server: 'openshell-server-tls',
  clientCa: 'openshell-server-client-ca',
  client: 'openshell-client-tls',
} as const;

export const TLS_SECRETS_MANIFEST = 'openshell-tls-secrets.yaml';

const b64 = (pem: string) => Buffer.from(pem).toString('base64');

/**
 * The k3s auto-deploy manifest that creates the gateway's TLS Secrets from `pki`: the namespace,
 * the server pair (kubernetes.io/tls), the CA clients are checked against, and the client pair
 * (with the CA) that sandbox pods use.
 */
export function renderTlsSecretsManifest(pki: PkiBundle): string {
  const meta = (name: string) => ({ name, namespace: TLS_SECRETS.namespace });
  const docs = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: TLS_SECRETS.namespace } },
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: meta(TLS_SECRETS.server),
      type: 'kubernetes.io/tls',
      data: { 'tls.crt': b64(pki.serverCert), 'tls.key': b64(pki.serverKey) },
    },
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: meta(TLS_SECRETS.clientCa),
      type: 'Opaque',
      data: { 'ca.crt': b64(pki.caCert) },
    },
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: meta(TLS_SECRETS.client),
      type: 'Opaque',
      data: { 'tls.crt': b64(pki.clientCert), 'tls.key': b64(pki.clientKey), 'ca.crt': b64(pki.caCert) },
    },
  ];
  return docs.map((d) => YAML.stringify(d, { lineWidth: 0 })).join('---\n');
}
