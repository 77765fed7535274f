import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { HostError } from '../errors.ts';
import { findBusybox, PACKAGED_BUSYBOX_MANIFEST } from './busybox-source.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function setup() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-busybox-'));
  const pkg = path.join(dir, 'pkg');
  fs.mkdirSync(pkg);
  const bins = { x86_64: Buffer.from('x86 busybox'), aarch64: Buffer.from('arm busybox') };
  for (const [arch, bytes] of Object.entries(bins))
    fs.writeFileSync(path.join(pkg, `busybox-${arch}`), bytes);
  const manifest = {
    format: 1,
    busybox: Object.fromEntries(
      Object.entries(bins).map(([arch, bytes]) => [
        arch,
        { file: `busybox-${arch}`, sha256: sha(bytes), package: 'busybox-static', version: '1:1.35.0-4' },
      ]),
    ),
  };
  fs.writeFileSync(path.join(pkg, PACKAGED_BUSYBOX_MANIFEST), JSON.stringify(manifest));
  return { dir, pkg, bins };
}

test("the package's busybox first, verified; a damaged one is an error naming it, never a fallback", async () => {
  const { dir, pkg, bins } = setup();
  const env = testEnvironment(dir);
  const found = await findBusybox(env, 'aarch64', { packageDir: pkg });
  assert.equal(found.origin, 'package');
  assert.deepEqual(found.bytes, bins.aarch64);
  fs.appendFileSync(path.join(pkg, 'busybox-aarch64'), 'x');
  await assert.rejects(
    findBusybox(env, 'aarch64', { packageDir: pkg }),
    (e: unknown) =>
      e instanceof HostError &&
      /busybox-aarch64 has sha256/.test(e.message) &&
      /reinstall/.test(e.hint ?? ''),
  );
  fs.writeFileSync(path.join(pkg, PACKAGED_BUSYBOX_MANIFEST), '{"format":1,"busybox":{}}');
  await assert.rejects(findBusybox(env, 'x86_64', { packageDir: pkg }), /not a valid busybox manifest/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("no package copy (a checkout): the host cache's, checked against provisioning's manifest; none: the fix", async () => {
  const { dir } = setup();
  const env = testEnvironment(dir);
  const none = path.join(dir, 'no-package');
  await assert.rejects(
    findBusybox(env, 'x86_64', { packageDir: none }),
    (e: unknown) =>
      e instanceof HostError &&
      /no busybox for x86_64 guests: not in this package and not in .*manifest\.json/.test(e.message) &&
      /npm package .* or run .*provision-host\.sh --arch x86_64/.test(e.hint ?? ''),
  );
  const host = path.join(dir, 'host', 'amd64');
  fs.mkdirSync(path.join(host, 'busybox'), { recursive: true });
  const bytes = Buffer.from('host busybox');
  fs.writeFileSync(path.join(host, 'busybox', 'busybox'), bytes);
  const record = {
    binary: path.join(host, 'busybox', 'busybox'),
    binarySha256: sha(bytes),
    version: '1:1.35',
  };
  fs.writeFileSync(path.join(host, 'manifest.json'), JSON.stringify({ busybox: record }));
  const found = await findBusybox(env, 'x86_64', { packageDir: none });
  assert.deepEqual([found.origin, found.version, found.bytes], ['host', '1:1.35', bytes]);
  fs.writeFileSync(record.binary, 'changed');
  await assert.rejects(
    findBusybox(env, 'x86_64', { packageDir: none }),
    /has sha256 .* but .*manifest\.json records/,
  );
  fs.rmSync(dir, { recursive: true, force: true });
});
