import { HostError } from '../errors.ts';
import { abortableSleep } from '../supervisor/wait.ts';
import { GVPROXY_NET } from './gvproxy.ts';
import type { PortForward } from './ports.ts';

/** A forward as gvproxy's API lists it. */
export interface ExposedForward {
  readonly local: string;
  readonly remote: string;
  readonly protocol: string;
}

export interface ForwarderClientOptions {
  /** Per-request timeout. */
  readonly requestTimeoutMs?: number;
}

/** A typed client for gvproxy's forwarder API (/services/forwarder/{expose,unexpose,all}) over its Unix socket. */
export class ForwarderClient {
  readonly socketPath: string;
  readonly #timeoutMs: number;

  constructor(socketPath: string, options: ForwarderClientOptions = {}) {
    this.socketPath = socketPath;
    this.#timeoutMs = options.requestTimeoutMs ?? 2_000;
  }

  async list(): Promise<ExposedForward[]> {
    const { status, body } = await this.#request('GET', '/services/forwarder/all');
    if (status !== 200)
      throw new HostError(`gvproxy API: GET /services/forwarder/all answered ${status}: ${body.trim()}`);
    return (JSON.parse(body || '[]') as ExposedForward[] | null) ?? [];
  }

  /**
   * Exposes `forward`. gvproxy's expose is not idempotent: after a retry (the first request may
   * have succeeded but timed out) it answers "proxy already running"; that counts as success when
   * the existing forward goes to the same guest port.
   */
  async expose(forward: PortForward): Promise<void> {
    const request = toRequest(forward);
    const { status, body } = await this.#request('POST', '/services/forwarder/expose', request);
    if (status === 200 || status === 204) return;
    if (/already running/i.test(body)) {
      const existing = (await this.list()).find((f) => f.local === request.local && f.protocol === 'tcp');
      if (existing?.remote === request.remote) return;
      throw new HostError(
        `${describe(forward)}: gvproxy already forwards ${request.local} elsewhere (${existing?.remote})`,
      );
    }
    throw new HostError(`${describe(forward)}: gvproxy API answered ${status}: ${body.trim()}`);
  }

  async unexpose(forward: PortForward): Promise<void> {
    const { local } = toRequest(forward);
    const { status, body } = await this.#request('POST', '/services/forwarder/unexpose', {
      local,
      protocol: 'tcp',
    });
    if (status !== 200 && status !== 204)
      throw new HostError(`${describe(forward)}: unexpose answered ${status}: ${body.trim()}`);
  }

  #request(method: string, urlPath: string, payload?: unknown): Promise<{ status: number; body: string }> {
    const http = loadHttp();
    return new Promise((resolve, reject) => {
      const data = payload === undefined ? undefined : JSON.stringify(payload);
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path: urlPath,
          headers: data
            ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }
            : {},
          timeout: this.#timeoutMs,
        },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            body += chunk;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`timed out after ${this.#timeoutMs} ms`)));
      req.on('error', reject);
      req.end(data);
    });
  }
}

/**
 * node:http, loaded on the first request (only a run with port forwards makes one) and as the
 * CommonJS module: `import http from 'node:http'` builds its ES module namespace, which reads every
 * export, and a lazy one loads Node's bundled undici (fetch, WebSocket): ~25 ms and ~14 MB of RSS
 * more than the 3 ms and 3 MB http itself costs, kept by the resident supervisor for its lifetime.
 */
function loadHttp(): typeof import('node:http') {
  return process.getBuiltinModule('node:http');
}

function toRequest(forward: PortForward): ExposedForward {
  const host = forward.hostAddress.includes(':') ? `[${forward.hostAddress}]` : forward.hostAddress;
  return {
    local: `${host}:${forward.hostPort}`,
    remote: `${GVPROXY_NET.guest}:${forward.guestPort}`,
    protocol: 'tcp',
  };
}

export function describe(forward: PortForward): string {
  return `forward ${forward.hostAddress}:${forward.hostPort} -> guest:${forward.guestPort}`;
}

/**
 * Sets up every forward, retrying each request with a doubling backoff (100 ms up to 1 s) until it
 * succeeds or the deadline passes; then fails with the last error, naming the forward.
 */
export async function exposeAll(
  client: ForwarderClient,
  forwards: readonly PortForward[],
  options: { deadlineMs: number; signal?: AbortSignal | undefined },
): Promise<void> {
  for (const forward of forwards) {
    const deadline = performance.now() + options.deadlineMs;
    let delay = 100;
    for (;;) {
      try {
        await client.expose(forward);
        break;
      } catch (err) {
        if (performance.now() + delay > deadline) {
          const why = err instanceof Error ? err.message : String(err);
          throw new HostError(
            `cannot set up ${describe(forward)} within ${options.deadlineMs / 1000} s: ${why}`,
            {
              hint: "see the run's gvproxy.log; a host port taken since the start is a common cause",
              cause: err,
            },
          );
        }
        await abortableSleep(delay, options.signal);
        delay = Math.min(delay * 2, 1_000);
      }
    }
  }
}
