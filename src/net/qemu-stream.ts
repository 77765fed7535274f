/**
 * QEMU's stream netdev framing, which gvproxy's -listen-qemu and libkrun's unixstream backend
 * share: each Ethernet frame is preceded by its length as a 4-byte big-endian number. Pure: bytes
 * in whatever pieces the socket delivers them, complete records out.
 */

export const LENGTH_PREFIX_BYTES = 4;
/** Far above any frame a VMM sends (64 KiB GSO frames); a longer length means the stream is garbage. */
export const MAX_FRAME_BYTES = 256 * 1024;

export class FramingError extends Error {
  override readonly name = 'FramingError';
}

/**
 * Splits a byte stream into records. push() calls `keep(frame)` for each complete frame and
 * returns the byte ranges to forward: the kept records, with their length prefixes, consecutive
 * ones coalesced into one slice (usually the whole chunk, without a copy). An incomplete record
 * at the end waits for the next chunk.
 */
export class FrameStream {
  #pending: Buffer | undefined;

  push(chunk: Buffer, keep: (frame: Buffer) => boolean): Buffer[] {
    const data = this.#pending ? Buffer.concat([this.#pending, chunk]) : chunk;
    this.#pending = undefined;
    const out: Buffer[] = [];
    let runStart = -1;
    let at = 0;
    while (data.length - at >= LENGTH_PREFIX_BYTES) {
      const length = data.readUInt32BE(at);
      if (length > MAX_FRAME_BYTES)
        throw new FramingError(`a frame of ${length} bytes (at most ${MAX_FRAME_BYTES} expected)`);
      const end = at + LENGTH_PREFIX_BYTES + length;
      if (end > data.length) break;
      if (keep(data.subarray(at + LENGTH_PREFIX_BYTES, end))) {
        if (runStart < 0) runStart = at;
      } else if (runStart >= 0) {
        out.push(data.subarray(runStart, at));
        runStart = -1;
      }
      at = end;
    }
    if (runStart >= 0) out.push(data.subarray(runStart, at));
    if (at < data.length) this.#pending = data.subarray(at);
    return out;
  }

  /** Bytes of an incomplete record held back. */
  get pendingBytes(): number {
    return this.#pending?.length ?? 0;
  }
}

/** One frame as a stream record (tests and tools). */
export function encodeRecord(frame: Uint8Array): Buffer {
  const record = Buffer.alloc(LENGTH_PREFIX_BYTES + frame.length);
  record.writeUInt32BE(frame.length, 0);
  record.set(frame, LENGTH_PREFIX_BYTES);
  return record;
}
