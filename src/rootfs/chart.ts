import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import YAML from 'yaml';
import { bufferStream, type PackEntry, packTarBuffer } from '../archive/tar-pack.ts';
import { HostError, isErrno, systemErrorIn, UsageError } from '../errors.ts';
import { terminalSafeLines } from '../host/terminal-text.ts';
import type { BlobStore } from '../oci/blob-store.ts';
import { type ProgressFn, parseJson } from '../oci/image.ts';
import { type ImageManifest, MEDIA } from '../oci/media-types.ts';
import { formatReference, parseImageReference } from '../oci/reference.ts';
import type { RegistryClient } from '../oci/registry.ts';
import { helmChartValueKeys, missingValueKeys } from './helmchart.ts';

/** OpenShell's chart as published (an OCI artifact), the default for --chart. */
export const DEFAULT_CHART = 'oci:ghcr.io/nvidia/openshell/helm-chart:0.0.116';

export interface PackagedChart {
  readonly name: string;
  readonly version: string;
  /** Chart.yaml's appVersion (the default tag of the chart's images); undefined: it has none. */
  readonly appVersion: string | undefined;
  /** NAME-VERSION.tgz, as helm package names it. */
  readonly fileName: string;
  readonly tgz: Buffer;
  readonly sha256: string;
  /** The chart's values.yaml as packaged (undefined: it has none). */
  readonly valuesYaml: string | undefined;
  /** dir | tgz | oci, and where from. */
  readonly kind: 'dir' | 'tgz' | 'oci';
  readonly source: string;
}

interface ChartMeta {
  readonly name: string;
  readonly version: string;
  readonly appVersion: string | undefined;
}

/** A Chart.yaml field that YAML may have read as a number (version: 1.0, appVersion: 2). */
const scalarText = (value: unknown): string =>
  typeof value === 'string' ? value : typeof value === 'number' ? String(value) : '';

function chartMeta(text: string, where: string): ChartMeta {
  let doc: { name?: unknown; version?: unknown; appVersion?: unknown };
  try {
    doc = YAML.parse(text) ?? {};
  } catch (err) {
    throw new UsageError(`${where}: Chart.yaml is not valid YAML`, {
      hint: (err as Error).message,
      cause: err,
    });
  }
  const name = typeof doc.name === 'string' ? doc.name : '';
  const version = scalarText(doc.version);
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) || !/^[\w.+-]+$/.test(version)) {
    throw new UsageError(`${where}: Chart.yaml needs a name (lowercase, digits, -) and a version`, {
      hint: 'see https://helm.sh/docs/topics/charts/#the-chartyaml-file',
    });
  }
  const appVersion = scalarText(doc.appVersion).trim();
  return { name, version, appVersion: appVersion === '' ? undefined : appVersion };
}

/** .helmignore patterns (helm's subset: globs, `dir/`, comments); `!` negation is not supported. */
export function helmIgnoreMatcher(text: string): (rel: string, isDir: boolean) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#') && !l.startsWith('!'))
    .map((l) => {
      const dirOnly = l.endsWith('/');
      const pattern = l.replace(/^\/|\/$/g, '');
      const re = new RegExp(
        `^${pattern
          .split('')
          .map((c) => (c === '*' ? '[^/]*' : c === '?' ? '[^/]' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
          .join('')}$`,
      );
      return { re, dirOnly, anchored: pattern.includes('/') };
    });
  return (rel, isDir) =>
    rules.some(
      (r) =>
        (!r.dirOnly || isDir) && (r.re.test(rel) || (!r.anchored && r.re.test(path.posix.basename(rel)))),
    );
}

/**
 * Packages a chart directory as `helm package` would: a gzipped tar of its files under the
 * chart's name, honouring .helmignore, named NAME-VERSION.tgz. Entries are sorted and dated at the
 * epoch, so the same directory always gives the same bytes (and the same chart checksum).
 */
export async function packageChartDir(dir: string): Promise<PackagedChart> {
  const where = `--chart ${dir}`;
  let chartYaml: string;
  try {
    chartYaml = await fs.readFile(path.join(dir, 'Chart.yaml'), 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) {
      throw new UsageError(`${where}: no Chart.yaml there`, {
        hint: 'give a Helm chart directory, a .tgz or oci:REF',
        cause: err,
      });
    }
    throw err;
  }
  const meta = chartMeta(chartYaml, where);
  const ignoreText = await fs.readFile(path.join(dir, '.helmignore'), 'utf8').catch(() => '');
  const ignored = helmIgnoreMatcher(ignoreText);
  const entries: PackEntry[] = [];
  async function walk(rel: string): Promise<void> {
    for (const name of (await fs.readdir(path.join(dir, rel))).sort()) {
      const relPath = rel ? `${rel}/${name}` : name;
      const st = await fs.stat(path.join(dir, relPath));
      if (ignored(relPath, st.isDirectory())) continue;
      if (st.isDirectory()) await walk(relPath);
      else if (st.isFile()) {
        entries.push({
          name: `${meta.name}/${relPath}`,
          type: 'file',
          mode: st.mode & 0o111 ? 0o755 : 0o644,
          data: await fs.readFile(path.join(dir, relPath)),
        });
      }
    }
  }
  await walk('');
  const tgz = gzipSync(await packTarBuffer(entries), { level: 9 });
  const values = entries.find((e) => e.name === `${meta.name}/values.yaml`)?.data;
  return finish(meta, tgz, 'dir', path.resolve(dir), values === undefined ? undefined : String(values));
}

/** Reads a packaged chart (.tgz) and checks it is one: NAME/Chart.yaml inside, name and version. */
export async function readChartTgz(tgz: Buffer, source: string, kind: 'tgz' | 'oci'): Promise<PackagedChart> {
  let tarBytes: Buffer;
  try {
    tarBytes = gunzipSync(tgz);
  } catch (err) {
    throw new UsageError(`${source}: not a gzip file`, {
      hint: 'give a chart .tgz made by helm package',
      cause: err,
    });
  }
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  bufferStream(tarBytes).pipe(extract);
  let meta: ChartMeta | undefined;
  /** Every top directory's values.yaml: the chart's is the one under its name. */
  const valuesByDir = new Map<string, string>();
  const readEntry = async (entry: AsyncIterable<unknown>, what: string) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const c of entry) {
      bytes += (c as Buffer).length;
      if (bytes > CHART_TEXT_MAX_BYTES)
        throw new UsageError(`${source}: ${what} is larger than ${CHART_TEXT_MAX_BYTES} bytes`);
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks).toString('utf8');
  };
  for await (const entry of extract) {
    const parts = entry.header.name.split('/');
    if (parts.length === 2 && parts[1] === 'Chart.yaml' && !meta) {
      meta = chartMeta(await readEntry(entry, 'Chart.yaml'), source);
      if (parts[0] !== meta.name)
        throw new UsageError(`${source}: Chart.yaml of ${meta.name} is under ${parts[0]}/`);
    } else if (parts.length === 2 && parts[1] === 'values.yaml' && !valuesByDir.has(parts[0] ?? '')) {
      valuesByDir.set(parts[0] ?? '', await readEntry(entry, 'values.yaml'));
    } else entry.resume();
  }
  await done.catch(() => undefined);
  if (!meta)
    throw new UsageError(`${source}: no NAME/Chart.yaml inside`, {
      hint: 'give a chart .tgz made by helm package',
    });
  return finish(meta, tgz, kind, source, valuesByDir.get(meta.name));
}

/** Chart.yaml and values.yaml are text of a few KiB (OpenShell's values.yaml: about 20 KiB). */
const CHART_TEXT_MAX_BYTES = 4 * 1024 * 1024;

function finish(
  meta: ChartMeta,
  tgz: Buffer,
  kind: PackagedChart['kind'],
  source: string,
  valuesYaml: string | undefined,
): PackagedChart {
  return {
    ...meta,
    fileName: `${meta.name}-${meta.version}.tgz`,
    tgz,
    sha256: createHash('sha256').update(tgz).digest('hex'),
    valuesYaml,
    kind,
    source,
  };
}

/**
 * Refuses a chart that lacks a value the HelmChart `manifest` (the template) sets: Helm would
 * ignore the value without a word, and the gateway would run without it (a chart that drifted
 * from the one the template was written for).
 */
export function checkChartValues(chart: PackagedChart, manifest: string): void {
  let values: unknown = {};
  if (chart.valuesYaml !== undefined) {
    try {
      values = YAML.parse(chart.valuesYaml) ?? {};
    } catch (err) {
      throw new UsageError(
        `chart ${chart.name}-${chart.version} (${chart.source}): values.yaml is not valid YAML`,
        {
          hint: terminalSafeLines((err as Error).message, { maxChars: 300 }),
          cause: err,
        },
      );
    }
  }
  const missing = missingValueKeys(values, helmChartValueKeys(manifest));
  if (missing.length === 0) return;
  throw new UsageError(
    `chart ${chart.name}-${chart.version} (${chart.source}) has no ${missing.length === 1 ? 'value' : 'values'} ${missing.join(', ')} in its values.yaml, which openshell-vm's HelmChart sets: the chart would ignore ${missing.length === 1 ? 'it' : 'them'}`,
    {
      hint: `use a chart that has ${missing.length === 1 ? 'it' : 'them'} (the default is ${DEFAULT_CHART}; --chart DIR, FILE.tgz or oci:REF), or, if the chart renamed ${missing.length === 1 ? 'it' : 'them'}, update src/rootfs/manifests/openshell-helmchart.yaml to the chart's names`,
    },
  );
}

/** Failures to reach a registry at all (not an answer from it): what an offline build meets. */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
]);

/** What to do when the chart's registry cannot be reached (the registry client's own hint is about --base). */
export const CHART_UNREACHABLE_HINT =
  'check the network and proxy settings; offline, give the chart as a directory or a .tgz (--chart DIR, --chart FILE.tgz: helm pull or helm package makes one)';

/** Whether `err` (a registry client's error, or its cause) says the registry could not be reached. */
export function isUnreachable(err: unknown): boolean {
  if (systemErrorIn(err, UNREACHABLE_CODES)) return true;
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e.name === 'TimeoutError') return true;
  }
  return false;
}

/** Pulls a chart published as an OCI artifact (helm push): its chart-content layer is the .tgz. */
export async function pullChart(
  client: RegistryClient,
  refText: string,
  store: BlobStore,
  progress: ProgressFn = () => undefined,
): Promise<PackagedChart> {
  const ref = parseImageReference(refText);
  const name = formatReference(ref);
  progress(`chart ${name}: resolving`);
  try {
    const fetched = await client.getManifest(ref);
    const manifest = parseJson<ImageManifest>(fetched.bytes, `manifest of ${name}`);
    const layer = manifest.layers?.find((l) => l.mediaType === MEDIA.helmChart);
    if (!layer) {
      throw new HostError(`${name} is not a Helm chart (no ${MEDIA.helmChart} layer)`, {
        hint: 'give the reference of a chart pushed with helm push',
      });
    }
    await client.fetchBlob(ref.repository, layer.digest, store, { size: layer.size });
    return await readChartTgz(await store.read(layer.digest), name, 'oci');
  } catch (err) {
    // A registry out of reach: the chart's own way round it, not the base image's.
    if (err instanceof HostError && isUnreachable(err)) {
      throw new HostError(`chart ${name}: ${err.message}`, { hint: CHART_UNREACHABLE_HINT, cause: err });
    }
    throw err;
  }
}

/** --chart: a directory, a .tgz file, or oci:REF. */
export type ChartSpec =
  | { readonly kind: 'dir'; readonly path: string }
  | { readonly kind: 'tgz'; readonly path: string }
  | { readonly kind: 'oci'; readonly ref: string };

export async function parseChartSpec(text: string): Promise<ChartSpec> {
  if (text.startsWith('oci:')) {
    const ref = text.slice(4).replace(/^\/\//, '');
    parseImageReference(ref);
    return { kind: 'oci', ref };
  }
  let st: Awaited<ReturnType<typeof fs.stat>>;
  try {
    st = await fs.stat(text);
  } catch (err) {
    throw new UsageError(`--chart: ${text} does not exist`, {
      hint: 'give a chart directory, a chart .tgz, or oci:REF (e.g. oci:ghcr.io/nvidia/openshell/helm-chart:VERSION)',
      cause: err,
    });
  }
  return st.isDirectory()
    ? { kind: 'dir', path: path.resolve(text) }
    : { kind: 'tgz', path: path.resolve(text) };
}
