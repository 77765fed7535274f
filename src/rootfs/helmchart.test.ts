import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import {
  defaultGatewayValues,
  HELMCHART_TEMPLATE,
  renderHelmChart,
  writeGatewayManifest,
} from './helmchart.ts';
import { ROOTFS_PATHS } from './layout.ts';

test('the HelmChart template renders with every placeholder filled into valid YAML', async () => {
  const template = await fs.readFile(HELMCHART_TEMPLATE, 'utf8');
  const values = {
    ...defaultGatewayValues('openshell-0.1.0.tgz', 'ab'.repeat(32)),
    sshGatewayHost: 'a"b: c',
  };
  const out = renderHelmChart(template, values);
  assert.doesNotMatch(out, /__[A-Z_]+__/);
  const doc = YAML.parse(out);
  assert.equal(doc.spec.chart, 'https://%{KUBERNETES_API}%/static/charts/openshell-0.1.0.tgz');
  const inner = YAML.parse(doc.spec.valuesContent);
  assert.equal(inner.server.sshGatewayHost, 'a"b: c', 'strings cannot break the document');
  assert.equal(inner.image.pullPolicy, 'IfNotPresent');
  assert.equal(inner.server.sshGatewayPort, 0);
  assert.equal(inner.chartChecksum, 'ab'.repeat(32));
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
