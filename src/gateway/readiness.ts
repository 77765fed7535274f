import net from 'node:net';
import tls from 'node:tls';
import { VmError } from '../errors.ts';
import { abortableSleep } from '../supervisor/wait.ts';
import type { MtlsBundle } from './client-config.ts';
import { callHealth, describeVersion, GatewayHealthError, type HealthProbe } from './health.ts';

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
 * What one mTLS handshake showed: `ok` (both certificates accepted, HTTP/2 chosen by ALPN, as
 * every gRPC server does); `no-h2` (accepted, but the server chose no HTTP/2: not a gRPC server,
 * so no gRPC call is made); `no-answer` (reset, timeout: worth another try); `closed` (the
 * handshake completed, then the server closed at once: under TLS 1.3 that is how a server that
 * checks client certificates without an alert refuses ours).
 */
export type HandshakeOutcome = 'ok' | 'no-h2' | 'no-answer' | 'closed';

/** Node's codes for a server certificate the client bundle does not trust. */
const SERVER_CERT_CODES =
  /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|CERT_[A-Z_]+|ERR_TLS_CERT_ALTNAME_INVALID)$/;

/** TLS alerts by which a server refuses the client certificate (any other alert: try again). */
const CLIENT_CERT_ALERTS =
  /^ERR_SSL_(TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLV3_ALERT_BAD_CERTIFICATE|TLSV1_ALERT_UNKNOWN_CA|SSLV3_ALERT_CERTIFICATE_UNKNOWN|TLSV1_ALERT_ACCESS_DENIED|SSLV3_ALERT_HANDSHAKE_FAILURE|SSLV3_ALERT_CERTIFICATE_EXPIRED|SSLV3_ALERT_CERTIFICATE_REVOKED|SSLV3_ALERT_UNSUPPORTED_CERTIFICATE|TLSV1_ALERT_DECRYPT_ERROR)$/;

/** An OpenSSL error code as words: ERR_SSL_TLSV1_ALERT_UNKNOWN_CA → "tlsv1 alert unknown ca". */
function sslWords(code: string): string {
  return code
    .replace(/^ERR_SSL_/, '')
    .toLowerCase()
    .replaceAll('_', ' ');
}

/**
 * An mTLS handshake with the gateway: the server must present a certificate the gateway's CA
 * signed for `servername`, and must accept the client certificate. A server certificate the bundle
 * does not trust, or a TLS alert refusing ours, rejects with GatewayTlsError (fatal: waiting will
 * not fix it).
 */
export function mtlsHandshake(
  port: number,
  bundle: MtlsBundle,
  options: { readonly servername?: string; readonly timeoutMs?: number } = {},
): Promise<HandshakeOutcome> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({
      host: '127.0.0.1',
      port,
      servername: options.servername ?? 'localhost',
      ca: bundle.caCert,
      cert: bundle.clientCert,
      key: bundle.clientKey,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve('no-answer');
    }, options.timeoutMs ?? 5_000);
    let handshook = false;
    sock.once('secureConnect', () => {
      handshook = true;
      clearTimeout(timer);
      // TLS 1.3: the server checks the client certificate after the handshake and may still close.
      setTimeout(() => {
        const alive = !sock.destroyed;
        const h2 = sock.alpnProtocol === 'h2';
        sock.destroy();
        resolve(alive ? (h2 ? 'ok' : 'no-h2') : 'closed');
      }, 100);
    });
    sock.once('close', () => {
      if (handshook) return; // the timer above decides
      clearTimeout(timer);
      resolve('no-answer');
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      const code = err.code ?? '';
      if (SERVER_CERT_CODES.test(code)) {
        reject(
          new GatewayTlsError(
            `the gateway on 127.0.0.1:${port} fails mTLS: its certificate is not one the client bundle's CA signed for '${options.servername ?? 'localhost'}' (${err.message})`,
            {
              hint: 'the client bundle and the gateway disagree on the CA; restart with --reset to issue new credentials',
              cause: err,
            },
          ),
        );
      } else if (code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL') {
        // The server speaks TLS but offers no HTTP/2 (it refused our ALPN list): no gRPC server.
        resolve('no-h2');
      } else if (CLIENT_CERT_ALERTS.test(code)) {
        reject(
          new GatewayTlsError(
            `the gateway on 127.0.0.1:${port} fails mTLS: it refuses the client certificate (${sslWords(code)})`,
            {
              hint: "the client certificate is not signed by the gateway's client CA; restart with --reset to issue new credentials",
              cause: err,
            },
          ),
        );
      } else if (!handshook) resolve('no-answer');
    });
  });
}

/** After this many handshakes in a row that the server closed at once, its refusal is final. */
export const CLOSED_HANDSHAKES_FATAL = 3;

/** What the waiting saw last, for the progress and the deadline's error. */
export type GatewayWaitState =
  | { readonly kind: 'down' }
  | { readonly kind: 'no-h2' }
  | { readonly kind: 'health'; readonly probe: HealthProbe };

export interface GatewayReadiness {
  readonly ms: number;
  /** The gateway's version from its Health answer ('' when it sent none). */
  readonly version: string;
}

/**
 * Waits until the gateway answers mTLS on `port` and its `openshell.v1.OpenShell/Health` says
 * HEALTHY (1 s between attempts). DEGRADED, UNSPECIFIED or no gRPC answer yet keep it waiting
 * (`onHealth` hears each change); UNHEALTHY, UNIMPLEMENTED or refused credentials fail at once; the
 * deadline fails with what it saw last and the last console lines.
 */
export async function waitForGateway(options: {
  readonly port: number;
  readonly bundle: MtlsBundle;
  readonly deadlineMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly consoleTail?: (() => Promise<string>) | undefined;
  readonly intervalMs?: number;
  /** One Health call's deadline (default 5 s). */
  readonly callTimeoutMs?: number;
  readonly onHealth?: ((probe: HealthProbe) => void) | undefined;
}): Promise<GatewayReadiness> {
  const t0 = performance.now();
  let closedInARow = 0;
  let last: GatewayWaitState = { kind: 'down' };
  let lastSaid = '';
  for (;;) {
    options.signal?.throwIfAborted();
    const outcome = (await probeTcp(options.port))
      ? await mtlsHandshake(options.port, options.bundle)
      : 'no-answer';
    closedInARow = outcome === 'closed' ? closedInARow + 1 : 0;
    if (closedInARow >= CLOSED_HANDSHAKES_FATAL) {
      throw new GatewayTlsError(
        `the gateway on 127.0.0.1:${options.port} fails mTLS: it closed the connection right after the handshake ${closedInARow} times (it refuses the client certificate)`,
        {
          hint: "the client certificate is not signed by the gateway's client CA; restart with --reset to issue new credentials",
        },
      );
    }
    if (outcome === 'no-h2') last = { kind: 'no-h2' };
    if (outcome === 'ok') {
      const probe = await callHealth(options.port, options.bundle, {
        timeoutMs: options.callTimeoutMs,
        signal: options.signal,
      });
      options.signal?.throwIfAborted();
      last = { kind: 'health', probe };
      if (probe.kind === 'answer' && probe.status === 'HEALTHY') {
        return { ms: Math.round(performance.now() - t0), version: probe.version };
      }
      if (probe.kind === 'answer' && probe.status === 'UNHEALTHY') {
        throw new GatewayHealthError(
          `the gateway on 127.0.0.1:${options.port} reports UNHEALTHY (${describeVersion(probe.version)})`,
          { hint: "see the gateway's logs: openshell-vm exec NAME -- kubectl -n openshell logs openshell-0" },
        );
      }
      const said = describeWait(last);
      if (said !== lastSaid) options.onHealth?.(probe);
      lastSaid = said;
    }
    if (performance.now() - t0 > options.deadlineMs) {
      const tail = (await options.consoleTail?.().catch(() => '')) ?? '';
      const seconds = Math.round(options.deadlineMs / 1000);
      const what =
        last.kind === 'down'
          ? `did not answer mTLS on 127.0.0.1:${options.port} within ${seconds} s`
          : `on 127.0.0.1:${options.port} answered mTLS but was not HEALTHY within ${seconds} s: ${describeWait(last)}`;
      throw new VmError(`the gateway ${what}${tail ? `; last console lines:\n${tail}` : ''}`, {
        hint: 'see the console log; a first boot that pulls images can take longer (--ready-timeout)',
      });
    }
    await abortableSleep(options.intervalMs ?? 1_000, options.signal);
  }
}

/** What a wait state says, as a clause: "Health says DEGRADED (version 0.3.1)". */
export function describeWait(state: GatewayWaitState): string {
  if (state.kind === 'down') return 'no mTLS answer yet';
  if (state.kind === 'no-h2') return 'it speaks TLS without HTTP/2 (ALPN), so it is no gRPC server';
  const p = state.probe;
  return p.kind === 'answer'
    ? `Health says ${p.status} (${describeVersion(p.version)})`
    : `Health has no answer (${p.detail})`;
}
