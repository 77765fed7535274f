import net from 'node:net';
import { UsageError } from '../errors.ts';

/** One TCP forward from the host into the guest. */
export interface PortForward {
  /** Host address the forward listens on (127.0.0.1 unless the spec names one). */
  readonly hostAddress: string;
  readonly hostPort: number;
  readonly guestPort: number;
}

const PORT_HINT = 'use -p HOST:GUEST, -p PORT or -p ADDR:HOST:GUEST with ports from 1 to 65535';

/** Parses `-p` specs: PORT, HOST:GUEST, ADDR:HOST:GUEST (an IPv6 ADDR in brackets). */
export function parsePortSpec(spec: string): PortForward {
  const bad = (why: string) => new UsageError(`-p ${spec}: ${why}`, { hint: PORT_HINT });
  let address = '127.0.0.1';
  let rest = spec;
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(spec);
  if (v6) {
    address = v6[1] as string;
    rest = v6[2] as string;
    if (net.isIPv6(address) === false) throw bad(`'${address}' is not an IPv6 address`);
  }
  const parts = rest.split(':');
  if (!v6 && parts.length === 3) {
    address = parts.shift() as string;
    if (!net.isIPv4(address))
      throw bad(`'${address}' is not an IPv4 address (write IPv6 addresses in brackets)`);
  } else if (v6 && parts.length !== 2) {
    throw bad('expected [ADDR]:HOST:GUEST');
  }
  if (parts.length < 1 || parts.length > 2 || parts.some((p) => p === '')) throw bad('malformed');
  const [host, guest = host] = parts.map((p) => {
    if (!/^\d+$/.test(p)) throw bad(`'${p}' is not a port number`);
    const n = Number(p);
    if (n < 1 || n > 65535) throw bad(`port ${p} is outside 1-65535`);
    return n;
  }) as [number, number?];
  return { hostAddress: address, hostPort: host, guestPort: guest };
}

/** Rejects two forwards that listen on the same host port (on overlapping addresses). */
export function checkDuplicates(forwards: readonly PortForward[]): void {
  const seen = new Map<number, PortForward>();
  for (const f of forwards) {
    const prev = seen.get(f.hostPort);
    if (
      prev &&
      (prev.hostAddress === f.hostAddress || isWildcard(prev.hostAddress) || isWildcard(f.hostAddress))
    ) {
      throw new UsageError(`-p: host port ${f.hostPort} is forwarded twice`, {
        hint: 'give each forward its own host port',
      });
    }
    seen.set(f.hostPort, f);
  }
}

function isWildcard(address: string): boolean {
  return address === '0.0.0.0' || address === '::';
}

/** Fails when a host port is already taken (by trying to listen on it for a moment). */
export async function checkHostPortsFree(forwards: readonly PortForward[]): Promise<void> {
  for (const f of forwards) {
    const problem = await new Promise<string | undefined>((resolve) => {
      const server = net.createServer();
      server.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      server.listen({ host: f.hostAddress, port: f.hostPort, exclusive: true }, () =>
        server.close(() => resolve(undefined)),
      );
    });
    if (problem === 'EADDRINUSE') {
      throw new UsageError(`-p: host port ${f.hostAddress}:${f.hostPort} is already in use`, {
        hint: `stop what listens there (ss -ltnp 'sport = :${f.hostPort}') or pick another host port`,
      });
    }
    if (problem === 'EADDRNOTAVAIL') {
      throw new UsageError(`-p: ${f.hostAddress} is not an address of this host`, {
        hint: 'use 127.0.0.1 or an address this host has',
      });
    }
    if (problem === 'EACCES') {
      throw new UsageError(`-p: not allowed to listen on ${f.hostAddress}:${f.hostPort}`, {
        hint: 'ports below 1024 need privileges; pick a port from 1024 up',
      });
    }
    if (problem)
      throw new UsageError(`-p: cannot listen on ${f.hostAddress}:${f.hostPort} (${problem})`, {
        hint: PORT_HINT,
      });
  }
}

/** A TCP port free on loopback now (the kernel's choice); the forward binds it moments later. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}
