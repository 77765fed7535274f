import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HostError, isErrno } from '../errors.ts';
import { pathExists } from '../host/fs.ts';
import { DIGEST } from './reference.ts';

export interface Ingested {
  readonly digest: string;
  readonly size: number;
}

/** Raised when content does not hash to the digest it was asked for: never used, never kept. */
export class DigestMismatchError extends HostError {
  constructor(what: string, expected: string, actual: string) {
    super(`${what}: content does not match its digest (expected ${expected}, got ${actual})`, {
      hint: 'the source is corrupt or has been tampered with; nothing of it was kept',
    });
  }
}

/**
 * Content-addressed blobs (`<dir>/sha256/<hex>`), shared by every image and chart pull. A blob
 * is only ever renamed into place after its bytes hashed to its name, so whatever is in the
 * store is trusted; a partial download stays a temporary file and is removed.
 */
export class BlobStore {
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
  }

  path(digest: string): string {
    if (!DIGEST.test(digest)) throw new HostError(`'${digest}' is not a sha256 digest`);
    return path.join(this.dir, 'sha256', digest.slice('sha256:'.length));
  }

  has(digest: string): Promise<boolean> {
    return pathExists(this.path(digest));
  }

  open(digest: string): Readable {
    return createReadStream(this.path(digest));
  }

  async read(digest: string): Promise<Buffer> {
    return fs.readFile(this.path(digest));
  }

  /**
   * Stores `input`, hashing as it goes. With `expected`, content of another digest (or size) is
   * refused with DigestMismatchError and not stored. `onBytes` reports progress.
   */
  async ingest(
    input: Readable | AsyncIterable<Uint8Array>,
    options: {
      readonly expected?: string | undefined;
      readonly expectedSize?: number | undefined;
      readonly what: string;
      readonly onBytes?: ((n: number) => void) | undefined;
      readonly signal?: AbortSignal | undefined;
    },
  ): Promise<Ingested> {
    await fs.mkdir(path.join(this.dir, 'sha256'), { recursive: true });
    const tmp = path.join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        size += chunk.length;
        options.onBytes?.(chunk.length);
        done(null, chunk);
      },
    });
    try {
      await pipeline(input, meter, createWriteStream(tmp, { mode: 0o644 }), { signal: options.signal });
      const digest = `sha256:${hash.digest('hex')}`;
      if (options.expected && digest !== options.expected) {
        throw new DigestMismatchError(options.what, options.expected, digest);
      }
      if (options.expectedSize !== undefined && size !== options.expectedSize) {
        throw new HostError(`${options.what}: expected ${options.expectedSize} bytes, got ${size}`, {
          hint: 'the source is truncated or has been tampered with; nothing of it was kept',
        });
      }
      await fs.rename(tmp, this.path(digest));
      return { digest, size };
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  async ingestBuffer(data: Uint8Array, what: string, expected?: string): Promise<Ingested> {
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (expected && digest !== expected) throw new DigestMismatchError(what, expected, digest);
    if (!(await this.has(digest))) {
      await fs.mkdir(path.join(this.dir, 'sha256'), { recursive: true });
      const tmp = `${this.path(digest)}.tmp-${process.pid}`;
      await fs.writeFile(tmp, data);
      await fs.rename(tmp, this.path(digest));
    }
    return { digest, size: data.length };
  }

  /** Re-hashes a stored blob; a mismatch (disk corruption, tampering) removes it. */
  async verify(digest: string): Promise<boolean> {
    const hash = createHash('sha256');
    try {
      for await (const chunk of this.open(digest)) hash.update(chunk as Buffer);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw err;
    }
    if (`sha256:${hash.digest('hex')}` === digest) return true;
    await fs.rm(this.path(digest), { force: true });
    return false;
  }
}
