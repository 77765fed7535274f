import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { explainHostCondition, HostError, isErrno } from '../errors.ts';
import { ensureTrustedCacheDir } from '../host/dir-trust.ts';
import type { PinnedDownload } from './libkrunfw-pins.ts';
import { sha256File } from './source.ts';

/** How far a download is, for a progress line (`total` undefined when the server sends no length). */
export type DownloadProgress = (received: number, total: number | undefined) => void;

export interface DownloadOptions {
  readonly onProgress?: DownloadProgress | undefined;
  readonly signal?: AbortSignal | undefined;
  /** The smallest step between two progress calls, in bytes (default 8 MiB). */
  readonly progressStepBytes?: number | undefined;
}

/**
 * The pinned file in `dir` (kept there across builds), downloaded when absent: streamed to a
 * temporary file beside it while its sha256 is computed, renamed into place only when the sha256
 * is the pinned one. A mismatch, an HTTP error or a broken transfer leaves nothing behind. A file
 * already in `dir` is used when its sha256 is the pinned one, replaced otherwise. A pin without a
 * sha256 is refused before anything is fetched.
 */
export async function fetchPinned(
  pin: PinnedDownload,
  dir: string,
  options: DownloadOptions = {},
): Promise<{ file: string; downloaded: boolean }> {
  if (!pin.sha256) {
    throw new HostError(
      `the ${pin.what} ${pin.version} has no pinned sha256: refusing to download it unverified`,
      {
        hint: `set its sha256 in src/kernel/libkrunfw-pins.ts, or download ${pin.url} yourself, check it, and pass its path`,
      },
    );
  }
  // A verified file is used by path later: its directory must be ours alone (<cache>/kernels down).
  await ensureTrustedCacheDir(path.dirname(dir), dir);
  const file = path.join(dir, pin.fileName);
  try {
    if ((await sha256File(file)) === pin.sha256) return { file, downloaded: false };
    await fs.rm(file, { force: true }); // damaged or another version: fetched again
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const tmp = `${file}.part-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const sha256 = await download(pin, tmp, options);
    if (sha256 !== pin.sha256) {
      throw new HostError(
        `checksum mismatch: ${pin.url} sent a file with sha256 ${sha256}, but the ${pin.what} ${pin.version} is pinned at ${pin.sha256}`,
        {
          hint: 'nothing was kept: the server sent other bytes than the pinned release (a proxy page, a changed or tampered file); download it from elsewhere, check its sha256, and pass its path',
        },
      );
    }
    await fs.rename(tmp, file);
    return { file, downloaded: true };
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw explainHostCondition(err) ?? err;
  }
}

async function download(pin: PinnedDownload, to: string, options: DownloadOptions): Promise<string> {
  let res: Response;
  try {
    res = await fetch(pin.url, { signal: options.signal ?? null, redirect: 'follow' });
  } catch (err) {
    if (options.signal?.aborted) throw err;
    throw new HostError(`cannot download the ${pin.what} from ${pin.url}`, {
      hint: 'this needs internet access; offline, download it elsewhere and pass its path (--libkrunfw-source PATH, --kernel-source PATH)',
      cause: err,
    });
  }
  if (!res.ok || !res.body) {
    throw new HostError(`cannot download the ${pin.what}: ${pin.url} answered HTTP ${res.status}`, {
      hint: 'check the URL in src/kernel/libkrunfw-pins.ts, or download it elsewhere and pass its path',
    });
  }
  const length = Number(res.headers.get('content-length'));
  const total = Number.isFinite(length) && length > 0 ? length : undefined;
  const hash = createHash('sha256');
  const step = options.progressStepBytes ?? 8 * 1024 * 1024;
  let received = 0;
  let reported = 0;
  const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    received += chunk.length;
    if (received - reported >= step) {
      reported = received;
      options.onProgress?.(received, total);
    }
  });
  try {
    await pipeline(body, createWriteStream(to, { mode: 0o644 }), { signal: options.signal });
  } catch (err) {
    if (options.signal?.aborted || explainHostCondition(err)) throw err;
    throw new HostError(`the download of ${pin.url} broke off after ${received} bytes`, {
      hint: 'try again; offline, download it elsewhere and pass its path',
      cause: err,
    });
  }
  if (total !== undefined && received !== total) {
    throw new HostError(`the download of ${pin.url} ended after ${received} of ${total} bytes`, {
      hint: 'try again; offline, download it elsewhere and pass its path',
    });
  }
  options.onProgress?.(received, total);
  return hash.digest('hex');
}
