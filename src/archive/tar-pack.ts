import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

/** A member of a tar written by packTar. Data comes from `data` or from the host file `source`. */
export interface PackEntry {
  readonly name: string;
  readonly type: 'file' | 'directory' | 'symlink' | 'link';
  readonly mode?: number | undefined;
  readonly data?: Uint8Array | string | undefined;
  readonly source?: string | undefined;
  readonly linkname?: string | undefined;
  readonly uid?: number | undefined;
  readonly gid?: number | undefined;
  /** Default: the Unix epoch, so that the same entries always give the same bytes. */
  readonly mtime?: Date | undefined;
}

/** Streams a tar of `entries`, in the given order. */
export function packTar(entries: Iterable<PackEntry> | AsyncIterable<PackEntry>): Readable {
  const pack = tar.pack();
  (async () => {
    for await (const entry of entries) {
      const header = {
        name: entry.name,
        type: entry.type,
        mode: entry.mode ?? (entry.type === 'directory' ? 0o755 : 0o644),
        uid: entry.uid ?? 0,
        gid: entry.gid ?? 0,
        mtime: entry.mtime ?? new Date(0),
        ...(entry.linkname === undefined ? {} : { linkname: entry.linkname }),
      };
      if (entry.type !== 'file') {
        await new Promise<void>((resolve, reject) =>
          pack.entry(header, (err) => (err ? reject(err) : resolve())),
        );
      } else if (entry.source !== undefined) {
        const size = (await fs.stat(entry.source)).size;
        await pipeline(createReadStream(entry.source), pack.entry({ ...header, size }));
      } else {
        const data = typeof entry.data === 'string' ? Buffer.from(entry.data) : Buffer.from(entry.data ?? []);
        await new Promise<void>((resolve, reject) =>
          pack.entry(header, data, (err) => (err ? reject(err) : resolve())),
        );
      }
    }
    pack.finalize();
  })().catch((err: unknown) => pack.destroy(err as Error));
  // tar-stream's streams are streamx streams: hand callers a Node.js Readable.
  return Readable.from(pack);
}

/** The whole tar of `entries` in memory (small archives: charts, test fixtures). */
export async function packTarBuffer(entries: Iterable<PackEntry>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of packTar(entries)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Readable of a buffer, for feeding extractTar in tests and small paths. */
export function bufferStream(data: Uint8Array): Readable {
  return Readable.from([Buffer.from(data)]);
}
