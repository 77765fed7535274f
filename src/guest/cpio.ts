/**
 * A writer for the cpio "newc" format (the one the Linux kernel unpacks as an initramfs).
 * Output is reproducible: inode numbers are assigned in entry order, and mtime, uid and gid
 * are fixed, so the same entries always give the same bytes.
 */

export type CpioEntry =
  | { readonly type: 'dir'; readonly path: string; readonly mode?: number }
  | { readonly type: 'file'; readonly path: string; readonly data: Uint8Array; readonly mode?: number }
  | { readonly type: 'symlink'; readonly path: string; readonly target: string }
  | {
      readonly type: 'chardev';
      readonly path: string;
      readonly major: number;
      readonly minor: number;
      readonly mode?: number;
    };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = 'TRAILER!!!';

export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let offset = 0;
  const push = (chunk: Buffer) => {
    chunks.push(chunk);
    offset += chunk.length;
  };
  const pad = () => {
    const rem = offset % 4;
    if (rem) push(Buffer.alloc(4 - rem));
  };
  const seen = new Set<string>();
  let ino = 1;
  const record = (name: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0, nlink = 1) => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    const fields = [
      name === TRAILER ? 0 : ino++,
      mode,
      0, // uid
      0, // gid
      nlink,
      0, // mtime
      data.length,
      0, // devmajor
      0, // devminor
      rdevMajor,
      rdevMinor,
      nameBytes.length,
      0, // check
    ];
    push(Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`, 'ascii'));
    push(nameBytes);
    pad();
    if (data.length) {
      push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      pad();
    }
  };
  for (const entry of entries) {
    const name = normalize(entry.path);
    if (seen.has(name)) throw new Error(`cpio: duplicate entry ${name}`);
    seen.add(name);
    switch (entry.type) {
      case 'dir':
        record(name, S_IFDIR | (entry.mode ?? 0o755), new Uint8Array(0), 0, 0, 2);
        break;
      case 'file':
        record(name, S_IFREG | (entry.mode ?? 0o644), entry.data);
        break;
      case 'symlink':
        record(name, S_IFLNK | 0o777, Buffer.from(entry.target, 'utf8'));
        break;
      case 'chardev':
        record(name, S_IFCHR | (entry.mode ?? 0o600), new Uint8Array(0), entry.major, entry.minor);
        break;
    }
  }
  record(TRAILER, 0, new Uint8Array(0), 0, 0, 1);
  // The kernel reads the archive in 512-byte blocks; pad like cpio(1) does.
  const rem = offset % 512;
  if (rem) push(Buffer.alloc(512 - rem));
  return Buffer.concat(chunks, offset);
}

function normalize(p: string): string {
  const trimmed = p.replace(/^\/+/, '').replace(/\/+$/, '');
  if (!trimmed || trimmed.split('/').some((part) => part === '..' || part === '.' || part === '')) {
    throw new Error(`cpio: invalid path '${p}'`);
  }
  return trimmed;
}
