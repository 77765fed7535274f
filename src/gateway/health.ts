import { fileURLToPath } from 'node:url';
import type * as Grpc from '@grpc/grpc-js';
import type * as Protobuf from 'protobufjs';
import { VmError } from '../errors.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import type { MtlsBundle } from './client-config.ts';

/** The RPC readiness calls (OpenShell's proto/openshell.proto; our statement of it: health.proto). */
export const HEALTH_METHOD = '/openshell.v1.OpenShell/Health';

/** openshell.v1.ServiceStatus, by name; a number the proto does not define is kept as such. */
export type ServiceStatus = 'UNSPECIFIED' | 'HEALTHY' | 'DEGRADED' | 'UNHEALTHY' | `STATUS_${number}`;

const STATUS_NAMES: Readonly<Record<number, ServiceStatus>> = {
  0: 'UNSPECIFIED',
  1: 'HEALTHY',
  2: 'DEGRADED',
  3: 'UNHEALTHY',
};

/** The longest version string kept from a gateway's answer (the rest is cut, with '…'). */
export const VERSION_MAX_CHARS = 128;
/** The largest Health answer accepted (a HealthResponse is a few bytes). */
export const HEALTH_MAX_BYTES = 64 * 1024;

/** What the gateway answered: its status and version (made safe to print). */
export interface HealthAnswer {
  readonly kind: 'answer';
  readonly status: ServiceStatus;
  readonly version: string;
}

/** No answer yet (not serving gRPC, unavailable, deadline passed): worth another try. */
export interface HealthNoAnswer {
  readonly kind: 'no-answer';
  /** The gRPC status name and the details, made safe to print. */
  readonly detail: string;
}

export type HealthProbe = HealthAnswer | HealthNoAnswer;

/** The gateway answered, and the answer rules it out: waiting will not make it ready. */
export class GatewayHealthError extends VmError {}

/** The gRPC status codes (of the gRPC spec) by number, for messages. */
const GRPC_CODES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
] as const;
const UNIMPLEMENTED = 12;

interface Wire {
  readonly grpc: typeof Grpc;
  readonly request: Protobuf.Type;
  readonly response: Protobuf.Type;
}
let wire: Promise<Wire> | undefined;

/** gRPC and the message types, loaded on first use (a command that checks no gateway never pays). */
function loadWire(): Promise<Wire> {
  wire ??= (async () => {
    const [grpc, protobuf] = await Promise.all([import('@grpc/grpc-js'), import('protobufjs')]);
    const root = protobuf.default.loadSync(fileURLToPath(new URL('./health.proto', import.meta.url)));
    return {
      grpc,
      request: root.lookupType('openshell.v1.HealthRequest'),
      response: root.lookupType('openshell.v1.HealthResponse'),
    };
  })();
  return wire;
}

/** A HealthResponse's fields from the wire (hostile input: any field may be absent or odd). */
export function readHealthResponse(decoded: { status?: unknown; version?: unknown }): HealthAnswer {
  const n = typeof decoded.status === 'number' ? decoded.status : 0;
  const version = typeof decoded.version === 'string' ? decoded.version : '';
  return {
    kind: 'answer',
    status: STATUS_NAMES[n] ?? `STATUS_${n}`,
    version: terminalSafeLine(version, { maxChars: VERSION_MAX_CHARS }),
  };
}

/** "version 0.3.1", or "no version" when the gateway sent none. */
export function describeVersion(version: string): string {
  return version ? `version ${version}` : 'no version';
}

/**
 * One `openshell.v1.OpenShell/Health` call over mTLS with the client bundle, to 127.0.0.1:`port`
 * (the server certificate must name `servername`). Resolves with the answer, or with no-answer
 * for what another try may change (unavailable, deadline, not gRPC yet); rejects with
 * GatewayHealthError when the server does not implement Health.
 */
export async function callHealth(
  port: number,
  bundle: MtlsBundle,
  options: {
    readonly servername?: string | undefined;
    readonly timeoutMs?: number | undefined;
    readonly signal?: AbortSignal | undefined;
  } = {},
): Promise<HealthProbe> {
  const { grpc, request, response } = await loadWire();
  const servername = options.servername ?? 'localhost';
  const credentials = grpc.credentials.createSsl(
    Buffer.from(bundle.caCert),
    Buffer.from(bundle.clientKey),
    Buffer.from(bundle.clientCert),
  );
  const client = new grpc.Client(`127.0.0.1:${port}`, credentials, {
    'grpc.ssl_target_name_override': servername,
    'grpc.default_authority': servername,
    'grpc.max_receive_message_length': HEALTH_MAX_BYTES,
    'grpc.max_send_message_length': HEALTH_MAX_BYTES,
    // One try per call: the caller's loop does the waiting.
    'grpc.enable_retries': 0,
    // 127.0.0.1 directly: never through a proxy from the environment (grpc_proxy, https_proxy).
    'grpc.enable_http_proxy': 0,
    // Its own connection, closed with the client (the shared pool would keep it open).
    'grpc.use_local_subchannel_pool': 1,
    'grpc.initial_reconnect_backoff_ms': 100,
  });
  try {
    return await new Promise<HealthProbe>((resolve, reject) => {
      const call = client.makeUnaryRequest(
        HEALTH_METHOD,
        (msg: object) => Buffer.from(request.encode(request.create(msg)).finish()),
        (bytes: Buffer) =>
          response.toObject(response.decode(bytes)) as { status?: unknown; version?: unknown },
        {},
        { deadline: Date.now() + (options.timeoutMs ?? 5_000) },
        (err, value) => {
          options.signal?.removeEventListener('abort', onAbort);
          if (!err && value) return resolve(readHealthResponse(value));
          const code = err?.code ?? 2;
          const name = GRPC_CODES[code] ?? `code ${code}`;
          const details = terminalSafeLine(err?.details ?? '', { maxChars: 300 });
          if (code === UNIMPLEMENTED) {
            reject(
              new GatewayHealthError(
                `the gateway on 127.0.0.1:${port} does not implement ${HEALTH_METHOD.slice(1).replace('/', '.')} (UNIMPLEMENTED${details ? `: ${details}` : ''})`,
                {
                  hint: "the gateway's image is not an OpenShell gateway or predates the Health RPC: prepare the rootfs with a current chart and gateway image (prepare-rootfs --gateway-image)",
                },
              ),
            );
          } else resolve({ kind: 'no-answer', detail: details ? `${name}: ${details}` : name });
        },
      );
      const onAbort = () => call.cancel();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      if (options.signal?.aborted) call.cancel();
    });
  } finally {
    client.close();
  }
}
