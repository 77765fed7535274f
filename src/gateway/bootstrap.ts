import path from 'node:path';
import YAML from 'yaml';
import { HostError } from '../errors.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import {
  gatewayDir,
  type MtlsBundle,
  readMtlsBundle,
  setActiveGateway,
  writeGatewayMetadata,
  writeMtlsBundle,
} from './client-config.ts';
import { generatePki, type PkiBundle } from './pki.ts';
import { renderTlsSecretsManifest, TLS_SECRETS, TLS_SECRETS_MANIFEST } from './tls-secrets.ts';

/** Where a rootfs may carry a PKI made at build time (the seed's pre-baked path). */
export const PREBAKED_PKI_DIR = 'opt/openshell/pki';
const PREBAKED_FILES = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  clientCert: 'client.crt',
  clientKey: 'client.key',
} as const satisfies Record<keyof PkiBundle, string>;

export type BootstrapPath = 'pre-baked' | 'warm' | 'cold';

export interface BootstrapResult {
  readonly path: BootstrapPath;
  /** Why this path was taken, for the progress line. */
  readonly reason: string;
  readonly bundle: MtlsBundle;
  readonly mtlsDir: string;
  readonly endpoint: string;
  readonly elapsedMs: number;
}

/**
 * The host's half of a gateway boot, through the shared root (no API calls): decides how the
 * gateway gets its credentials and writes what the OpenShell CLI and SDK read.
 *  - pre-baked: the rootfs carries a PKI (opt/openshell/pki): its TLS Secrets and the host files
 *    are written from it;
 *  - warm: the host's mTLS bundle exists and the rootfs's TLS Secrets were made from the same CA
 *    and client certificate: nothing new is issued;
 *  - cold: anything else (first boot, rebuilt rootfs, deleted or foreign host files): a new PKI,
 *    its Secrets manifest in k3s's auto-deploy directory, the host files.
 * Unlike the seed, the warm check compares the two sides (a rebuilt rootfs with old host files is
 * cold), and the metadata is rewritten on every path, so the endpoint always follows --port.
 * Failures are errors, never log lines. The rootfs is the guest's (it may be running while this
 * writes): every access goes through GuestRoot, so a symlink planted there is refused, never
 * followed to a host file.
 */
export async function bootstrapGateway(options: {
  readonly rootfs: string;
  readonly configDir: string;
  readonly name: string;
  readonly port: number;
  readonly extraSans?: readonly string[] | undefined;
}): Promise<BootstrapResult> {
  const t0 = performance.now();
  const root = new GuestRoot(options.rootfs);
  const manifest = `${ROOTFS_PATHS.k3sManifests}/${TLS_SECRETS_MANIFEST}`;
  let chosen: BootstrapPath;
  let reason: string;
  let bundle: MtlsBundle;
  const prebaked = await readPrebakedPki(root);
  if (prebaked) {
    chosen = 'pre-baked';
    reason = `the rootfs carries a PKI (${PREBAKED_PKI_DIR})`;
    await root.writeFileIfChanged(manifest, renderTlsSecretsManifest(prebaked), 0o600);
    bundle = toBundle(prebaked);
    await writeMtlsBundle(options.configDir, options.name, bundle);
  } else {
    const host = await readMtlsBundle(options.configDir, options.name);
    const guest = await readSecretsClient(root, manifest);
    if (host && guest && sameCert(host.caCert, guest.caCert) && sameCert(host.clientCert, guest.clientCert)) {
      chosen = 'warm';
      reason = 'the host credentials match the instance';
      bundle = host;
    } else {
      chosen = 'cold';
      reason = !guest
        ? 'first boot of this rootfs: new credentials'
        : !host
          ? 'no host credentials for this gateway: new credentials'
          : 'the host credentials do not match the instance: new credentials';
      const pki = await generatePki(options.extraSans ? { extraSans: options.extraSans } : {});
      await root.writeFileIfChanged(manifest, renderTlsSecretsManifest(pki), 0o600);
      bundle = toBundle(pki);
      await writeMtlsBundle(options.configDir, options.name, bundle);
    }
  }
  const metadata = await writeGatewayMetadata(options.configDir, options.name, options.port);
  await setActiveGateway(options.configDir, options.name);
  return {
    path: chosen,
    reason,
    bundle,
    mtlsDir: path.join(gatewayDir(options.configDir, options.name), 'mtls'),
    endpoint: metadata.gateway_endpoint,
    elapsedMs: Math.round(performance.now() - t0),
  };
}

/**
 * Bakes `pki` into a rootfs that is not running (prepare-rootfs --preinit): the files the
 * pre-baked path reads, the directory 0700 and each file 0600. Every boot of this rootfs then
 * serves these credentials.
 */
export async function writePrebakedPki(rootfs: string, pki: PkiBundle): Promise<void> {
  const root = new GuestRoot(rootfs);
  await root.mkdirp(PREBAKED_PKI_DIR, 0o700);
  for (const [key, file] of Object.entries(PREBAKED_FILES) as [keyof PkiBundle, string][]) {
    await root.writeFileAtomic(`${PREBAKED_PKI_DIR}/${file}`, pki[key], { mode: 0o600, dirMode: 0o700 });
  }
}

function toBundle(pki: PkiBundle): MtlsBundle {
  return { caCert: pki.caCert, clientCert: pki.clientCert, clientKey: pki.clientKey };
}

const sameCert = (a: string, b: string) => a.trim() === b.trim();

async function readPrebakedPki(root: GuestRoot): Promise<PkiBundle | undefined> {
  if (!(await root.exists(`${PREBAKED_PKI_DIR}/${PREBAKED_FILES.caCert}`))) return undefined;
  const out: Partial<Record<keyof PkiBundle, string>> = {};
  for (const [key, file] of Object.entries(PREBAKED_FILES) as [keyof PkiBundle, string][]) {
    const rel = `${PREBAKED_PKI_DIR}/${file}`;
    const text = await root.readText(rel);
    if (text === undefined) {
      throw new HostError(
        `the rootfs's pre-baked PKI is incomplete: cannot read ${root.hostPath(rel)} (missing)`,
        {
          hint: 'rebuild the rootfs (openshell-vm prepare-rootfs --force), or remove the pki directory to issue new credentials',
        },
      );
    }
    out[key] = text;
  }
  return out as PkiBundle;
}

/** The client certificate and CA in the rootfs's TLS Secrets manifest, if it is there and readable. */
async function readSecretsClient(
  root: GuestRoot,
  manifest: string,
): Promise<{ caCert: string; clientCert: string } | undefined> {
  const text = await root.readText(manifest);
  if (text === undefined) return undefined;
  try {
    for (const doc of YAML.parseAllDocuments(text)) {
      const obj = doc.toJS() as {
        kind?: string;
        metadata?: { name?: string };
        data?: Record<string, string>;
      };
      if (obj?.kind === 'Secret' && obj.metadata?.name === TLS_SECRETS.client && obj.data) {
        const ca = obj.data['ca.crt'];
        const crt = obj.data['tls.crt'];
        if (!ca || !crt) return undefined;
        return {
          caCert: Buffer.from(ca, 'base64').toString('utf8'),
          clientCert: Buffer.from(crt, 'base64').toString('utf8'),
        };
      }
    }
  } catch {
    // A damaged manifest is replaced by the cold path.
  }
  return undefined;
}
