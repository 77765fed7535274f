import fs from 'node:fs/promises';
import { HostError, isErrno } from '../errors.ts';
import { DOCKER_HUB } from './reference.ts';

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/**
 * Credentials for `registry` from Docker's client config (`auths`, as `docker login` writes
 * them). Credential helpers (`credsStore`/`credHelpers`) are not run: a registry that only has
 * one gets undefined here, and a 401 from it says how to log in.
 */
export async function readDockerCredentials(
  configPath: string,
  registry: string,
): Promise<Credentials | undefined> {
  let raw: string;
  try {
    raw = await fs.readFile(configPath, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  let config: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    config = JSON.parse(raw);
  } catch (err) {
    throw new HostError(`${configPath} is not valid JSON`, { hint: 'fix or remove it', cause: err });
  }
  const keys =
    registry === DOCKER_HUB
      ? ['https://index.docker.io/v1/', 'index.docker.io', DOCKER_HUB]
      : [registry, `https://${registry}`, `http://${registry}`];
  for (const key of keys) {
    const entry = config.auths?.[key];
    if (!entry) continue;
    if (entry.username && entry.password) return { username: entry.username, password: entry.password };
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
  }
  return undefined;
}
