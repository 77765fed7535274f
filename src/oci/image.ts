import { HostError } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import type { BlobStore } from './blob-store.ts';
import {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  INDEX_TYPES,
  MANIFEST_TYPES,
  type Platform,
} from './media-types.ts';
import { formatReference, type ImageReference } from './reference.ts';
import type { RegistryClient } from './registry.ts';

/** A resolved single-platform image whose manifest, config and layers are in a BlobStore. */
export interface ImageHandle {
  /** Where it came from: a reference (ghcr.io/x/y:tag) or an archive path. */
  readonly source: string;
  readonly manifest: Descriptor;
  readonly config: ImageConfig;
  readonly configDigest: string;
  readonly layers: readonly Descriptor[];
  readonly platform: Platform;
}

export type ProgressFn = (message: string) => void;

export function platformFor(arch: GuestArch): Platform {
  return arch === 'x86_64'
    ? { os: 'linux', architecture: 'amd64' }
    : { os: 'linux', architecture: 'arm64', variant: 'v8' };
}

export function describePlatform(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** The index entry for `platform` (arm64 accepts a missing variant); attestations are ignored. */
export function selectPlatform(index: ImageIndex, platform: Platform, what: string): Descriptor {
  const candidates = index.manifests.filter((m) => MANIFEST_TYPES.includes(m.mediaType) || !m.mediaType);
  const match = candidates.find(
    (m) =>
      m.platform?.os === platform.os &&
      m.platform.architecture === platform.architecture &&
      (!platform.variant || !m.platform.variant || m.platform.variant === platform.variant),
  );
  if (match) return match;
  const offered = candidates
    .map((m) => describePlatform(m.platform))
    .filter((p) => p !== 'unknown/unknown')
    .join(', ');
  throw new HostError(
    `${what} has no ${describePlatform(platform)} image (it offers: ${offered || 'none'})`,
    {
      hint: 'choose an image built for the guest architecture, or another --arch',
    },
  );
}

export function parseJson<T>(bytes: Uint8Array, what: string): T {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8')) as T;
  } catch (err) {
    throw new HostError(`${what} is not valid JSON`, { hint: 'the image is damaged', cause: err });
  }
}

/**
 * Resolves `ref` to the manifest for `platform` (through a multi-arch index if there is one) and
 * stores the manifest, config and every layer in `store`, each verified against its digest.
 */
export async function pullImage(
  client: RegistryClient,
  ref: ImageReference,
  platform: Platform,
  store: BlobStore,
  progress: ProgressFn = () => undefined,
): Promise<ImageHandle> {
  const name = formatReference(ref);
  progress(`${name}: resolving`);
  let fetched = await client.getManifest(ref);
  if (INDEX_TYPES.includes(fetched.mediaType)) {
    const index = parseJson<ImageIndex>(fetched.bytes, `index of ${name}`);
    const chosen = selectPlatform(index, platform, name);
    fetched = await client.getManifest(ref, chosen.digest);
  }
  if (!MANIFEST_TYPES.includes(fetched.mediaType)) {
    throw new HostError(`${name}: unsupported manifest type '${fetched.mediaType}'`, {
      hint: 'openshell-vm reads OCI and Docker schema 2 images',
    });
  }
  await store.ingestBuffer(fetched.bytes, `manifest of ${name}`, fetched.digest);
  const manifest = parseJson<ImageManifest>(fetched.bytes, `manifest of ${name}`);
  await client.fetchBlob(ref.repository, manifest.config.digest, store, { size: manifest.config.size });
  const config = parseJson<ImageConfig>(await store.read(manifest.config.digest), `config of ${name}`);
  const total = manifest.layers.reduce((sum, l) => sum + l.size, 0);
  let done = 0;
  let lastReport = 0;
  for (const [i, layer] of manifest.layers.entries()) {
    const got = await client.fetchBlob(ref.repository, layer.digest, store, {
      size: layer.size,
      onBytes: (n) => {
        done += n;
        const now = Date.now();
        if (now - lastReport > 1000) {
          lastReport = now;
          progress(`${name}: ${mib(done)} of ${mib(total)} MiB`);
        }
      },
    });
    if (got.cached) done += layer.size;
    progress(
      `${name}: layer ${i + 1}/${manifest.layers.length} ${got.cached ? 'cached' : 'downloaded'} (${mib(layer.size)} MiB)`,
    );
  }
  return {
    source: name,
    manifest: { mediaType: fetched.mediaType, digest: fetched.digest, size: fetched.bytes.length },
    config,
    configDigest: manifest.config.digest,
    layers: manifest.layers,
    platform,
  };
}

export function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}
