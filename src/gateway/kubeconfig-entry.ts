import { createPrivateKey, X509Certificate } from 'node:crypto';
import YAML from 'yaml';
import { HostError } from '../errors.ts';

/**
 * The gateway's kubeconfig, built from data only. k3s's kubeconfig is written by the guest, so it
 * is hostile input: of it we take the CA and the client certificate and key, each of which must
 * parse as PEM, and nothing else (no exec plugin, auth provider, token, file path, proxy or
 * insecure-skip-tls-verify can come through). The server URL is ours: the forwarded loopback port.
 */
export interface GatewayCredentials {
  /** certificate-authority-data: base64 of PEM CA certificates. */
  readonly caData: string;
  /** client-certificate-data: base64 of PEM certificates (the client's first). */
  readonly certData: string;
  /** client-key-data: base64 of a PEM private key that matches the client certificate. */
  readonly keyData: string;
}

/** A kubeconfig openshell-vm wrote (or one shaped exactly like it): one cluster, user and context. */
export interface GatewayKubeconfig {
  readonly name: string;
  readonly server: string;
  readonly credentials: GatewayCredentials;
}

/** Longest kubeconfig text we parse, and longest base64 field (a few certificates). */
const MAX_TEXT = 1024 * 1024;
const MAX_DATA = 64 * 1024;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END \1-----/g;
const PRIVATE_KEY_LABELS = new Set(['PRIVATE KEY', 'EC PRIVATE KEY', 'RSA PRIVATE KEY']);
/** Our server URL: https on IPv4 loopback with a port, nothing else. */
const LOOPBACK_SERVER = /^https:\/\/127\.0\.0\.1:([1-9][0-9]{0,4})$/;

type Plain = Record<string, unknown>;

function isPlain(value: unknown): value is Plain {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses YAML that may be hostile: size-limited, no aliases beyond `maxAliasCount` (0 by default:
 * k3s writes none), duplicate keys refused, only the core schema's types.
 */
export function parseHostileYaml(text: string, where: string, maxAliasCount = 0): unknown {
  const refuse = (why: string, cause?: unknown) =>
    new HostError(`${where} is not valid YAML: ${why}`, {
      hint: 'fix or move the file; openshell-vm never uses a kubeconfig it cannot read',
      cause,
    });
  if (text.length > MAX_TEXT) throw refuse(`longer than ${MAX_TEXT} bytes`);
  let doc: YAML.Document.Parsed;
  try {
    doc = YAML.parseDocument(text, { schema: 'core', uniqueKeys: true, prettyErrors: false });
  } catch (err) {
    throw refuse((err as Error).message, err);
  }
  const first = doc.errors[0];
  if (first) throw refuse(first.message, first);
  try {
    return doc.toJS({ maxAliasCount });
  } catch (err) {
    throw refuse((err as Error).message, err);
  }
}

/** The list under `key`; absent, null or `{}` is empty; any other shape is refused. */
function listOf(doc: Plain, key: string, where: string): unknown[] {
  const value = doc[key];
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) return value;
  if (isPlain(value) && Object.keys(value).length === 0) return [];
  throw new HostError(`${where}: '${key}' is not a list`, {
    hint: 'fix or move the file; openshell-vm never uses a kubeconfig it cannot read',
  });
}

/** The root mapping of a kubeconfig (kind Config); an empty document is an empty mapping. */
export function kubeconfigRoot(value: unknown, where: string): Plain {
  if (value === null || value === undefined) return {};
  if (!isPlain(value) || (value.kind ?? 'Config') !== 'Config') {
    throw new HostError(`${where} is not a kubeconfig (kind: Config)`, {
      hint: 'fix or move the file; openshell-vm never uses a kubeconfig it cannot read',
    });
  }
  return value;
}

function pemBlocks(text: string): { label: string; pem: string }[] {
  const blocks: { label: string; pem: string }[] = [];
  let rest = text;
  for (const m of text.matchAll(PEM_BLOCK)) {
    blocks.push({ label: m[1] as string, pem: `${m[0]}\n` });
    rest = rest.replace(m[0], '');
  }
  // Anything outside the blocks (headers, a second format, junk) is refused, not skipped.
  return rest.trim() === '' ? blocks : [];
}

function decodeData(value: unknown, field: string, where: string): string {
  const bad = (why: string) =>
    new HostError(`${where}: ${field} ${why}`, {
      hint: 'the gateway kubeconfig carries its CA and client credentials as base64 PEM data',
    });
  if (typeof value !== 'string' || value === '') throw bad('is missing');
  if (value.length > MAX_DATA || !BASE64.test(value)) throw bad('is not base64 data');
  return Buffer.from(value, 'base64').toString('latin1');
}

function certificates(value: unknown, field: string, where: string): X509Certificate[] {
  const blocks = pemBlocks(decodeData(value, field, where));
  const certs: X509Certificate[] = [];
  for (const b of blocks) {
    if (b.label !== 'CERTIFICATE') break;
    try {
      certs.push(new X509Certificate(b.pem));
    } catch {
      break;
    }
  }
  if (certs.length === 0 || certs.length !== blocks.length)
    throw new HostError(`${where}: ${field} is not PEM certificates`, {
      hint: 'the gateway kubeconfig carries its CA and client credentials as base64 PEM data',
    });
  return certs;
}

const b64 = (text: string) => Buffer.from(text).toString('base64');

/** Checks the three data fields and returns them re-encoded from what was parsed. */
export function validateCredentials(
  cluster: Plain,
  user: Plain,
  where: string,
): { credentials: GatewayCredentials } {
  const ca = certificates(cluster['certificate-authority-data'], 'certificate-authority-data', where);
  if (!ca.every((c) => c.ca))
    throw new HostError(`${where}: certificate-authority-data is not a CA certificate`);
  const client = certificates(user['client-certificate-data'], 'client-certificate-data', where);
  const keyBlocks = pemBlocks(decodeData(user['client-key-data'], 'client-key-data', where));
  const keyBlock = keyBlocks.length === 1 ? keyBlocks[0] : undefined;
  let keyPem: string | undefined;
  if (keyBlock && PRIVATE_KEY_LABELS.has(keyBlock.label)) {
    try {
      const key = createPrivateKey({ key: keyBlock.pem, format: 'pem' });
      if ((client[0] as X509Certificate).checkPrivateKey(key)) keyPem = keyBlock.pem;
    } catch {
      // not a private key
    }
  }
  if (!keyPem)
    throw new HostError(`${where}: client-key-data is not the PEM private key of the client certificate`);
  return {
    credentials: {
      caData: b64(ca.map((c) => c.toString()).join('')),
      certData: b64(client.map((c) => c.toString()).join('')),
      keyData: b64(keyPem),
    },
  };
}

/** The entry called `name` in the list `key`, or undefined. */
function entry(doc: Plain, key: string, name: unknown, where: string): Plain | undefined {
  return listOf(doc, key, where).find((e): e is Plain => isPlain(e) && e.name === name);
}

/**
 * k3s's kubeconfig (guest-written): the CA of its cluster and the client certificate and key of
 * its user, validated. k3s writes one of each (named "default"); the first is taken.
 */
export function readK3sCredentials(text: string): GatewayCredentials {
  const where = "k3s's kubeconfig";
  const doc = kubeconfigRoot(parseHostileYaml(text, where), where);
  const cluster = listOf(doc, 'clusters', where)[0];
  const user = listOf(doc, 'users', where)[0];
  if (!isPlain(cluster) || !isPlain(cluster.cluster) || !isPlain(user) || !isPlain(user.user))
    throw new HostError(`${where} has no cluster or user`, { hint: 'k3s may still be writing it' });
  return validateCredentials(cluster.cluster, user.user, where).credentials;
}

/** Our kubeconfig for gateway `name`, from data only: the API at https://127.0.0.1:PORT. */
export function buildKubeconfig(options: {
  readonly name: string;
  readonly port: number;
  readonly credentials: GatewayCredentials;
}): string {
  const { name, credentials } = options;
  return YAML.stringify(
    {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name, cluster: clusterBody(`https://127.0.0.1:${options.port}`, credentials) }],
      users: [{ name, user: userBody(credentials) }],
      contexts: [{ name, context: { cluster: name, user: name } }],
      'current-context': name,
    },
    { lineWidth: 0 },
  );
}

export function clusterBody(server: string, c: GatewayCredentials): Plain {
  return { server, 'certificate-authority-data': c.caData };
}

export function userBody(c: GatewayCredentials): Plain {
  return { 'client-certificate-data': c.certData, 'client-key-data': c.keyData };
}

/**
 * k3s's kubeconfig made usable from the host: named NAME (cluster, user and context), pointing
 * at the loopback port the Kubernetes API is forwarded to, with k3s's validated credentials only.
 */
export function rewriteKubeconfig(
  k3sYaml: string,
  options: { readonly name: string; readonly port: number },
) {
  return buildKubeconfig({ ...options, credentials: readK3sCredentials(k3sYaml) });
}

/**
 * Reads a kubeconfig for use on the host (verify, merge): its current context must name a cluster
 * whose server is https://127.0.0.1:PORT and whose CA is data, and a user that authenticates with
 * a client certificate and key as data. Any other field there (exec, auth-provider, token,
 * tokenFile, file paths, proxy-url, insecure-skip-tls-verify, extensions...) is refused, so
 * nothing in the file can make the host run a command or trust another server.
 */
export function readGatewayKubeconfig(text: string, where: string): GatewayKubeconfig {
  const doc = kubeconfigRoot(parseHostileYaml(text, where), where);
  const refuse = (why: string) =>
    new HostError(`${where}: ${why}`, {
      hint: 'openshell-vm uses only kubeconfigs shaped like the ones it writes (client certificate data for https://127.0.0.1:PORT); start the gateway again to rewrite ~/.kube/NAME.yaml',
    });
  const current = doc['current-context'];
  const context = entry(doc, 'contexts', current, where)?.context;
  if (typeof current !== 'string' || !isPlain(context)) throw refuse('no current context');
  const cluster = entry(doc, 'clusters', context.cluster, where)?.cluster;
  const user = entry(doc, 'users', context.user, where)?.user;
  if (!isPlain(cluster) || !isPlain(user)) throw refuse(`context '${current}' has no cluster or user`);
  const extra = (body: Plain, allowed: readonly string[]) =>
    Object.keys(body).filter((k) => !allowed.includes(k));
  const clusterExtra = extra(cluster, ['server', 'certificate-authority-data']);
  const userExtra = extra(user, ['client-certificate-data', 'client-key-data']);
  if (clusterExtra.length) throw refuse(`cluster '${context.cluster}' has ${clusterExtra.join(', ')}`);
  if (userExtra.length) throw refuse(`user '${context.user}' has ${userExtra.join(', ')}`);
  const server = cluster.server;
  const port = typeof server === 'string' ? LOOPBACK_SERVER.exec(server)?.[1] : undefined;
  if (typeof server !== 'string' || !port || Number(port) > 65535)
    throw refuse(`server ${JSON.stringify(server)} is not https://127.0.0.1:PORT`);
  return { name: current, server, ...validateCredentials(cluster, user, where) };
}
