import { closeSync, openSync, readSync } from 'node:fs';

/**
 * `bytes` random bytes from the kernel (/dev/urandom) as hex, for temporary names and run ids.
 * Not node:crypto: a detached supervisor writes its state file with this and otherwise never loads
 * node:crypto, which keeps ~3 MiB of resident memory off every running instance (bench:startup).
 */
export function randomHex(bytes: number): string {
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
  return buf.toString('hex');
}
