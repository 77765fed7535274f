import net from 'node:net';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { writeFileAtomic } from '../host/fs.ts';
import { readRecordFile } from '../instance/trust.ts';
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

/**
 * The port remembered in `file`, read as a record of ours (never through a symlink, a FIFO does not
 * block, only a regular file of ours that others cannot write, bounded); one that fails that or
 * holds no port is ignored with a warning.
 */
async function readRemembered(file: string, warn: (message: string) => void): Promise<number | undefined> {
  const read = await readRecordFile(file);
  if (read.kind === 'missing') return undefined;
  if (read.kind === 'untrusted') {
    warn(`ignoring ${file}: it ${read.reason}; a new port is picked`);
    return undefined;
  }
  const port = /^([1-9][0-9]{0,4})\n?$/.exec(read.text)?.[1];
  if (port && Number(port) <= 65535) return Number(port);
  warn(`ignoring ${file}: it holds no port number; a new port is picked`);
  return undefined;
}

/**
 * The Kubernetes API's host port for the instance in `instanceDir`, stable across boots so a
 * merged context keeps working: the port remembered from an earlier boot while it is free, else a
 * new free loopback port (remembered from now on; `warn` says so when the old one was taken, since
 * kubeconfigs written before point at the old port until this boot rewrites them). The caller has
 * checked the instance directory (ensureInstanceDir) first.
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
  const remembered = await readRemembered(file, options.warn);
  if (remembered !== undefined && (await (options.isFree ?? isLoopbackPortFree)(remembered)))
    return remembered;
  const port = await (options.pick ?? freeLoopbackPort)();
  if (remembered !== undefined) {
    options.warn(
      `the Kubernetes API's port 127.0.0.1:${remembered} of this instance is taken: using ${port}; the kubeconfig (and a merged context) are rewritten when the gateway is ready`,
    );
  }
  try {
    await writeFileAtomic(file, `${port}\n`);
  } catch (err) {
    // Only a directory in its place stops the rename; anything else is not ours to explain here.
    if (!isErrno(err, 'EISDIR') && !isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'EEXIST')) throw err;
    throw new HostError(`cannot remember the Kubernetes API's port in ${file}: a directory is in its place`, {
      hint: `remove it (rm -r ${file}), or give --api-port PORT`,
      cause: err,
    });
  }
  return port;
}
