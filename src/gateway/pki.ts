import { webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import type * as X509 from '@peculiar/x509';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

let x509Stack: Promise<typeof X509> | undefined;

/**
 * @peculiar/x509 (with its ASN.1 packages and tsyringe, which needs the Reflect metadata API),
 * loaded on the first certificate made: a gateway whose credentials exist already, and every
 * other command, never load it.
 */
function loadX509(): Promise<typeof X509> {
  x509Stack ??= (async () => {
    await import('reflect-metadata');
    const x509 = await import('@peculiar/x509');
    x509.cryptoProvider.set(webcrypto as never);
    return x509;
  })();
  return x509Stack;
}

/** The server certificate's names (the seed's six), to which callers may add their own. */
export const DEFAULT_SERVER_SANS = [
  'openshell',
  'openshell.openshell.svc',
  'openshell.openshell.svc.cluster.local',
  'localhost',
  'host.docker.internal',
  '127.0.0.1',
] as const;

/** The gateway's PKI as PEM text: a CA, the server's pair and the (shared) client pair. */
export interface PkiBundle {
  readonly caCert: string;
  readonly caKey: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

const EC: webcrypto.EcKeyGenParams & webcrypto.EcdsaParams = {
  name: 'ECDSA',
  namedCurve: 'P-256',
  hash: 'SHA-256',
};
const DAY_MS = 86_400_000;

async function keyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function pemKey(x509: typeof X509, key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

function serial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] as number) & 0x7f; // positive
  return Buffer.from(bytes).toString('hex');
}

/**
 * Generates the gateway's PKI (ECDSA P-256, SHA-256): a CA (O=openshell, CN=openshell-ca); a
 * server certificate (CN=openshell-server, serverAuth) for DEFAULT_SERVER_SANS plus `extraSans`
 * (IP addresses become IP SANs); and a client certificate (CN=openshell-client, clientAuth).
 * All are X.509 v3 with key usages, so rustls accepts them (the seed's v1 client certificate was
 * rejected). Valid from an hour ago (clock skew) for `validityDays`.
 */
export async function generatePki(
  options: {
    readonly extraSans?: readonly string[];
    readonly now?: Date;
    readonly validityDays?: number;
  } = {},
): Promise<PkiBundle> {
  const x509 = await loadX509();
  const now = options.now ?? new Date();
  const notBefore = new Date(now.getTime() - 3_600_000);
  const notAfter = new Date(now.getTime() + (options.validityDays ?? 3650) * DAY_MS);
  const ca = await keyPair();
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'O=openshell, CN=openshell-ca',
    notBefore,
    notAfter,
    keys: ca,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(ca.publicKey),
    ],
  });
  const leaf = async (cn: string, usage: string, sans: readonly string[]) => {
    const keys = await keyPair();
    const names = sans.map((n) => ({ type: isIP(n) ? ('ip' as const) : ('dns' as const), value: n }));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${cn}`,
      issuer: caCert.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: ca.privateKey,
      signingAlgorithm: EC,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement,
          true,
        ),
        new x509.ExtendedKeyUsageExtension([usage]),
        ...(names.length ? [new x509.SubjectAlternativeNameExtension(names)] : []),
        await x509.AuthorityKeyIdentifierExtension.create(caCert),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return { cert: cert.toString('pem'), key: await pemKey(x509, keys.privateKey) };
  };
  const sans = [...new Set([...DEFAULT_SERVER_SANS, ...(options.extraSans ?? [])])];
  const server = await leaf('openshell-server', x509.ExtendedKeyUsage.serverAuth, sans);
  const client = await leaf('openshell-client', x509.ExtendedKeyUsage.clientAuth, []);
  return {
    caCert: caCert.toString('pem'),
    caKey: await pemKey(x509, ca.privateKey),
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
  };
}
