import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../../test/fixtures/env.ts';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError } from '../../errors.ts';
import {
  describeRuntime,
  discoverRuntime,
  findLibkrunfwDir,
  readRuntimeDir,
  validateBundle,
} from './runtime.ts';

function bundle(
  t: { after: (fn: () => void) => void },
  files: Record<string, string | { text: string; mode: number }>,
): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-rt-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, content] of Object.entries(files)) {
    const { text, mode } = typeof content === 'string' ? { text: content, mode: 0o644 } : content;
    fs.writeFileSync(path.join(dir, name), text, { mode });
  }
  return dir;
}
const GV = { text: '#!/bin/sh\n', mode: 0o755 };
const env = (runtimeBundleDir?: string): HostEnvironment =>
  testEnvironment('/nonexistent', { runtimeBundleDir });

test('a minimal stock bundle validates; the sha256 is the one sha256sum computes', async (t) => {
  const dir = bundle(t, { 'libkrun.so': 'krun', 'libkrunfw.so.5': 'kernel bytes', gvproxy: GV });
  const r = await discoverRuntime(env(dir), { platform: 'linux' });
  assert.equal(r.source, 'env');
  assert.equal(r.kind, 'stock');
  assert.deepEqual(r.libkrunfw, [path.join(dir, 'libkrunfw.so.5')]);
  const expected = execFileSync('sha256sum', [path.join(dir, 'libkrunfw.so.5')], { encoding: 'utf8' }).split(
    ' ',
  )[0];
  assert.equal(r.libkrunfwSha256, expected);
  assert.ok(describeRuntime(r).includes('type: stock (system/homebrew)'));
});

test('a custom bundle reports its provenance; a mismatching artifact_sha256 is refused', async (t) => {
  const dir = bundle(t, { 'libkrun.dylib': 'krun', 'libkrunfw.5.dylib': 'custom kernel', gvproxy: GV });
  const sha = execFileSync('sha256sum', [path.join(dir, 'libkrunfw.5.dylib')], { encoding: 'utf8' }).split(
    ' ',
  )[0];
  fs.writeFileSync(
    path.join(dir, 'provenance.json'),
    JSON.stringify({
      libkrunfw_commit: '463f717b',
      kernel_version: '6.12.76',
      build_timestamp: '2026-04-01T00:00:00Z',
      artifact_sha256: sha,
    }),
  );
  fs.writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify({
      target: 'aarch64-apple-darwin',
      custom: true,
      files: ['libkrun.dylib', 'gvproxy', 'libkrunfw.5.dylib', 'provenance.json'],
    }),
  );
  const r = await validateBundle(dir, 'package', 'darwin');
  assert.equal(r.kind, 'custom');
  assert.deepEqual(describeRuntime(r).slice(-4), [
    'type: custom (OpenShell-built)',
    'libkrunfw-commit: 463f717b',
    'kernel-version: 6.12.76',
    'build-timestamp: 2026-04-01T00:00:00Z',
  ]);
  fs.writeFileSync(path.join(dir, 'libkrunfw.5.dylib'), 'replaced');
  await assert.rejects(
    validateBundle(dir, 'package', 'darwin'),
    /provenance.json describes a libkrunfw with sha256/,
  );
});

test('broken bundles: each problem named, with a fix', async (t) => {
  const cases: [Record<string, string | { text: string; mode: number }>, RegExp][] = [
    [{ 'libkrunfw.so.5': 'k', gvproxy: GV }, /no libkrun.so or libkrun.so.1/],
    [{ 'libkrun.so': 'k', gvproxy: GV }, /no libkrunfw library/],
    [{ 'libkrun.so': 'k', 'libkrunfw.so.5': 'k' }, /no executable gvproxy/],
    [{ 'libkrun.so': 'k', 'libkrunfw.so.5': 'k', gvproxy: 'not executable' }, /no executable gvproxy/],
    [
      { 'libkrun.so': 'k', 'libkrunfw.so.5': 'k', gvproxy: GV, 'provenance.json': '{"artifact": ' },
      /provenance.json is not valid JSON/,
    ],
    [
      { 'libkrun.so': 'k', 'libkrunfw.so.5': 'k', gvproxy: GV, 'manifest.json': '[1,2]' },
      /manifest.json is not valid JSON \(not a JSON object\)/,
    ],
    [
      {
        'libkrun.so': 'k',
        'libkrunfw.so.5': 'k',
        gvproxy: GV,
        'manifest.json': '{"files": ["libkrun.so", "libkrunfw.so.5", "gone.so"]}',
      },
      /lists files that are missing: gone.so/,
    ],
  ];
  for (const [files, re] of cases) {
    const dir = bundle(t, files);
    await assert.rejects(
      validateBundle(dir, 'env', 'linux'),
      (e: unknown) => e instanceof HostError && re.test(e.message) && !!e.hint,
      String(re),
    );
  }
});

test('discovery order: OPENSHELL_VM_RUNTIME_DIR, then next to the package, then system directories', async (t) => {
  const pkg = bundle(t, {});
  fs.mkdirSync(path.join(pkg, 'openshell-vm.runtime'));
  for (const [n, c] of Object.entries({ 'libkrun.so': 'k', 'libkrunfw.so.5': 'k' }))
    fs.writeFileSync(path.join(pkg, 'openshell-vm.runtime', n), c);
  fs.writeFileSync(path.join(pkg, 'openshell-vm.runtime', 'gvproxy'), '#!/bin/sh\n', { mode: 0o755 });
  const sys = bundle(t, { 'libkrun.so.1': 'k', 'libkrunfw.so.5': 'k' });
  assert.equal(
    (await discoverRuntime(env(), { platform: 'linux', packageDir: pkg, systemDirs: [sys] })).source,
    'package',
  );
  const system = await discoverRuntime(env(), {
    platform: 'linux',
    packageDir: '/nonexistent',
    systemDirs: ['/nonexistent', sys],
  });
  assert.equal(system.source, 'system');
  assert.equal(system.gvproxy, undefined, 'system directories ship no gvproxy: it is looked up elsewhere');
  await assert.rejects(
    discoverRuntime(env(), { platform: 'linux', packageDir: '/nonexistent', systemDirs: ['/nonexistent'] }),
    (e: unknown) =>
      e instanceof HostError &&
      e.message === 'no libkrun runtime found' &&
      /OPENSHELL_VM_RUNTIME_DIR/.test(e.hint ?? ''),
  );
});

test('a libkrunfw-only directory reads (libkrun missing), validates as a bundle only with libkrun', async (t) => {
  const dir = bundle(t, { 'libkrunfw.so.5': 'kernel bytes', 'kernel.config': 'CONFIG_BRIDGE=y\n' });
  const read = await readRuntimeDir(dir, 'env', 'linux');
  assert.equal(read.libkrun, undefined);
  assert.equal(read.gvproxy, undefined);
  assert.equal(read.kernelConfig, path.join(dir, 'kernel.config'));
  assert.ok(describeRuntime(read).includes('libkrun: missing (this directory cannot boot VMs)'));
  await assert.rejects(validateBundle(dir, 'env', 'linux'), /no libkrun.so or libkrun.so.1/);
  assert.equal((await findLibkrunfwDir(env(dir)))?.dir, dir);
  const sys = bundle(t, { 'libkrunfw.so.5': 'k' });
  const found = await findLibkrunfwDir(env(), { platform: 'linux', systemDirs: ['/nonexistent', sys] });
  assert.equal(found?.source, 'system');
  assert.equal(await findLibkrunfwDir(env(), { platform: 'linux', systemDirs: ['/nonexistent'] }), undefined);
});

test('kernel.config of another sha256 than provenance.json names is refused', async (t) => {
  const config = 'CONFIG_BRIDGE=y\n';
  const sha = execFileSync('sha256sum', { input: config, encoding: 'utf8' }).split(' ')[0];
  const dir = bundle(t, {
    'libkrunfw.so.5': 'k',
    'kernel.config': config,
    'provenance.json': JSON.stringify({ kernel_config_sha256: sha }),
  });
  assert.equal((await readRuntimeDir(dir, 'env', 'linux')).kind, 'custom');
  fs.appendFileSync(path.join(dir, 'kernel.config'), 'CONFIG_VETH=y\n');
  await assert.rejects(
    readRuntimeDir(dir, 'env', 'linux'),
    (e: unknown) =>
      e instanceof HostError &&
      /provenance.json describes a kernel.config with sha256/.test(e.message) &&
      /kernel build --target libkrunfw/.test(e.hint ?? ''),
  );
});

test('findLibkrunfwDir: the last libkrunfw build (current) comes before the system directories', async (t) => {
  const cache = bundle(t, {});
  const key = 'ab'.repeat(12);
  const built = path.join(cache, 'kernels', 'x86_64-libkrunfw', key);
  fs.mkdirSync(built, { recursive: true });
  fs.writeFileSync(path.join(built, 'libkrunfw.so.5'), 'k');
  const sys = bundle(t, { 'libkrunfw.so.5': 'k' });
  const environment = testEnvironment(cache);
  const opts = { platform: 'linux' as const, systemDirs: [sys], arch: 'x86_64' as const };
  assert.equal((await findLibkrunfwDir(environment, opts))?.dir, sys, 'no current: the system directory');
  fs.writeFileSync(path.join(cache, 'kernels', 'x86_64-libkrunfw', 'current'), `${key}\n`);
  const found = await findLibkrunfwDir(environment, opts);
  assert.equal(found?.dir, built);
  assert.equal(found?.source, 'build');
  assert.ok(
    describeRuntime(found as NonNullable<typeof found>)[0]?.endsWith(
      '(the last kernel build --target libkrunfw)',
    ),
  );
});
