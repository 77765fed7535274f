import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { isErrno } from '../errors.ts';
import { writeFileAtomic } from '../host/fs.ts';
import { freeLoopbackPort } from '../net/ports.ts';

/** In the instance directory: the loopback port the Kubernetes API was forwarded to last time. */
export const API_PORT_FILE = 'api-port';

/** True when 127.0.0.1:`port` can be listened on now. */
export function isLoopbackPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

async function readRemembered(file: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'EISDIR')) return undefined;
    throw err;
  }
  const port = /^([1-9][0-9]{0,4})\n?$/.exec(text)?.[1];
  return port && Number(port) <= 65535 ? Number(port) : undefined;
}

/**
 * The Kubernetes API's host port for the instance in `instanceDir`, stable across boots so a
 * merged context keeps working: the port remembered from an earlier boot while it is free, else a
 * new free loopback port (remembered from now on; `warn` says so when the old one was taken, since
 * kubeconfigs written before point at the old port until this boot rewrites them).
 */
export async function stableApiPort(
  instanceDir: string,
  options: {
    readonly warn: (message: string) => void;
    readonly isFree?: (port: number) => Promise<boolean>;
    readonly pick?: () => Promise<number>;
  },
): Promise<number> {
  const file = path.join(instanceDir, API_PORT_FILE);
  const remembered = await readRemembered(file);
  if (remembered !== undefined && (await (options.isFree ?? isLoopbackPortFree)(remembered)))
    return remembered;
  const port = await (options.pick ?? freeLoopbackPort)();
  if (remembered !== undefined) {
    options.warn(
      `the Kubernetes API's port 127.0.0.1:${remembered} of this instance is taken: using ${port}; the kubeconfig (and a merged context) are rewritten when the gateway is ready`,
    );
  }
  await writeFileAtomic(file, `${port}\n`);
  return port;
}
