import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import YAML from 'yaml';
import { bufferStream } from '../archive/tar-pack.ts';
import { HostError, UsageError } from '../errors.ts';
import { BlobStore } from '../oci/blob-store.ts';
import { RegistryClient } from '../oci/registry.ts';
import {
  CHART_UNREACHABLE_HINT,
  checkChartValues,
  helmIgnoreMatcher,
  packageChartDir,
  parseChartSpec,
  pullChart,
  readChartTgz,
} from './chart.ts';
import { HELMCHART_TEMPLATE } from './helmchart.ts';

const FIXTURE = new URL('../../test/fixtures/chart/openshell/', import.meta.url).pathname;

async function listTgz(tgz: Buffer): Promise<string[]> {
  const names: string[] = [];
  const extract = tar.extract();
  bufferStream(gunzipSync(tgz)).pipe(extract);
  for await (const entry of extract) {
    names.push(`${entry.header.name} ${(entry.header.mode ?? 0).toString(8)}`);
    entry.resume();
  }
  return names;
}

test('a chart directory packages as NAME-VERSION.tgz with its files under the chart name, .helmignore applied', async () => {
  const chart = await packageChartDir(FIXTURE);
  assert.equal(chart.fileName, 'openshell-0.1.0.tgz');
  assert.deepEqual(await listTgz(chart.tgz), [
    'openshell/.helmignore 644',
    'openshell/Chart.yaml 644',
    'openshell/templates/configmap.yaml 644',
    'openshell/values.yaml 644',
  ]);
  // Reproducible: the same directory gives the same bytes, hence the same chart checksum.
  assert.equal((await packageChartDir(FIXTURE)).sha256, chart.sha256);
  const back = await readChartTgz(chart.tgz, 'x.tgz', 'tgz');
  assert.deepEqual([back.name, back.version, back.sha256], ['openshell', '0.1.0', chart.sha256]);
  // appVersion: the default tag of the chart's images (src/rootfs/default-images.ts).
  assert.deepEqual([chart.appVersion, back.appVersion], ['test', 'test']);
});

test('.helmignore globs match names anywhere, anchored paths and directories', () => {
  const ignored = helmIgnoreMatcher('# c\n*.swp\nci/\ntemplates/NOTES.txt\n!keep\n');
  assert.equal(ignored('templates/a.swp', false), true);
  assert.equal(ignored('ci', true), true);
  assert.equal(ignored('ci', false), false);
  assert.equal(ignored('templates/NOTES.txt', false), true);
  assert.equal(ignored('NOTES.txt', false), false);
  assert.equal(ignored('values.yaml', false), false);
});

test('bad charts are refused with what is wrong', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-chart-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await assert.rejects(packageChartDir(dir), /no Chart\.yaml there/);
  await fs.writeFile(path.join(dir, 'Chart.yaml'), 'name: Bad_Name\nversion: 1\n');
  await assert.rejects(packageChartDir(dir), /needs a name \(lowercase, digits, -\) and a version/);
  await fs.writeFile(path.join(dir, 'Chart.yaml'), 'name: [unclosed\n');
  await assert.rejects(packageChartDir(dir), /Chart\.yaml is not valid YAML/);
  await assert.rejects(readChartTgz(Buffer.from('not gzip'), 'f.tgz', 'tgz'), /f\.tgz: not a gzip file/);
  await assert.rejects(parseChartSpec(path.join(dir, 'missing')), /--chart: .* does not exist/);
  assert.deepEqual(await parseChartSpec('oci:ghcr.io/nvidia/openshell/helm-chart:1.0.0'), {
    kind: 'oci',
    ref: 'ghcr.io/nvidia/openshell/helm-chart:1.0.0',
  });
});

/** A port on 127.0.0.1 that nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

test("a chart whose registry cannot be reached gets the chart's hint (--chart DIR/.tgz), not the base image's", async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-chart-pull-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const registry = `127.0.0.1:${await closedPort()}`;
  await assert.rejects(
    pullChart(new RegistryClient(registry), `${registry}/openshell/helm-chart:1.0.0`, new BlobStore(dir)),
    (e: unknown) => {
      assert.ok(e instanceof HostError, String(e));
      assert.match(e.message, /^chart .*helm-chart:1\.0\.0: cannot reach/);
      assert.equal(e.hint, CHART_UNREACHABLE_HINT);
      assert.doesNotMatch(e.hint ?? '', /--base/);
      return true;
    },
  );
});

test("a chart the registry does not have keeps the registry's own hint (the reference, credentials)", async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-chart-pull-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const registry = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  await assert.rejects(
    pullChart(new RegistryClient(registry), `${registry}/openshell/helm-chart:9.9.9`, new BlobStore(dir)),
    (e: unknown) =>
      e instanceof HostError && /not found/.test(e.message) && /check the name/.test(e.hint ?? ''),
  );
});

test('a packaged chart carries its values.yaml, from a directory and from a .tgz alike', async () => {
  const chart = await packageChartDir(FIXTURE);
  const want = await fs.readFile(path.join(FIXTURE, 'values.yaml'), 'utf8');
  assert.equal(chart.valuesYaml, want);
  assert.equal((await readChartTgz(chart.tgz, 'x.tgz', 'tgz')).valuesYaml, want);
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  checkChartValues(chart, template); // the fixture follows the real chart: nothing missing
});

test('a chart that drifted (a value the HelmChart sets is gone) is refused, naming each key and the fix', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-chart-drift-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.cp(FIXTURE, dir, { recursive: true });
  const values = YAML.parse(await fs.readFile(path.join(dir, 'values.yaml'), 'utf8'));
  delete values.supervisor;
  delete values.server.dbUrl;
  await fs.writeFile(path.join(dir, 'values.yaml'), YAML.stringify(values));
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  for (const chart of [
    await packageChartDir(dir),
    await readChartTgz((await packageChartDir(dir)).tgz, 'drift.tgz', 'tgz'),
  ]) {
    assert.throws(
      () => checkChartValues(chart, template),
      (e: unknown) => {
        assert.ok(e instanceof UsageError, String(e));
        assert.match(
          e.message,
          /^chart openshell-0\.1\.0 \(.*\) has no values supervisor\.image\.repository, supervisor\.image\.tag, supervisor\.image\.pullPolicy, server\.dbUrl in its values\.yaml/,
        );
        assert.match(e.hint ?? '', /--chart .*openshell-helmchart\.yaml/);
        return true;
      },
    );
  }
  // No values.yaml at all: every key is missing, none silently dropped.
  await fs.rm(path.join(dir, 'values.yaml'));
  const bare = await packageChartDir(dir);
  assert.equal(bare.valuesYaml, undefined);
  assert.throws(
    () => checkChartValues(bare, template),
    /has no values image\.repository, .*pkiInitJob\.enabled in/,
  );
});

test("hostile chart: a values.yaml that is not YAML and carries terminal escapes is refused, the parser's excerpt printed as safe text", async () => {
  const chart = await packageChartDir(FIXTURE);
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  const hostile = { ...chart, valuesYaml: 'server:\n  a: [\x1b]52;c;aGk=\x07\n  b: : :\n' };
  assert.throws(
    () => checkChartValues(hostile, template),
    (e: unknown) => {
      assert.ok(e instanceof UsageError, String(e));
      assert.match(e.message, /values\.yaml is not valid YAML/);
      assert.ok(
        ![...`${e.message}${e.hint ?? ''}`].some((c) => c === '\x1b' || c === '\x07'),
        `raw escapes in: ${JSON.stringify(e.hint)}`,
      );
      return true;
    },
  );
});
