import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { HostError, isErrno } from '../errors.ts';
import { resolveInRoot, splitArchivePath } from './root-path.ts';

/** OCI layer whiteout markers (image-spec layer.md). */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';

export interface ExtractOptions {
  /** An existing directory; nothing is ever written outside it. */
  readonly root: string;
  /** Apply OCI whiteouts and opaque directories (image layers); off for plain archives. */
  readonly layer?: boolean | undefined;
  /** chown entries to their uid/gid (needs root; off: everything belongs to this user). */
  readonly owners: boolean;
  /** What the archive is, for error messages ("layer sha256:ab12...", "base system"). */
  readonly label: string;
  readonly signal?: AbortSignal | undefined;
}

export interface ExtractReport {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  whiteouts: number;
  bytes: number;
  /** Entries not reproduced: device nodes and fifos (the guest mounts devtmpfs on /dev). */
  skippedSpecial: number;
  /** Extended attributes not reproduced (Node cannot set them), e.g. security.capability. */
  skippedXattrs: number;
}

interface PendingDir {
  readonly dest: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: Date | undefined;
}

/**
 * Extracts a tar stream into `options.root` with tar's semantics: modes (setuid included), owners
 * when asked, symlinks and hard links as links, mtimes. Paths are confined to the root: `..` is an
 * error, and symlinks met on the way to an entry resolve inside the root (as in a chroot), so an
 * archive cannot write outside it. With `layer`, `.wh.NAME` deletes NAME and `.wh..wh..opq`
 * empties its directory of what earlier layers put there.
 */
export async function extractTar(input: Readable, options: ExtractOptions): Promise<ExtractReport> {
  const report: ExtractReport = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    whiteouts: 0,
    bytes: 0,
    skippedSpecial: 0,
    skippedXattrs: 0,
  };
  const root = path.resolve(options.root);
  const dirs: PendingDir[] = [];
  // Paths this layer created: an opaque marker must not remove them.
  const written = new Set<string>();
  const extract = tar.extract();
  const feeding = pipeline(input, extract);
  feeding.catch(() => undefined); // awaited below; this only keeps an early failure from going unhandled
  try {
    for await (const entry of extract) {
      options.signal?.throwIfAborted();
      const header = entry.header;
      const parts = splitArchivePath(header.name, options.label);
      if (parts.length === 0) {
        entry.resume();
        continue;
      }
      const base = parts[parts.length - 1] as string;
      const parentParts = parts.slice(0, -1);
      const parent = await resolveInRoot(root, parentParts, { create: true });

      if (options.layer && base.startsWith(WHITEOUT_PREFIX)) {
        entry.resume();
        report.whiteouts++;
        if (base === OPAQUE_MARKER) await emptyOpaqueDir(parent, written);
        else
          await fs.rm(path.join(parent, base.slice(WHITEOUT_PREFIX.length)), {
            recursive: true,
            force: true,
          });
        continue;
      }

      const dest = path.join(parent, base);
      for (let d = dest; d.length > root.length && !written.has(d); d = path.dirname(d)) written.add(d);
      const xattrs = Object.keys((header as { pax?: Record<string, string> }).pax ?? {}).filter((k) =>
        k.startsWith('SCHILY.xattr.'),
      );
      report.skippedXattrs += xattrs.length;
      const mode = (header.mode ?? 0o644) & 0o7777;
      const uid = header.uid ?? 0;
      const gid = header.gid ?? 0;

      switch (header.type) {
        case 'directory': {
          entry.resume();
          const existing = await lstatOrUndefined(dest);
          if (existing && !existing.isDirectory()) await fs.rm(dest, { recursive: true, force: true });
          if (!existing?.isDirectory()) await fs.mkdir(dest, { mode: 0o700 });
          dirs.push({ dest, mode, uid, gid, mtime: header.mtime });
          report.dirs++;
          break;
        }
        case 'file':
        case 'contiguous-file':
        case null:
        case undefined: {
          await replace(dest);
          await pipeline(entry, createWriteStream(dest, { mode: 0o600 }), { signal: options.signal });
          await applyMeta(dest, mode, uid, gid, header.mtime, options.owners);
          report.files++;
          report.bytes += header.size ?? 0;
          break;
        }
        case 'symlink': {
          entry.resume();
          await replace(dest);
          await fs.symlink(header.linkname ?? '', dest);
          if (options.owners) await fs.lchown(dest, uid, gid);
          if (header.mtime) await fs.lutimes(dest, header.mtime, header.mtime).catch(() => undefined);
          report.symlinks++;
          break;
        }
        case 'link': {
          entry.resume();
          const targetParts = splitArchivePath(header.linkname ?? '', options.label);
          const targetParent = await resolveInRoot(root, targetParts.slice(0, -1), { create: false });
          const target = path.join(targetParent, targetParts[targetParts.length - 1] ?? '');
          const stat = await lstatOrUndefined(target);
          if (!stat || stat.isDirectory()) {
            throw new HostError(
              `${options.label}: hard link ${header.name} points at ${header.linkname}, which is not a file in the archive`,
              { hint: 'the archive is damaged or not a tar of a filesystem; rebuild or re-download it' },
            );
          }
          await replace(dest);
          await fs.link(target, dest);
          report.hardlinks++;
          break;
        }
        case 'character-device':
        case 'block-device':
        case 'fifo':
          entry.resume();
          report.skippedSpecial++;
          break;
        default:
          entry.resume();
          break;
      }
    }
    await feeding;
  } catch (err) {
    input.destroy();
    await feeding.catch(() => undefined);
    if (err instanceof HostError || options.signal?.aborted) throw err;
    throw new HostError(`${options.label}: cannot extract: ${(err as Error).message}`, {
      hint: 'the archive is truncated or damaged; fetch or build it again',
      cause: err,
    });
  }
  // Directory metadata last, deepest first: writing into a directory changes its mtime, and a
  // read-only directory would refuse the files that go in it.
  for (const dir of dirs.reverse())
    await applyMeta(dir.dest, dir.mode, dir.uid, dir.gid, dir.mtime, options.owners);
  return report;
}

async function applyMeta(
  dest: string,
  mode: number,
  uid: number,
  gid: number,
  mtime: Date | undefined,
  owners: boolean,
): Promise<void> {
  // chown before chmod: chown clears setuid/setgid bits.
  if (owners) await fs.lchown(dest, uid, gid);
  await fs.chmod(dest, mode);
  if (mtime) await fs.utimes(dest, mtime, mtime);
}

async function replace(dest: string): Promise<void> {
  const existing = await lstatOrUndefined(dest);
  if (existing) await fs.rm(dest, { recursive: true, force: true });
}

async function emptyOpaqueDir(dir: string, written: ReadonlySet<string>): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  for (const name of names) {
    const child = path.join(dir, name);
    if (!written.has(child)) await fs.rm(child, { recursive: true, force: true });
  }
}

async function lstatOrUndefined(file: string) {
  try {
    return await fs.lstat(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}
