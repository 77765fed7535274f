import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';

/** OCI layer whiteout markers (image-spec layer.md). */
export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
/** `.wh..wh.NAME` other than the opaque marker: AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`). */
const META_PREFIX = '.wh..wh.';

/** What a member of an image layer means, from its name alone. */
export type LayerMember =
  | { readonly kind: 'entry' }
  /** `.wh.NAME`: delete NAME (one plain component) from the member's directory. */
  | { readonly kind: 'whiteout'; readonly target: string }
  /** `.wh..wh..opq`: empty the member's directory of what lower layers put there. */
  | { readonly kind: 'opaque' }
  /** AUFS metadata (under or named `.wh..wh.*`): not part of the filesystem, skipped. */
  | { readonly kind: 'aufs-meta' };

/**
 * Classifies a layer member by its path components (as splitArchivePath gives them). A whiteout
 * must name one plain component of its own directory: `.wh.`, `.wh..` and `.wh...` name the
 * directory itself or its parent (with `path.join` the parent of the extraction root), and a
 * whiteout cannot have members under it (`.wh./x`); such a layer is refused.
 */
export function classifyLayerMember(parts: readonly string[], name: string, label: string): LayerMember {
  const last = parts.length - 1;
  for (const [i, part] of parts.entries()) {
    if (!part.startsWith(WHITEOUT_PREFIX)) continue;
    if (i !== last && (part === OPAQUE_MARKER || !part.startsWith(META_PREFIX))) {
      throw invalid(name, label, `'${part}' is a whiteout and cannot have members under it`);
    }
    if (part === OPAQUE_MARKER) return { kind: 'opaque' };
    if (part.startsWith(META_PREFIX)) return { kind: 'aufs-meta' };
    const target = part.slice(WHITEOUT_PREFIX.length);
    if (target === '' || target === '.' || target === '..') {
      throw invalid(name, label, `'${part}' does not name a file in its directory`);
    }
    return { kind: 'whiteout', target };
  }
  return { kind: 'entry' };
}

function invalid(name: string, label: string, why: string): HostError {
  return new HostError(`${label}: refusing the member '${name}': ${why}`, {
    hint: 'the image layer is malicious or damaged; do not use this image',
  });
}

/**
 * Removes `target` from `dir` (a directory already resolved inside the root): the entry itself,
 * never what it links to (fs.rm does not follow a symlink it is given).
 */
export async function applyWhiteout(dir: string, target: string): Promise<void> {
  if (target.includes('/') || target === '' || target === '.' || target === '..') {
    throw new Error(`internal: whiteout target '${target}' is not one component`);
  }
  await fs.rm(path.join(dir, target), { recursive: true, force: true });
}

/** Empties `dir` of everything this layer did not write itself (`written`: host paths). */
export async function emptyOpaqueDir(dir: string, written: ReadonlySet<string>): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return;
    throw err;
  }
  for (const name of names) {
    const child = path.join(dir, name);
    if (!written.has(child)) await fs.rm(child, { recursive: true, force: true });
  }
}
