import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { lexists, lstatOrUndefined, replaceDirectory, writeFileAtomic } from '../host/fs.ts';

/**
 * The files the OpenShell CLI and SDK read to reach a gateway, in their layout
 * (`$XDG_CONFIG_HOME/openshell/`):
 *   gateways/NAME/metadata.json        name, endpoint, port
 *   gateways/NAME/mtls/{ca.crt,tls.crt,tls.key}   the client's credentials
 *   active_gateway                     the name, no newline (ACTIVE_GATEWAY)
 * Directories are 0700 and files 0600. Every file is replaced atomically, and the mTLS bundle as a
 * whole: a crash at any point leaves either the old bundle or the new one usable.
 */
export interface GatewayMetadata {
  readonly name: string;
  readonly gateway_endpoint: string;
  readonly is_remote: false;
  readonly gateway_port: number;
}

export interface MtlsBundle {
  readonly caCert: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

export const MTLS_FILES = { caCert: 'ca.crt', clientCert: 'tls.crt', clientKey: 'tls.key' } as const;

export function gatewayDir(configDir: string, name: string): string {
  return path.join(configDir, 'gateways', name);
}

export async function writeGatewayMetadata(
  configDir: string,
  name: string,
  port: number,
): Promise<GatewayMetadata> {
  const metadata: GatewayMetadata = {
    name,
    gateway_endpoint: `https://127.0.0.1:${port}`,
    is_remote: false,
    gateway_port: port,
  };
  await fs.mkdir(gatewayDir(configDir, name), { recursive: true, mode: 0o700 });
  await writeFileAtomic(
    path.join(gatewayDir(configDir, name), 'metadata.json'),
    `${JSON.stringify(metadata, null, 2)}\n`,
  );
  return metadata;
}

/** The OpenShell CLI's current gateway: a file holding its name. */
export const ACTIVE_GATEWAY = 'active_gateway';

export async function setActiveGateway(configDir: string, name: string): Promise<void> {
  await writeFileAtomic(path.join(configDir, ACTIVE_GATEWAY), name);
}

/**
 * Removes active_gateway when it names `name` (the gateway that goes away), and says which file
 * that was; another gateway's name, a missing file or one that is not a small regular file (never
 * followed through a symlink) is left as it is.
 */
export async function clearActiveGateway(configDir: string, name: string): Promise<string | undefined> {
  const file = path.join(configDir, ACTIVE_GATEWAY);
  const st = await lstatOrUndefined(file);
  if (!st?.isFile() || st.size > 4096) return undefined;
  const text = await fs.readFile(file, 'utf8').catch((err: unknown) => {
    if (isErrno(err, 'ENOENT')) return '';
    throw err;
  });
  if (text.trim() !== name) return undefined;
  await fs.rm(file, { force: true });
  return file;
}

/**
 * Removes what the OpenShell CLI keeps for gateway `name` (gateways/NAME: metadata and mTLS);
 * returns the directory when there was one.
 */
export async function removeGatewayFiles(configDir: string, name: string): Promise<string | undefined> {
  const dir = gatewayDir(configDir, name);
  if (!(await lexists(dir))) return undefined;
  await fs.rm(dir, { recursive: true, force: true });
  return dir;
}

/**
 * Replaces the mTLS bundle: the new files go into a sibling directory, the old `mtls` is moved
 * to `mtls.bak`, the new one renamed into place, then the backup removed.
 */
export async function writeMtlsBundle(configDir: string, name: string, bundle: MtlsBundle): Promise<string> {
  const dir = gatewayDir(configDir, name);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await recoverMtlsBundle(configDir, name);
  for (const [key, value] of Object.entries(bundle)) {
    if (!value.includes('-----BEGIN ')) throw new HostError(`mTLS bundle for ${name}: ${key} is not PEM`);
  }
  const live = path.join(dir, 'mtls');
  const tmp = path.join(dir, `mtls.tmp-${process.pid}`);
  const bak = path.join(dir, 'mtls.bak');
  await fs.rm(tmp, { recursive: true, force: true });
  await fs.mkdir(tmp, { mode: 0o700 });
  try {
    for (const [key, file] of Object.entries(MTLS_FILES)) {
      await fs.writeFile(path.join(tmp, file), bundle[key as keyof MtlsBundle], { mode: 0o600 });
    }
    await replaceDirectory(tmp, live, bak);
    await fs.chmod(live, 0o700);
    return live;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/** After a crash between the two renames, `mtls` is missing and `mtls.bak` holds the old bundle: put it back. */
export async function recoverMtlsBundle(configDir: string, name: string): Promise<void> {
  const dir = gatewayDir(configDir, name);
  const live = path.join(dir, 'mtls');
  const bak = path.join(dir, 'mtls.bak');
  if (!(await lexists(bak))) return;
  if (await lexists(live)) await fs.rm(bak, { recursive: true, force: true });
  else await fs.rename(bak, live);
}

/** The bundle, if all three files are there and non-empty (recovering from a crashed replace first). */
export async function readMtlsBundle(configDir: string, name: string): Promise<MtlsBundle | undefined> {
  await recoverMtlsBundle(configDir, name);
  const live = path.join(gatewayDir(configDir, name), 'mtls');
  const out: Record<string, string> = {};
  for (const [key, file] of Object.entries(MTLS_FILES)) {
    try {
      out[key] = await fs.readFile(path.join(live, file), 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw err;
    }
    if (!out[key]?.trim()) return undefined;
  }
  return out as unknown as MtlsBundle;
}
