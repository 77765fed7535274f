import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { HostError } from '../errors.ts';
import { lstatOrUndefined } from '../host/fs.ts';
import { findDirInRoot, resolveInRoot, splitArchivePath } from './root-path.ts';
import { applyDirMeta, type DirIdentity, dirIdentity, type MemberMeta, writeNewFile } from './safe-write.ts';
import { applyWhiteout, classifyLayerMember, emptyOpaqueDir } from './whiteout.ts';

export { OPAQUE_MARKER, WHITEOUT_PREFIX } from './whiteout.ts';

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
  /** AUFS bookkeeping members (`.wh..wh.plnk/...`) in a layer: not part of the filesystem. */
  skippedAufsMeta: number;
  /** Directory members whose metadata was dropped: a later member replaced them (or a parent). */
  replacedDirs: number;
}

interface PendingDir {
  readonly id: DirIdentity;
  readonly meta: MemberMeta;
}

/**
 * Extracts a tar stream into `options.root` with tar's semantics: modes (setuid included), owners
 * when asked, symlinks and hard links as links, mtimes. Paths are confined to the root: `..` is an
 * error, and symlinks met on the way to an entry resolve inside the root (as in a chroot), so an
 * archive cannot write outside it. With `layer`, `.wh.NAME` deletes NAME and `.wh..wh..opq`
 * empties its directory of what earlier layers put there; a whiteout that names no plain file
 * (`.wh..`, `.wh...`) refuses the layer.
 *
 * No step follows a link at the member's own name: what is there is removed first, files are
 * created with O_EXCL|O_NOFOLLOW and get owner, mode and times through their descriptor, and the
 * deferred directory metadata goes only to a directory that is still the one this member made,
 * reached through real directories (see applyDirMeta).
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
    skippedAufsMeta: 0,
    replacedDirs: 0,
  };
  const root = path.resolve(options.root);
  // By host path; a later member for the same directory replaces the earlier one's metadata.
  const dirs = new Map<string, PendingDir>();
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

      if (options.layer) {
        const kind = classifyLayerMember(parts, header.name, options.label);
        if (kind.kind !== 'entry') {
          entry.resume();
          if (kind.kind === 'aufs-meta') {
            report.skippedAufsMeta++;
            continue;
          }
          report.whiteouts++;
          // Nothing is created for a whiteout: a missing directory has nothing to remove.
          const dir = await findDirInRoot(root, parentParts);
          if (!dir) continue;
          // (An opaque marker keeps what this layer wrote, so no pending directory goes with it.)
          if (kind.kind === 'opaque') await emptyOpaqueDir(dir, written);
          else {
            await applyWhiteout(dir, kind.target);
            report.replacedDirs += forgetDirsUnder(dirs, path.join(dir, kind.target));
          }
          continue;
        }
      }

      const parent = await resolveInRoot(root, parentParts, { create: true });
      const dest = path.join(parent, base);
      for (let d = dest; d.length > root.length && !written.has(d); d = path.dirname(d)) written.add(d);
      const xattrs = Object.keys((header as { pax?: Record<string, string> }).pax ?? {}).filter((k) =>
        k.startsWith('SCHILY.xattr.'),
      );
      report.skippedXattrs += xattrs.length;
      const meta: MemberMeta = {
        mode: (header.mode ?? 0o644) & 0o7777,
        uid: header.uid ?? 0,
        gid: header.gid ?? 0,
        mtime: header.mtime,
      };

      switch (header.type) {
        case 'directory': {
          entry.resume();
          const existing = await lstatOrUndefined(dest);
          if (existing && !existing.isDirectory()) await fs.rm(dest, { force: true });
          if (!existing?.isDirectory()) await fs.mkdir(dest, { mode: 0o700 });
          dirs.delete(dest);
          dirs.set(dest, { id: await dirIdentity(dest), meta });
          report.dirs++;
          break;
        }
        case 'file':
        case 'contiguous-file':
        case null:
        case undefined: {
          await replace(dest, dirs, report);
          // tar-stream's entries are streams of Buffers.
          await writeNewFile(dest, entry as AsyncIterable<Uint8Array>, meta, {
            owners: options.owners,
            signal: options.signal,
          });
          report.files++;
          report.bytes += header.size ?? 0;
          break;
        }
        case 'symlink': {
          entry.resume();
          await replace(dest, dirs, report);
          await fs.symlink(header.linkname ?? '', dest);
          if (options.owners) await fs.lchown(dest, meta.uid, meta.gid);
          if (header.mtime) await fs.lutimes(dest, header.mtime, header.mtime).catch(() => undefined);
          report.symlinks++;
          break;
        }
        case 'link': {
          entry.resume();
          const targetParts = splitArchivePath(header.linkname ?? '', options.label);
          // Its directories resolve inside the root; its last component is not followed.
          const targetParent = await findDirInRoot(root, targetParts.slice(0, -1));
          const target = targetParent && path.join(targetParent, targetParts[targetParts.length - 1] ?? '');
          const stat = target === undefined ? undefined : await lstatOrUndefined(target);
          if (target === undefined || !stat || stat.isDirectory()) {
            throw new HostError(
              `${options.label}: hard link ${header.name} points at ${header.linkname}, which is not a file in the archive`,
              { hint: 'the archive is damaged or not a tar of a filesystem; rebuild or re-download it' },
            );
          }
          await replace(dest, dirs, report);
          // A hard link to a symlink is that symlink again (link(2) would follow it on macOS).
          if (stat.isSymbolicLink()) await fs.symlink(await fs.readlink(target), dest);
          else await fs.link(target, dest);
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
  const pending = [...dirs].sort(([a], [b]) => depth(b) - depth(a));
  for (const [dest, dir] of pending) {
    if (!(await applyDirMeta(root, dest, dir.id, dir.meta, options.owners))) report.replacedDirs++;
  }
  return report;
}

function depth(p: string): number {
  return p.split(path.sep).length;
}

/** Removes whatever is at `dest` (a link itself, never its target) to make room for a member. */
async function replace(dest: string, dirs: Map<string, PendingDir>, report: ExtractReport): Promise<void> {
  const existing = await lstatOrUndefined(dest);
  if (!existing) return;
  await fs.rm(dest, { recursive: true, force: true });
  if (existing.isDirectory()) report.replacedDirs += forgetDirsUnder(dirs, dest);
}

/**
 * Drops the pending metadata of removed directories (`removed` and below): a directory made later
 * at the same name is another one, even when the filesystem reuses the inode number.
 */
function forgetDirsUnder(dirs: Map<string, PendingDir>, removed: string): number {
  const prefix = removed + path.sep;
  let forgotten = 0;
  for (const dest of dirs.keys()) {
    if (dest === removed || dest.startsWith(prefix)) forgotten += Number(dirs.delete(dest));
  }
  return forgotten;
}
