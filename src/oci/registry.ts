import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { HostError } from '../errors.ts';
import type { BlobStore, Ingested } from './blob-store.ts';
import { DigestMismatchError } from './blob-store.ts';
import type { Credentials } from './credentials.ts';
import { INDEX_TYPES, MANIFEST_TYPES, MEDIA } from './media-types.ts';
import { formatReference, type ImageReference, registryBaseUrl } from './reference.ts';

export interface FetchedManifest {
  readonly mediaType: string;
  readonly digest: string;
  readonly bytes: Buffer;
}

export interface RegistryOptions {
  readonly insecure?: readonly string[] | undefined;
  readonly credentials?: Credentials | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Per-request time limit without progress (ms). */
  readonly timeoutMs?: number | undefined;
}

const ACCEPT_MANIFEST = [...INDEX_TYPES, ...MANIFEST_TYPES].join(', ');

/**
 * A registry client for pulls (distribution-spec v2): manifests and blobs, with Docker's token
 * auth (a 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` is answered by
 * fetching a token from the realm, with the user's credentials if any) and basic auth.
 */
export class RegistryClient {
  readonly registry: string;
  readonly #base: string;
  readonly #options: RegistryOptions;
  readonly #tokens = new Map<string, string>();

  constructor(registry: string, options: RegistryOptions = {}) {
    this.registry = registry;
    this.#base = registryBaseUrl(registry, options.insecure);
    this.#options = options;
  }

  async getManifest(
    ref: ImageReference,
    reference = ref.digest ?? ref.tag ?? 'latest',
  ): Promise<FetchedManifest> {
    const res = await this.#get(ref.repository, `manifests/${reference}`, ACCEPT_MANIFEST);
    if (res.status === 404) {
      await res.body?.cancel();
      throw new HostError(`${formatReference(ref)}: not found in ${this.registry} (manifest ${reference})`, {
        hint: 'check the name and tag (for a private image, log in with docker login)',
      });
    }
    await this.#expectOk(res, `manifest ${reference} of ${ref.repository}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (reference.startsWith('sha256:') && digest !== reference) {
      throw new DigestMismatchError(`manifest of ${formatReference(ref)}`, reference, digest);
    }
    let mediaType = (res.headers.get('content-type') ?? '').split(';')[0]?.trim() ?? '';
    if (![...INDEX_TYPES, ...MANIFEST_TYPES].includes(mediaType)) {
      try {
        mediaType = (JSON.parse(bytes.toString('utf8')) as { mediaType?: string }).mediaType ?? '';
      } catch {
        mediaType = '';
      }
      if (!mediaType) mediaType = MEDIA.ociManifest;
    }
    return { mediaType, digest, bytes };
  }

  /** Stores blob `digest` of `repository` in `store` (verified), unless it is there already. */
  async fetchBlob(
    repository: string,
    digest: string,
    store: BlobStore,
    options: {
      readonly size?: number | undefined;
      readonly onBytes?: ((n: number) => void) | undefined;
    } = {},
  ): Promise<Ingested & { readonly cached: boolean }> {
    if (await store.has(digest)) return { digest, size: options.size ?? 0, cached: true };
    const res = await this.#get(repository, `blobs/${digest}`, '*/*');
    await this.#expectOk(res, `blob ${digest} of ${repository}`);
    if (!res.body) throw new HostError(`${this.registry}: empty response for blob ${digest}`);
    const ingested = await store.ingest(Readable.fromWeb(res.body as WebReadableStream<Uint8Array>), {
      expected: digest,
      expectedSize: options.size,
      what: `blob ${digest} of ${this.registry}/${repository}`,
      onBytes: options.onBytes,
      signal: this.#options.signal,
    });
    return { ...ingested, cached: false };
  }

  async #get(repository: string, suffix: string, accept: string): Promise<Response> {
    const scope = `repository:${repository}:pull`;
    const url = `${this.#base}/v2/${repository}/${suffix}`;
    let res = await this.#fetch(url, accept, this.#tokens.get(scope));
    if (res.status !== 401) return res;
    const challenge = res.headers.get('www-authenticate') ?? '';
    await res.body?.cancel();
    const authorization = await this.#answer(challenge, scope);
    this.#tokens.set(scope, authorization);
    res = await this.#fetch(url, accept, authorization);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw this.#denied(repository);
    }
    return res;
  }

  async #answer(challenge: string, scope: string): Promise<string> {
    const creds = this.#options.credentials;
    const basic = creds
      ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`
      : undefined;
    const scheme = challenge.split(' ', 1)[0]?.toLowerCase();
    if (scheme === 'basic') {
      if (!basic) throw this.#denied(scope);
      return basic;
    }
    if (scheme !== 'bearer') {
      throw new HostError(`${this.registry}: unsupported authentication challenge '${challenge}'`, {
        hint: 'openshell-vm speaks Docker token auth and basic auth',
      });
    }
    const params = parseChallenge(challenge);
    if (!params.realm)
      throw new HostError(`${this.registry}: bearer challenge without a realm: '${challenge}'`);
    const tokenUrl = new URL(params.realm);
    if (params.service) tokenUrl.searchParams.set('service', params.service);
    tokenUrl.searchParams.set('scope', params.scope ?? scope);
    let res: Response;
    try {
      res = await fetch(tokenUrl, {
        headers: basic ? { authorization: basic } : {},
        signal: this.#signal(),
      });
    } catch (err) {
      throw this.#unreachable(err, tokenUrl.host);
    }
    if (!res.ok) {
      await res.body?.cancel();
      if (res.status === 401 || res.status === 403) throw this.#denied(scope);
      throw new HostError(
        `${this.registry}: token endpoint ${tokenUrl.origin}${tokenUrl.pathname} answered ${res.status}`,
      );
    }
    const body = (await res.json()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new HostError(`${this.registry}: the token endpoint returned no token`);
    return `Bearer ${token}`;
  }

  async #fetch(url: string, accept: string, authorization: string | undefined): Promise<Response> {
    const headers: Record<string, string> = { accept };
    if (authorization) headers.authorization = authorization;
    try {
      return await fetch(url, { headers, signal: this.#signal() });
    } catch (err) {
      throw this.#unreachable(err, this.registry);
    }
  }

  #signal(): AbortSignal {
    const timeout = AbortSignal.timeout(this.#options.timeoutMs ?? 60_000);
    return this.#options.signal ? AbortSignal.any([this.#options.signal, timeout]) : timeout;
  }

  async #expectOk(res: Response, what: string): Promise<void> {
    if (res.ok) return;
    const text = (await res.text().catch(() => '')).slice(0, 300);
    throw new HostError(`${this.registry}: ${what}: HTTP ${res.status}${text ? ` ${text.trim()}` : ''}`, {
      hint: res.status >= 500 ? 'the registry failed; try again later' : undefined,
    });
  }

  #denied(what: string): HostError {
    return new HostError(`${this.registry}: access denied (${what})`, {
      hint: `for a private image, log in first (docker login ${this.registry}), or check the name`,
    });
  }

  #unreachable(err: unknown, host: string): HostError {
    if (this.#options.signal?.aborted) return this.#options.signal.reason as HostError;
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message ?? (err as Error).message;
    return new HostError(`cannot reach ${host}: ${why}`, {
      hint: 'check the network and proxy settings; offline, use --base archive:PATH (a docker save or OCI layout tarball)',
      cause: err,
    });
  }
}

/** `Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"` → fields. */
export function parseChallenge(header: string): Record<string, string> {
  const out: Record<string, string> = {};
  const body = header.slice(header.indexOf(' ') + 1);
  for (const m of body.matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]*))/g)) {
    out[(m[1] as string).toLowerCase()] = m[2] ?? m[3] ?? '';
  }
  return out;
}
