import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { openDecompressed } from '../archive/compression.ts';
import { freshPathInRoot } from '../archive/root-path.ts';
import { HostError, UsageError } from '../errors.ts';
import { loadImageArchive } from '../oci/archive.ts';
import { type BlobStore, DigestMismatchError } from '../oci/blob-store.ts';
import { type ImageHandle, type ProgressFn, pullImage } from '../oci/image.ts';
import { writeOciArchive } from '../oci/layout-writer.ts';
import type { Platform } from '../oci/media-types.ts';
import { formatReference, parseImageReference } from '../oci/reference.ts';
import type { RegistryClient } from '../oci/registry.ts';
import { hashFile } from './base-debian.ts';
import { isUnreachable } from './chart.ts';
import {
  type GatewayImage,
  type ImageFailure,
  type ImageOrigin,
  type ImageRole,
  imagesUnavailableError,
} from './default-images.ts';
import { ROOTFS_PATHS } from './layout.ts';
import type { PreloadedImage, RootfsInput } from './record.ts';

/** --image: an archive file, or oci:REF. */
export type ImageSpec =
  | { readonly kind: 'archive'; readonly path: string }
  | { readonly kind: 'oci'; readonly ref: string };

/** An image ready to be written into k3s's airgap directory. */
type Gathered =
  | {
      readonly kind: 'archive';
      readonly file: string;
      readonly handle: ImageHandle;
      /** The names inside (canonical), which k3s imports it under. */
      readonly names: readonly string[];
      /** What of the gateway it stands for, when it holds one of its images. */
      role: ImageRole | undefined;
      /** That image's name, one of `names`. */
      matched: string | undefined;
    }
  | {
      readonly kind: 'pulled';
      readonly handle: ImageHandle;
      /** The name the archive gets (canonical, no digest unless the image was named by one). */
      readonly name: string;
      /** The reference pulled, for the record's inputs. */
      readonly pulled: string;
      readonly source: ImageOrigin;
      role: ImageRole | undefined;
    };

export interface GatheredImages {
  readonly images: readonly Gathered[];
}

export interface GatherDeps {
  readonly client: (registry: string) => Promise<RegistryClient>;
  readonly store: BlobStore;
  readonly platform: Platform;
  readonly progress: ProgressFn;
  readonly signal?: AbortSignal | undefined;
}

/**
 * Loads and pulls every image a build pre-loads, before the rootfs is started, into the blob
 * store (each blob verified against its digest; a pinned default against its pin): first the
 * given ones (--image), then the gateway's `defaults` that no given image already names. A given
 * image that fails stops the build with its own error, and so does content that does not match
 * its digest; otherwise the defaults are all tried (a registry found out of reach is not asked
 * again) and those that could not be pulled are named together, with the fixes.
 */
export async function gatherImages(
  given: readonly ImageSpec[],
  defaults: readonly GatewayImage[],
  deps: GatherDeps,
): Promise<GatheredImages> {
  const images: Gathered[] = [];
  for (const spec of given) {
    deps.signal?.throwIfAborted();
    if (spec.kind === 'archive') {
      const handle = await loadImageArchive(spec.path, deps.store, deps.platform, deps.progress);
      const names = await archiveImageNames(spec.path);
      images.push({ kind: 'archive', file: spec.path, handle, names, role: undefined, matched: undefined });
    } else {
      const ref = parseImageReference(spec.ref);
      const handle = await pullImage(
        await deps.client(ref.registry),
        ref,
        deps.platform,
        deps.store,
        deps.progress,
      );
      const name = formatReference({ ...ref, digest: undefined });
      images.push({
        kind: 'pulled',
        handle,
        name,
        pulled: formatReference(ref),
        source: 'given',
        role: undefined,
      });
    }
  }
  const failures: ImageFailure[] = [];
  const unreachable = new Map<string, Error>();
  for (const image of defaults) {
    deps.signal?.throwIfAborted();
    const covering = images.find((g) =>
      (g.kind === 'archive' ? g.names : [g.name]).includes(image.reference),
    );
    if (covering) {
      covering.role ??= image.role;
      if (covering.kind === 'archive') covering.matched ??= image.reference;
      deps.progress(`${image.role} image ${image.reference}: given with --image`);
      continue;
    }
    const ref = parseImageReference(image.reference);
    const down = unreachable.get(ref.registry);
    if (down) {
      failures.push({ image, error: down });
      continue;
    }
    deps.progress(`pre-loading the ${image.role} image ${image.reference} (${image.from})`);
    try {
      const handle = await pullImage(
        await deps.client(ref.registry),
        { ...ref, digest: image.pinned },
        deps.platform,
        deps.store,
        deps.progress,
      );
      images.push({
        kind: 'pulled',
        handle,
        name: image.reference,
        pulled: formatReference({ ...ref, digest: image.pinned }),
        source: image.source,
        role: image.role,
      });
    } catch (err) {
      // Content that is not what its digest (or openshell-vm's pin) says is refused as such, not
      // reported as an image to fetch some other way.
      if (deps.signal?.aborted || !(err instanceof HostError) || err instanceof DigestMismatchError)
        throw err;
      failures.push({ image, error: err });
      if (isUnreachable(err)) unreachable.set(ref.registry, err);
    }
  }
  if (failures.length) throw imagesUnavailableError(failures);
  return { images };
}

/**
 * Writes the gathered images into k3s's airgap directory of the rootfs at `root` (archives copied
 * as they are, pulled images as OCI layout tarballs under the name the guest asks for) and returns
 * their inputs and the record's list of pre-loaded images.
 */
export async function writeImages(
  gathered: GatheredImages,
  root: string,
  store: BlobStore,
): Promise<{ readonly inputs: RootfsInput[]; readonly images: PreloadedImage[] }> {
  const inputs: RootfsInput[] = [];
  const images: PreloadedImage[] = [];
  const written = new Map<string, string>();
  for (const image of gathered.images) {
    const fileName =
      image.kind === 'archive' ? path.basename(image.file) : `${image.name.replace(/[^\w.-]+/g, '_')}.tar`;
    const what = image.kind === 'archive' ? image.file : image.name;
    const earlier = written.get(fileName);
    if (earlier !== undefined) {
      throw new UsageError(`--image: ${what} and ${earlier} would both be written as ${fileName}`, {
        hint: 'rename one of the archives (or drop the image given twice)',
      });
    }
    written.set(fileName, what);
    const rel = `${ROOTFS_PATHS.k3sImages}/${fileName}`;
    const dest = await freshPathInRoot(root, rel);
    if (image.kind === 'archive') {
      await fs.copyFile(image.file, dest, fsConstants.COPYFILE_EXCL);
    } else {
      await writeOciArchive(image.handle, store, image.name, dest);
    }
    inputs.push({
      kind: 'image',
      source: image.kind === 'archive' ? path.resolve(image.file) : image.pulled,
      version: image.handle.manifest.digest,
      sha256: await hashFile(dest),
      path: rel,
    });
    const reference = image.kind === 'archive' ? (image.matched ?? image.names[0]) : image.name;
    images.push({
      ...(reference === undefined ? {} : { reference }),
      digest: image.handle.manifest.digest,
      source: image.kind === 'archive' ? 'given' : image.source,
      ...(image.role ? { for: image.role } : {}),
      path: rel,
    });
  }
  return { inputs, images };
}

/** Index and manifest files of an image archive are small; anything larger is not one. */
const ARCHIVE_METADATA_MAX_BYTES = 1024 * 1024;

/**
 * The image names an archive carries, canonical: a docker save's RepoTags, an OCI layout's
 * io.containerd.image.name annotations (and org.opencontainers.image.ref.name where it is a full
 * reference, not just a tag). Names that are not references are left out. loadImageArchive has
 * read and verified the archive before; this reads it again for its two small metadata files.
 */
export async function archiveImageNames(file: string): Promise<string[]> {
  const input = await openDecompressed(file);
  const extract = tar.extract();
  const feeding = pipeline(input, extract);
  feeding.catch(() => undefined);
  const found: string[] = [];
  try {
    for await (const entry of extract) {
      const name = entry.header.name.replace(/^\.\//, '');
      if (entry.header.type !== 'file' || (name !== 'manifest.json' && name !== 'index.json')) {
        entry.resume();
        continue;
      }
      const chunks: Buffer[] = [];
      let bytes = 0;
      for await (const c of entry) {
        bytes += (c as Buffer).length;
        if (bytes > ARCHIVE_METADATA_MAX_BYTES)
          throw new HostError(`image archive ${file}: ${name} is too large`);
        chunks.push(c as Buffer);
      }
      const listed = namesIn(name, Buffer.concat(chunks).toString('utf8'));
      // Only one image of an archive is verified, and k3s imports every one it holds.
      if (listed.images > 1) {
        throw new UsageError(
          `--image ${file}: the archive holds ${listed.images} images; only one is checked, and k3s would import them all`,
          { hint: 'give one image per archive (docker save IMAGE > FILE.tar), one --image for each' },
        );
      }
      found.push(...listed.names);
    }
    await feeding;
  } finally {
    input.destroy();
  }
  return [...new Set(found)];
}

/** The names in one metadata file, and how many images it lists. */
function namesIn(member: string, text: string): { names: string[]; images: number } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return { names: [], images: 0 }; // loadImageArchive said what is wrong with it
  }
  const raw: unknown[] = [];
  let images = 0;
  if (member === 'manifest.json' && Array.isArray(doc)) {
    images = doc.length;
    for (const entry of doc) {
      const tags = (entry as { RepoTags?: unknown } | null)?.RepoTags;
      if (Array.isArray(tags)) raw.push(...tags);
    }
  } else if (member === 'index.json') {
    const manifests = (doc as { manifests?: unknown } | null)?.manifests;
    for (const m of Array.isArray(manifests) ? manifests : []) {
      images++;
      const annotations = (m as { annotations?: Record<string, unknown> } | null)?.annotations;
      raw.push(annotations?.['io.containerd.image.name']);
      const refName = annotations?.['org.opencontainers.image.ref.name'];
      if (typeof refName === 'string' && refName.includes('/')) raw.push(refName);
    }
  }
  const names: string[] = [];
  for (const n of raw) {
    if (typeof n !== 'string') continue;
    try {
      names.push(formatReference(parseImageReference(n)));
    } catch {
      // not a reference: k3s cannot import it under that name either
    }
  }
  return { names, images };
}
