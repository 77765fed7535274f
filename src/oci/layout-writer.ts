import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { type PackEntry, packTar } from '../archive/tar-pack.ts';
import type { BlobStore } from './blob-store.ts';
import type { ImageHandle } from './image.ts';
import { MEDIA } from './media-types.ts';

/**
 * Writes `image` as an OCI image layout tarball (oci-layout, index.json, blobs/sha256/...), the
 * form `ctr images import` and k3s's agent/images directory take. `name` is the full reference
 * the image is known by in the guest (io.containerd.image.name), e.g. ghcr.io/x/y:tag.
 */
export async function writeOciArchive(
  image: ImageHandle,
  store: BlobStore,
  name: string,
  dest: string,
): Promise<void> {
  const tag = name
    .slice(name.lastIndexOf('/') + 1)
    .split('@')[0]
    ?.split(':')[1];
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.ociIndex,
    manifests: [
      {
        ...image.manifest,
        annotations: {
          'io.containerd.image.name': name,
          ...(tag ? { 'org.opencontainers.image.ref.name': tag } : {}),
        },
      },
    ],
  };
  const blobs = [image.manifest.digest, image.configDigest, ...image.layers.map((l) => l.digest)];
  const unique = [...new Set(blobs)];
  const entries: PackEntry[] = [
    { name: 'oci-layout', type: 'file', data: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', type: 'file', data: JSON.stringify(index) },
    { name: 'blobs/', type: 'directory' },
    { name: 'blobs/sha256/', type: 'directory' },
    ...unique.map(
      (d): PackEntry => ({ name: `blobs/sha256/${d.slice(7)}`, type: 'file', source: store.path(d) }),
    ),
  ];
  const tmp = `${dest}.tmp-${process.pid}`;
  try {
    await pipeline(packTar(entries), createWriteStream(tmp));
    await fs.rename(tmp, dest);
  } finally {
    await fs.rm(tmp, { force: true });
  }
}
