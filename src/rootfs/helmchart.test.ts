import assert from 'node:assert/strict';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import {
  defaultGatewayValues,
  HELMCHART_TEMPLATE,
  helmChartValueKeys,
  missingValueKeys,
  OWN_VALUE_KEYS,
  renderHelmChart,
  VALUES_NOT_SET,
  writeGatewayManifest,
} from './helmchart.ts';
import { ROOTFS_PATHS } from './layout.ts';

test('the HelmChart template renders with every placeholder filled into valid YAML', async () => {
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  const values = {
    ...defaultGatewayValues('openshell-0.1.0.tgz', 'ab'.repeat(32)),
    dbUrl: 'a"b: c',
  };
  const out = renderHelmChart(template, values);
  assert.doesNotMatch(out, /__[A-Z_]+__/);
  const doc = YAML.parse(out);
  assert.equal(doc.spec.chart, 'https://%{KUBERNETES_API}%/static/charts/openshell-0.1.0.tgz');
  const inner = YAML.parse(doc.spec.valuesContent);
  assert.equal(inner.server.dbUrl, 'a"b: c', 'strings cannot break the document');
  assert.equal(inner.image.pullPolicy, 'IfNotPresent');
  assert.equal(inner.chartChecksum, 'ab'.repeat(32));
});

const FIXTURE_VALUES = new URL('../../test/fixtures/chart/openshell/values.yaml', import.meta.url);
const templateKeys = async () => helmChartValueKeys(await fs.readFile(HELMCHART_TEMPLATE, 'utf8'));

test('every value the HelmChart sets is a key of the chart fixture (which follows the real values.yaml)', async () => {
  const keys = await templateKeys();
  const chartValues = YAML.parse(await fs.readFile(FIXTURE_VALUES, 'utf8'));
  assert.ok(keys.includes('image.repository') && keys.includes('server.tls.certSecretName'), keys.join());
  assert.deepEqual(missingValueKeys(chartValues, keys), []);
  // The one exception is really not the chart's (else it would not need to be one) and is set.
  for (const own of OWN_VALUE_KEYS) {
    assert.ok(keys.includes(own), `${own} is listed as ours but the template does not set it`);
    assert.deepEqual(missingValueKeys(chartValues, [own]), [], 'exceptions are never reported');
    assert.equal(Object.hasOwn(chartValues, own), false, `${own} is in the chart now: drop the exception`);
  }
  // What the code says it leaves out, it does leave out.
  for (const dropped of Object.keys(VALUES_NOT_SET)) {
    const prefix = dropped.replace(/\*$/, '');
    assert.ok(!keys.some((k) => k === dropped || (prefix !== dropped && k.startsWith(prefix))), dropped);
  }
});

test('a key the chart lacks is reported by its dotted path; free-form maps take any key', () => {
  const chartValues = YAML.parse('image:\n  repository: r\nserver:\n  tls: {}\npodAnnotations: {}\n');
  assert.deepEqual(
    missingValueKeys(chartValues, [
      'image.repository',
      'image.tag',
      'server.dbUrl',
      'server.tls.certSecretName',
      'podAnnotations.a',
      'image.repository.deeper',
      'chartChecksum',
    ]),
    ['image.tag', 'server.dbUrl', 'image.repository.deeper'],
  );
});

test('the fixture check fails when the chart drops a value the template sets', async () => {
  const keys = await templateKeys();
  const chartValues = YAML.parse(await fs.readFile(FIXTURE_VALUES, 'utf8'));
  delete chartValues.server.sandboxImagePullPolicy;
  delete chartValues.pkiInitJob;
  assert.deepEqual(missingValueKeys(chartValues, keys), [
    'server.sandboxImagePullPolicy',
    'pkiInitJob.enabled',
  ]);
});

test('the values the original set are set again, fitted to the chart', async () => {
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  const doc = YAML.parse(renderHelmChart(template, defaultGatewayValues('openshell-0.1.0.tgz', '')));
  const inner = YAML.parse(doc.spec.valuesContent);
  assert.equal(inner.server.sandboxImagePullPolicy, 'IfNotPresent');
  assert.deepEqual(inner.supervisor.image, {
    repository: 'ghcr.io/nvidia/openshell/supervisor',
    tag: 'latest',
    pullPolicy: 'IfNotPresent',
  });
  assert.equal(inner.server.dbUrl, 'sqlite:/tmp/openshell.db', 'the database stays off the volume claim');
  // openshell-vm writes the PKI: the chart's job would mount ca.crt from the server Secret, which
  // has none, and run a hook Job that needs the network.
  assert.equal(inner.pkiInitJob.enabled, false);
  assert.equal(inner.server.disableTls, false);
});

test('a values file of another shape (an older build, or edited in the guest) says to rebuild', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-helm-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await fs.mkdir(path.join(root, ROOTFS_PATHS.stagedManifests), { recursive: true });
  await fs.copyFile(HELMCHART_TEMPLATE, path.join(root, ROOTFS_PATHS.stagedHelmChart));
  const { supervisorImage: _, ...old } = defaultGatewayValues('openshell-0.1.0.tgz', 'cd'.repeat(32));
  await fs.writeFile(
    path.join(root, ROOTFS_PATHS.gatewayValues),
    JSON.stringify({ ...old, sshGatewayHost: '', sshGatewayPort: 0 }),
  );
  await assert.rejects(writeGatewayManifest(root), (err: Error & { hint?: string }) => {
    assert.match(err.message, /does not match its schema.*(supervisorImage|sshGateway)/);
    assert.match(err.hint ?? '', /prepare-rootfs --force/);
    return true;
  });
  assert.equal(
    fsSync.existsSync(path.join(root, ROOTFS_PATHS.k3sManifests, 'openshell-helmchart.yaml')),
    false,
  );
});

test('a placeholder no value fills is an error, never left in the manifest', () => {
  assert.throws(
    () => renderHelmChart('x: __NEW_THING__\n', defaultGatewayValues('c-1.tgz', '')),
    /placeholders no value fills: __NEW_THING__/,
  );
});

test('build-time and boot-time rendering give byte-identical manifests; boot does not rewrite it', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-helm-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await fs.mkdir(path.join(root, ROOTFS_PATHS.stagedManifests), { recursive: true });
  await fs.copyFile(HELMCHART_TEMPLATE, path.join(root, ROOTFS_PATHS.stagedHelmChart));
  await fs.writeFile(
    path.join(root, ROOTFS_PATHS.gatewayValues),
    JSON.stringify(defaultGatewayValues('openshell-0.1.0.tgz', 'cd'.repeat(32))),
  );
  assert.equal(await writeGatewayManifest(root), true, 'the build writes it');
  const file = path.join(root, ROOTFS_PATHS.k3sManifests, 'openshell-helmchart.yaml');
  const built = await fs.readFile(file);
  const mtime = (await fs.stat(file)).mtimeMs;
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(await writeGatewayManifest(root), false, 'the boot finds nothing to change');
  assert.deepEqual(await fs.readFile(file), built);
  assert.equal((await fs.stat(file)).mtimeMs, mtime);
  // A manifest edited in the guest (or by an old tool) is put back to the rendered bytes.
  await fs.writeFile(file, built.toString().replace('IfNotPresent', 'Always'));
  assert.equal(await writeGatewayManifest(root), true);
  assert.deepEqual(await fs.readFile(file), built);
});

test('a rootfs without the staged template says to rebuild', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-helm-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await assert.rejects(writeGatewayManifest(root), /has no staged HelmChart[\s\S]*/);
});

test('empty or absent chart values have none of the keys', async () => {
  const keys = await templateKeys();
  const own = keys.filter((k) => OWN_VALUE_KEYS.includes(k));
  for (const values of [{}, null, undefined, [], 'text']) {
    assert.deepEqual(
      missingValueKeys(values, keys),
      keys.filter((k) => !own.includes(k)),
      String(values),
    );
  }
});
