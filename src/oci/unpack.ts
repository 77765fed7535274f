import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
import { openDecompressed } from '../archive/compression.ts';
import { type ExtractReport, extractTar } from '../archive/tar-extract.ts';
import { HostError } from '../errors.ts';
import type { BlobStore } from './blob-store.ts';
import { type ImageHandle, mib, type ProgressFn } from './image.ts';

/**
 * Applies the image's layers in order onto `root` (whiteouts and opaque directories included).
 * Each layer's uncompressed content must hash to the config's diff_id for it.
 */
export async function unpackImage(
  image: ImageHandle,
  store: BlobStore,
  root: string,
  options: {
    readonly owners: boolean;
    readonly signal?: AbortSignal | undefined;
    readonly progress?: ProgressFn | undefined;
  },
): Promise<ExtractReport[]> {
  const diffIds = image.config.rootfs?.diff_ids ?? [];
  if (diffIds.length && diffIds.length !== image.layers.length) {
    throw new HostError(
      `${image.source}: the config lists ${diffIds.length} layers, the manifest ${image.layers.length}`,
      { hint: 'the image is damaged' },
    );
  }
  const reports: ExtractReport[] = [];
  for (const [i, layer] of image.layers.entries()) {
    options.progress?.(
      `${image.source}: unpacking layer ${i + 1}/${image.layers.length} (${mib(layer.size)} MiB)`,
    );
    const hash = createHash('sha256');
    const tee = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        done(null, chunk);
      },
      flush(done) {
        done();
      },
    });
    // pipe() does not forward errors: a layer whose compressed data breaks off must fail the
    // extraction (through tee), not go unhandled and take the process down.
    const decompressed = await openDecompressed(store.path(layer.digest));
    decompressed.on('error', (err) => tee.destroy(err));
    const input = decompressed.pipe(tee);
    const report = await extractTar(input, {
      root,
      layer: true,
      owners: options.owners,
      label: `${image.source} layer ${layer.digest.slice(0, 19)}`,
      signal: options.signal,
    });
    const diffId = `sha256:${hash.digest('hex')}`;
    const expected = diffIds[i];
    if (expected && expected !== diffId) {
      throw new HostError(
        `${image.source}: layer ${i + 1} (${layer.digest}) unpacks to ${diffId}, but the config says ${expected}`,
        { hint: 'the image is corrupt or has been tampered with' },
      );
    }
    reports.push(report);
  }
  return reports;
}
