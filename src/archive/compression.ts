import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';

export type Compression = 'gzip' | 'zstd' | 'none';

/** The compression of `head` (the first bytes of a file) by its magic number. */
export function sniffCompression(head: Uint8Array): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

export async function fileCompression(file: string): Promise<Compression> {
  const handle = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    return sniffCompression(head.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/** A stream of `file`'s content, decompressed when it is gzip or zstd (by its magic number). */
export async function openDecompressed(file: string): Promise<Readable> {
  const kind = await fileCompression(file);
  const raw = createReadStream(file);
  if (kind === 'none') return raw;
  const inflate = kind === 'gzip' ? zlib.createGunzip() : zlib.createZstdDecompress();
  raw.on('error', (err) => inflate.destroy(err));
  return raw.pipe(inflate);
}
