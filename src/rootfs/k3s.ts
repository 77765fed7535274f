import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno, UsageError } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import { mib, type ProgressFn } from '../oci/image.ts';
import { hashFile } from './base-debian.ts';

export interface K3sPin {
  readonly version: string;
  readonly sha256: Readonly<Record<GuestArch, string>>;
}

/**
 * The k3s release the gateway runs, with the SHA-256 of each architecture's binary as published
 * in the release's sha256sum-{amd64,arm64}.txt (the same pin as OpenShell's pins.env).
 */
export const K3S_PIN: K3sPin = {
  version: 'v1.35.2+k3s1',
  sha256: {
    x86_64: '3ae8e35a62ac83e8e197c117858a564134057a7b8703cf73e67ce60d19f4a22b',
    aarch64: '228809a7ef47d25c1bdbe746944931ec2fd2edf842b9cf50f1dd4f9ec2505b0e',
  },
};

export const K3S_ASSET: Readonly<Record<GuestArch, string>> = { x86_64: 'k3s', aarch64: 'k3s-arm64' };

export interface K3sBinary {
  readonly path: string;
  readonly version: string;
  readonly sha256: string;
  /** pinned: matches the pin; given: matches --k3s-sha256; unverified: no checksum to compare. */
  readonly verification: 'pinned' | 'given' | 'unverified';
  readonly source: string;
}

const SHA256 = /^[a-f0-9]{64}$/;

/**
 * The k3s binary for `arch`: a local file (`localPath`, verified against `expectedSha256` when
 * given, recognised when it is the pinned binary, else used with a warning), or the pinned
 * release, downloaded into `$cache/k3s/VERSION/` and verified before it is kept or used.
 */
export async function ensureK3s(
  env: HostEnvironment,
  request: {
    readonly arch: GuestArch;
    readonly localPath?: string | undefined;
    readonly expectedSha256?: string | undefined;
    readonly pin?: K3sPin | undefined;
  },
  options: {
    readonly progress?: ProgressFn | undefined;
    readonly warn?: ((m: string) => void) | undefined;
    readonly signal?: AbortSignal | undefined;
  } = {},
): Promise<K3sBinary> {
  const pin = request.pin ?? K3S_PIN;
  const pinned = pin.sha256[request.arch];
  const expected = request.expectedSha256?.toLowerCase();
  if (expected !== undefined && !SHA256.test(expected)) {
    throw new UsageError(`--k3s-sha256: '${request.expectedSha256}' is not a SHA-256 (64 hex digits)`, {
      hint: `take it from the release's sha256sum-*.txt`,
    });
  }
  if (request.localPath) {
    const file = path.resolve(request.localPath);
    let sha256: string;
    try {
      const st = await fs.stat(file);
      if (!st.isFile())
        throw new UsageError(`--k3s: ${file} is not a file`, { hint: 'give the path of a k3s binary' });
      sha256 = await hashFile(file);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        throw new UsageError(`--k3s: ${file} does not exist`, { hint: 'give the path of a k3s binary' });
      }
      throw err;
    }
    if (expected) {
      if (sha256 !== expected) throw checksumError(file, expected, sha256);
      return { path: file, version: 'unknown', sha256, verification: 'given', source: file };
    }
    if (sha256 === pinned)
      return { path: file, version: pin.version, sha256, verification: 'pinned', source: file };
    options.warn?.(
      `k3s at ${file} is not the pinned ${pin.version} ${request.arch} binary (sha256 ${sha256}); using it unverified (pass --k3s-sha256 to verify it)`,
    );
    return { path: file, version: 'unknown', sha256, verification: 'unverified', source: file };
  }

  const asset = K3S_ASSET[request.arch];
  const url = `${env.k3sBaseUrl}/${encodeURIComponent(pin.version)}/${asset}`;
  const dir = path.join(env.cacheDir, 'k3s', pin.version);
  const dest = path.join(dir, asset);
  if (await pathExists(dest)) {
    const sha256 = await hashFile(dest);
    if (sha256 === pinned)
      return { path: dest, version: pin.version, sha256, verification: 'pinned', source: url };
    options.warn?.(`the cached ${dest} does not match its pin; downloading it again`);
    await fs.rm(dest, { force: true });
  }
  await fs.mkdir(dir, { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  options.progress?.(`downloading k3s ${pin.version} (${asset})`);
  try {
    let res: Response;
    try {
      res = await fetch(url, { signal: options.signal ?? null });
    } catch (err) {
      options.signal?.throwIfAborted();
      throw new HostError(
        `cannot download k3s from ${url}: ${(err as { cause?: Error }).cause?.message ?? (err as Error).message}`,
        {
          hint: `offline: download the '${asset}' binary of k3s ${pin.version} elsewhere and pass it with --k3s PATH`,
          cause: err,
        },
      );
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw new HostError(`cannot download k3s from ${url}: HTTP ${res.status}`, {
        hint: `check the version, or pass a binary with --k3s PATH`,
      });
    }
    const total = Number(res.headers.get('content-length') ?? 0);
    const hash = createHash('sha256');
    let done = 0;
    let last = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        hash.update(chunk);
        done += chunk.length;
        if (Date.now() - last > 1000) {
          last = Date.now();
          options.progress?.(`k3s: ${mib(done)}${total ? ` of ${mib(total)}` : ''} MiB`);
        }
        cb(null, chunk);
      },
    });
    await pipeline(
      Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
      meter,
      createWriteStream(tmp, { mode: 0o755 }),
      {
        signal: options.signal,
      },
    );
    const sha256 = hash.digest('hex');
    if (sha256 !== pinned) throw checksumError(url, pinned, sha256);
    await fs.rename(tmp, dest);
    return { path: dest, version: pin.version, sha256, verification: 'pinned', source: url };
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** How a K3sBinary was checked, for progress lines. */
export function describeK3s(k: K3sBinary): string {
  if (k.verification === 'pinned') return `${k.version}, SHA-256 matches the pin`;
  if (k.verification === 'given') return 'SHA-256 matches --k3s-sha256';
  return 'unverified';
}

function checksumError(what: string, expected: string, actual: string): HostError {
  return new HostError(`k3s ${what}: SHA-256 mismatch (expected ${expected}, got ${actual})`, {
    hint: 'the file is corrupt, the wrong architecture or version, or has been tampered with; nothing was installed',
  });
}
