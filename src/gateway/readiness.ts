import net from 'node:net';
import tls from 'node:tls';
import { VmError } from '../errors.ts';
import { abortableSleep } from '../supervisor/wait.ts';
import type { MtlsBundle } from './client-config.ts';

/**
 * One TCP probe of a forwarded port. gvproxy accepts a connection even when nothing listens in
 * the guest, then resets it (or sends EOF): only a connection that stays open and silent for
 * `quietMs` (a TLS server waiting for its ClientHello) counts as listening.
 */
export function probeTcp(
  port: number,
  options: { readonly host?: string; readonly connectTimeoutMs?: number; readonly quietMs?: number } = {},
): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: options.host ?? '127.0.0.1', port });
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), options.connectTimeoutMs ?? 2_000);
    sock.once('connect', () => {
      clearTimeout(timer);
      setTimeout(() => finish(true), options.quietMs ?? 200);
    });
    sock.once('data', () => finish(false));
    sock.once('end', () => finish(false));
    sock.once('error', () => finish(false));
    sock.once('close', () => finish(false));
  });
}

export class GatewayTlsError extends VmError {}

/**
 * An mTLS handshake with the gateway: the server must present a certificate the gateway's CA
 * signed for `servername`, and must accept the client certificate. Resolves on success; a
 * certificate problem rejects with GatewayTlsError (fatal: waiting will not fix it); anything
 * else (reset, timeout) resolves false, to be retried.
 */
export function mtlsHandshake(
  port: number,
  bundle: MtlsBundle,
  options: { readonly servername?: string; readonly timeoutMs?: number } = {},
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({
      host: '127.0.0.1',
      port,
      servername: options.servername ?? 'localhost',
      ca: bundle.caCert,
      cert: bundle.clientCert,
      key: bundle.clientKey,
      rejectUnauthorized: true,
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(false);
    }, options.timeoutMs ?? 5_000);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      // TLS 1.3: the server checks the client certificate after the handshake and may still close.
      setTimeout(() => {
        const alive = !sock.destroyed;
        sock.destroy();
        resolve(alive);
      }, 100);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      const code = err.code ?? '';
      if (
        /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME|certificate/i.test(`${code} ${err.message}`)
      ) {
        reject(
          new GatewayTlsError(`the gateway on 127.0.0.1:${port} fails mTLS: ${err.message}`, {
            hint: 'the client bundle and the gateway disagree on the CA; restart with --reset to issue new credentials',
            cause: err,
          }),
        );
      } else resolve(false);
    });
  });
}

/**
 * Waits until the gateway answers mTLS on `port` (1 s between attempts), or fails at the
 * deadline with the last console lines. Returns the elapsed milliseconds.
 */
export async function waitForGateway(options: {
  readonly port: number;
  readonly bundle: MtlsBundle;
  readonly deadlineMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly consoleTail?: (() => Promise<string>) | undefined;
  readonly intervalMs?: number;
}): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    options.signal?.throwIfAborted();
    if ((await probeTcp(options.port)) && (await mtlsHandshake(options.port, options.bundle))) {
      return Math.round(performance.now() - t0);
    }
    if (performance.now() - t0 > options.deadlineMs) {
      const tail = (await options.consoleTail?.().catch(() => '')) ?? '';
      throw new VmError(
        `the gateway did not answer mTLS on 127.0.0.1:${options.port} within ${Math.round(options.deadlineMs / 1000)} s${tail ? `; last console lines:\n${tail}` : ''}`,
        { hint: 'see the console log; a first boot that pulls images can take longer (--ready-timeout)' },
      );
    }
    await abortableSleep(options.intervalMs ?? 1_000, options.signal);
  }
}
