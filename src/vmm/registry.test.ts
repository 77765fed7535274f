import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { readEnvironment } from '../config/environment.ts';
import { GUEST_ARCHES } from '../host/arch.ts';
import type { BackendFeatures } from './backend.ts';
import { LibkrunBackend } from './libkrun/backend.ts';
import { QemuBackend } from './qemu/backend.ts';
import { type BackendHost, backendFeatures, createBackend, featuresOf } from './registry.ts';
import { BACKENDS } from './select.ts';

const SRC = new URL('..', import.meta.url).pathname;

const HOSTS: readonly BackendHost[] = (['linux', 'darwin'] as const).flatMap((platform) =>
  GUEST_ARCHES.map((arch) => ({ platform, arch })),
);

/** Every non-test source file under src/, with its path relative to src/. */
function sources(): { rel: string; text: string }[] {
  const out: { rel: string; text: string }[] = [];
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts'))
        out.push({ rel: path.relative(SRC, full), text: fs.readFileSync(full, 'utf8') });
    }
  };
  walk(SRC);
  return out;
}

/** Where backends declare their features (a read there is not a caller's). */
const DECLARING = new Set([
  'vmm/backend.ts',
  'vmm/registry.ts',
  'vmm/qemu/backend.ts',
  'vmm/libkrun/backend.ts',
]);

test('every backend has features on every host, each with the same fields, and they are consistent', () => {
  for (const host of HOSTS) {
    const all = backendFeatures(host);
    assert.deepEqual(Object.keys(all).sort(), [...BACKENDS].sort(), 'one entry per backend name');
    const fields = Object.keys(all.qemu).sort();
    for (const name of BACKENDS) {
      const f: BackendFeatures = all[name];
      const where = `${name} on ${host.platform}/${host.arch}`;
      assert.deepEqual(Object.keys(f).sort(), fields, `${where}: the same fields as every backend`);
      assert.ok(f.accelerators.length > 0, `${where}: an accelerator`);
      assert.ok(f.guestArches.includes(host.arch as never), `${where}: boots the host's own architecture`);
      // The frame filter in front of gvproxy speaks the stream framing every backend uses.
      assert.ok(f.networks.includes('gvproxy') && f.networks.includes('none'), `${where}: gvproxy and none`);
      assert.equal(new Set(f.networks).size, f.networks.length, `${where}: networks listed once`);
      assert.ok(f.vmmLog.endsWith('.log') && !f.vmmLog.includes('/'), `${where}: a log file name`);
      // No software emulation means no other architecture than the host's.
      if (!f.accelerators.includes('tcg')) assert.deepEqual(f.guestArches, [host.arch], where);
    }
    const logs = BACKENDS.map((name) => all[name].vmmLog);
    assert.equal(new Set(logs).size, logs.length, 'each backend its own VMM log file');
  }
});

test("the backend objects' features are the registry's for this host, and each is created by its name", () => {
  const env = readEnvironment();
  const runtime = { dir: '/rt', libkrun: '/rt/libkrun.so', libkrunfw: '/rt/libkrunfw.so' } as never;
  for (const name of BACKENDS) {
    const backend = createBackend(name, env, runtime, {});
    assert.equal(backend.name, name);
    assert.deepEqual(backend.features, featuresOf(name));
  }
  assert.ok(createBackend('qemu', env, undefined, {}) instanceof QemuBackend);
  assert.ok(createBackend('libkrun', env, runtime, {}) instanceof LibkrunBackend);
  assert.throws(() => featuresOf('firecracker'), /unknown VMM backend 'firecracker'/);
});

test('every feature field is read by a caller (outside the files that declare them): no dead fields', () => {
  const callers = sources().filter((s) => !DECLARING.has(s.rel));
  for (const field of Object.keys(backendFeatures().qemu)) {
    // backend.features.X, features.X, featuresOf(name).X, or a destructured/picked field.
    const read = new RegExp(
      `features(?:Of\\([^)]*\\)|\\(\\)(?:\\[[^\\]]*\\])?)?\\??\\.${field}\\b|Pick<BackendFeatures, [^>]*'${field}'`,
    );
    const readers = callers.filter((s) => read.test(s.text)).map((s) => s.rel);
    assert.ok(readers.length > 0, `BackendFeatures.${field} is read by no caller: remove it, or read it`);
  }
});

test("nothing outside src/vmm/ compares a backend's name: callers read features instead", () => {
  const names = BACKENDS.join('|');
  const comparison = new RegExp(
    `[!=]==\\s*['"\`](?:${names})['"\`]|['"\`](?:${names})['"\`]\\s*[!=]==|case\\s+['"\`](?:${names})['"\`]`,
  );
  const offenders = sources()
    .filter((s) => !s.rel.startsWith('vmm/'))
    .flatMap((s) =>
      s.text
        .split('\n')
        .map((line, i) => ({ line, at: `${s.rel}:${i + 1}` }))
        .filter(({ line }) => comparison.test(line))
        .map(({ line, at }) => `${at}: ${line.trim()}`),
    );
  assert.deepEqual(offenders, []);
});
