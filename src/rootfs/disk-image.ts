import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { randomHex } from '../host/random-hex.ts';
import { findOnPath } from '../host/toolchain.ts';

/**
 * A rootfs directory as a raw ext4 image: the root of a gateway whose state is saved and restored
 * (QEMU migrates a virtio-blk disk, not a vhost-user-fs share). mke2fs -d copies the tree as it is
 * (owners, modes, symlinks as symlinks, device nodes, hard links, extended attributes); the image
 * is sparse, so its headroom costs no space until the guest writes.
 */

const execFileAsync = promisify(execFile);
const MIB = 1 << 20;
const GIB = 1 << 30;
const MKE2FS_LOCATIONS = ['/usr/sbin/mke2fs', '/sbin/mke2fs'];

/**
 * The image's size for a tree that takes `usedBytes`: twice that plus 2 GiB (the cluster's
 * images unpack next to their archives, its datastore grows), at least 8 GiB, in whole MiB.
 */
export function diskImageBytes(usedBytes: number): number {
  const want = Math.max(2 * usedBytes + 2 * GIB, 8 * GIB);
  return Math.ceil(want / MIB) * MIB;
}

/** mke2fs's argv (without the binary) for `rootfs` into `image` (created with its size already). */
export function mke2fsArgs(rootfs: string, image: string): string[] {
  return [
    '-q',
    '-F',
    '-t',
    'ext4',
    // The tree's content, and the image's own root directory owned by root as the tree's is.
    '-d',
    rootfs,
    '-E',
    'root_owner=0:0',
    '-L',
    'ovmroot',
    // No blocks reserved for root (the guest is root), an inode per 8 KiB (many small files).
    '-m',
    '0',
    '-i',
    '8192',
    image,
  ];
}

export interface DiskImage {
  readonly path: string;
  readonly sizeBytes: number;
  readonly usedBytes: number;
  readonly ms: number;
}

/** Finds mke2fs (PATH, then /usr/sbin and /sbin, which a user's PATH may lack). */
export async function findMke2fs(env: HostEnvironment): Promise<string> {
  const onPath = await findOnPath('mke2fs', env.searchPath);
  if (onPath) return onPath;
  for (const candidate of MKE2FS_LOCATIONS) {
    const ok = await fs
      .access(candidate, fs.constants.X_OK)
      .then(() => true)
      .catch(() => false);
    if (ok) return candidate;
  }
  throw new HostError('mke2fs not found (it builds the disk image a saved gateway boots from)', {
    hint: 'apt-get install e2fsprogs, or boot without --snapshot',
  });
}

/** How long mke2fs gets to end after SIGTERM on an abort, before SIGKILL. */
const MKE2FS_GRACE_MS = 2_000;

/**
 * Builds `image` from `rootfs` (next to it first, then renamed: a failed build leaves no image).
 * A failure is a HostError with mke2fs's own words. Aborting `signal` (Ctrl-C) ends mke2fs
 * (SIGTERM, SIGKILL after MKE2FS_GRACE_MS) and rejects with the signal's reason once it is gone;
 * the signal is required, so that no caller forgets it.
 */
export async function buildDiskImage(
  env: HostEnvironment,
  rootfs: string,
  image: string,
  options: { readonly signal: AbortSignal | undefined; readonly graceMs?: number },
): Promise<DiskImage> {
  const t0 = performance.now();
  const mke2fs = await findMke2fs(env);
  const used = await treeBytes(rootfs, options.signal);
  const sizeBytes = diskImageBytes(used);
  const tmp = path.join(path.dirname(image), `.${path.basename(image)}.${randomHex(6)}`);
  try {
    const handle = await fs.open(tmp, 'wx', 0o600);
    try {
      await handle.truncate(sizeBytes);
    } finally {
      await handle.close();
    }
    await runMke2fs(
      mke2fs,
      mke2fsArgs(rootfs, tmp),
      options.signal,
      options.graceMs ?? MKE2FS_GRACE_MS,
    ).catch((err: Error & { stderr?: string }) => {
      if (options.signal?.aborted) throw options.signal.reason;
      const words = (err.stderr ?? '').trim().split('\n').slice(-3).join('; ');
      throw new HostError(`mke2fs could not build the disk image from ${rootfs}: ${words || err.message}`, {
        hint: 'check free space where the instance lives, and that the rootfs is readable (run as root)',
        cause: err,
      });
    });
    await fs.rename(tmp, image);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
  return { path: image, sizeBytes, usedBytes: used, ms: Math.round(performance.now() - t0) };
}

/**
 * Runs mke2fs to its end; on an abort, ends it (SIGTERM, then SIGKILL after `graceMs`) and
 * rejects only once it has exited, so nothing writes the image after the caller went on. A failure
 * carries the end of its stderr.
 */
function runMke2fs(
  command: string,
  args: readonly string[],
  signal: AbortSignal | undefined,
  graceMs: number,
): Promise<void> {
  signal?.throwIfAborted();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-16_384);
    });
    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (err: (Error & { stderr?: string }) | undefined) => {
      signal?.removeEventListener('abort', onAbort);
      clearTimeout(killTimer);
      if (signal?.aborted) reject(signal.reason);
      else if (err) reject(Object.assign(err, { stderr }));
      else resolve();
    };
    child.once('error', (err) => done(err));
    child.once('close', (code, sig) => {
      done(
        code === 0
          ? undefined
          : new Error(sig ? `mke2fs was killed by ${sig}` : `mke2fs exited with code ${code}`),
      );
    });
  });
}

/** The space the tree takes (du's allocated bytes, one filesystem). */
async function treeBytes(dir: string, signal: AbortSignal | undefined): Promise<number> {
  const { stdout } = await execFileAsync('du', ['-s', '-x', '-B1', dir], { signal }).catch((err: Error) => {
    throw new HostError(`cannot measure ${dir}: ${err.message}`, { cause: err });
  });
  const bytes = Number.parseInt(stdout.split(/\s/)[0] ?? '', 10);
  if (!Number.isFinite(bytes)) throw new HostError(`du gave no size for ${dir}`);
  return bytes;
}
