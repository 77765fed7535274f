import { closeSync, openSync, readSync } from 'node:fs';

/**
 * `bytes` random bytes from the kernel (/dev/urandom). Not node:crypto: a detached supervisor uses
 * this (temporary names, run ids, the guest's entropy reseed) and otherwise never loads
 * node:crypto, which keeps ~3 MiB of resident memory off every running instance (bench:startup).
 */
export function randomBytes(bytes: number): Buffer {
  const buf = Buffer.alloc(bytes);
  const fd = openSync('/dev/urandom', 'r');
  try {
    let got = 0;
    while (got < bytes) {
      const n = readSync(fd, buf, got, bytes - got, null);
      if (n <= 0) throw new Error('/dev/urandom returned no bytes');
      got += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

/** `bytes` random bytes from the kernel (randomBytes) as hex, for temporary names and run ids. */
export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}
