import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { openDecompressed } from '../archive/compression.ts';
import { HostError, isErrno } from '../errors.ts';
import type { BlobStore } from './blob-store.ts';
import { describePlatform, type ImageHandle, type ProgressFn, parseJson, selectPlatform } from './image.ts';
import {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  INDEX_TYPES,
  MEDIA,
  type Platform,
} from './media-types.ts';

const METADATA = new Set(['manifest.json', 'index.json', 'oci-layout', 'repositories']);
const BLOB_PATH = /^blobs\/sha256\/([a-f0-9]{64})$/;

interface DockerSaveEntry {
  readonly Config: string;
  readonly RepoTags?: readonly string[] | null;
  readonly Layers: readonly string[];
}

/**
 * Loads an image from a `docker save` tarball or an OCI image layout tarball (optionally gzip or
 * zstd compressed) into `store`, verifying every blob: OCI blobs against the digest in their
 * path, a docker-save config against its file name, and layers later against the config's
 * diff_ids when they are unpacked.
 */
export async function loadImageArchive(
  file: string,
  store: BlobStore,
  platform: Platform,
  progress: ProgressFn = () => undefined,
): Promise<ImageHandle> {
  const label = `image archive ${file}`;
  const metadata = new Map<string, Buffer>();
  const members = new Map<string, string>(); // member name -> digest of its content
  const links = new Map<string, string>(); // member name -> member it links to
  let input: Readable;
  try {
    input = await openDecompressed(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw new HostError(`${file} does not exist`, {
        hint: 'give the path of a docker save or OCI layout tarball',
      });
    }
    throw err;
  }
  progress(`reading ${path.basename(file)}`);
  const extract = tar.extract();
  const feeding = pipeline(input, extract);
  feeding.catch(() => undefined);
  try {
    for await (const entry of extract) {
      const name = entry.header.name.replace(/^\.\//, '');
      if (entry.header.type === 'symlink' || entry.header.type === 'link') {
        const target = entry.header.linkname ?? '';
        links.set(
          name,
          entry.header.type === 'symlink' ? path.posix.join(path.posix.dirname(name), target) : target,
        );
        entry.resume();
        continue;
      }
      if (entry.header.type !== 'file') {
        entry.resume();
        continue;
      }
      if (METADATA.has(name)) {
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        metadata.set(name, Buffer.concat(chunks));
        continue;
      }
      const blob = BLOB_PATH.exec(name);
      const ingested = await store.ingest(entry as AsyncIterable<Uint8Array>, {
        expected: blob ? `sha256:${blob[1]}` : undefined,
        what: `${label}: ${name}`,
      });
      members.set(name, ingested.digest);
    }
    await feeding;
  } catch (err) {
    input.destroy();
    await feeding.catch(() => undefined);
    if (err instanceof HostError) throw err;
    throw new HostError(`${label}: cannot read: ${(err as Error).message}`, {
      hint: 'the file is not a (complete) docker save or OCI layout tarball',
      cause: err,
    });
  }
  const digestOf = (member: string): string => {
    let name = member;
    for (let i = 0; i < 10 && !members.has(name) && links.has(name); i++) name = links.get(name) as string;
    const digest = members.get(name);
    if (!digest)
      throw new HostError(`${label}: names ${member}, which it does not contain`, {
        hint: 'the archive is incomplete',
      });
    return digest;
  };

  const index = metadata.get('index.json');
  if (index)
    return fromOciLayout(parseJson<ImageIndex>(index, `${label}: index.json`), store, platform, file, label);
  const manifest = metadata.get('manifest.json');
  if (!manifest) {
    throw new HostError(`${label}: neither index.json (OCI layout) nor manifest.json (docker save) found`, {
      hint: 'create it with docker save IMAGE -o FILE, or skopeo copy ... oci-archive:FILE',
    });
  }
  const entries = parseJson<DockerSaveEntry[]>(manifest, `${label}: manifest.json`);
  const first = entries[0];
  if (!first) throw new HostError(`${label}: manifest.json lists no image`);
  if (entries.length > 1)
    progress(
      `${label} holds ${entries.length} images; using the first (${first.RepoTags?.[0] ?? 'untagged'})`,
    );
  const configDigest = digestOf(first.Config);
  if (first.Config.endsWith('.json') && !first.Config.includes(configDigest.slice(7))) {
    // Legacy docker save names the config by its digest: a mismatch means tampering.
    const expected = path.posix.basename(first.Config, '.json');
    if (/^[a-f0-9]{64}$/.test(expected)) {
      throw new HostError(
        `${label}: config ${first.Config} does not hash to its name (got ${configDigest})`,
        {
          hint: 'the archive is corrupt or has been tampered with',
        },
      );
    }
  }
  const config = parseJson<ImageConfig>(await store.read(configDigest), `${label}: image config`);
  const layers: Descriptor[] = [];
  for (const member of first.Layers) {
    const digest = digestOf(member);
    const size = (await fs.stat(store.path(digest))).size;
    layers.push({ mediaType: MEDIA.ociLayer, digest, size });
  }
  checkPlatform(config, platform, label);
  const synthesized: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: {
      mediaType: MEDIA.ociConfig,
      digest: configDigest,
      size: (await store.read(configDigest)).length,
    },
    layers,
  };
  const bytes = Buffer.from(JSON.stringify(synthesized));
  const ingested = await store.ingestBuffer(bytes, `${label}: manifest`);
  return {
    source: file,
    manifest: { mediaType: MEDIA.ociManifest, digest: ingested.digest, size: ingested.size },
    config,
    configDigest,
    layers,
    platform,
  };
}

async function fromOciLayout(
  index: ImageIndex,
  store: BlobStore,
  platform: Platform,
  file: string,
  label: string,
): Promise<ImageHandle> {
  let level: ImageIndex = index;
  for (let depth = 0; depth < 4; depth++) {
    const withPlatform = level.manifests.some((m) => m.platform);
    const chosen = withPlatform ? selectPlatform(level, platform, label) : level.manifests[0];
    if (!chosen) throw new HostError(`${label}: index.json lists no image`);
    if (!(await store.has(chosen.digest))) {
      throw new HostError(`${label}: the index names ${chosen.digest}, which the archive does not contain`, {
        hint: 'the archive is incomplete (for a multi-platform image, save the guest platform)',
      });
    }
    const bytes = await store.read(chosen.digest);
    const mediaType = chosen.mediaType || (parseJson<{ mediaType?: string }>(bytes, label).mediaType ?? '');
    if (INDEX_TYPES.includes(mediaType)) {
      level = parseJson<ImageIndex>(bytes, `${label}: index ${chosen.digest}`);
      continue;
    }
    const manifest = parseJson<ImageManifest>(bytes, `${label}: manifest ${chosen.digest}`);
    for (const d of [manifest.config, ...manifest.layers]) {
      if (!(await store.has(d.digest))) {
        throw new HostError(`${label}: blob ${d.digest} is missing from the archive`, {
          hint: 'the archive is incomplete',
        });
      }
    }
    const config = parseJson<ImageConfig>(await store.read(manifest.config.digest), `${label}: image config`);
    checkPlatform(config, platform, label);
    return {
      source: file,
      manifest: { mediaType: mediaType || MEDIA.ociManifest, digest: chosen.digest, size: bytes.length },
      config,
      configDigest: manifest.config.digest,
      layers: manifest.layers,
      platform,
    };
  }
  throw new HostError(`${label}: image indexes nested too deeply`);
}

function checkPlatform(config: ImageConfig, platform: Platform, label: string): void {
  if (config.architecture && config.architecture !== platform.architecture) {
    throw new HostError(
      `${label} is a ${config.os ?? 'linux'}/${config.architecture} image, but the guest is ${describePlatform(platform)}`,
      { hint: 'use an image for the guest architecture, or another --arch' },
    );
  }
}
