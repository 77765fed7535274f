/**
 * A libkrunfw planted in a kernel cache another local user could write (review finding: `runtime`
 * loaded a planted <cache>/kernels/<arch>-libkrunfw/<key>/libkrunfw.so.5 named by `current`, and
 * its constructor ran as the user). The planted library's constructor writes a marker file. In a
 * cache that is ours alone the same library is loaded (the marker appears: the check below can
 * see a load); with <cache>/kernels group/other-writable, or the build directory owned by
 * another uid, `runtime` refuses by path with the fix and the marker stays absent.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { ROOT } from '../e2e/harness.ts';

const CLI = path.join(ROOT, 'bin', 'openshell-vm');
const NOBODY = 65534;
const arch = os.arch() === 'arm64' ? 'aarch64' : 'x86_64';
const KEY = 'abcdefabcdefabcdefabcdef';
const noCc =
  spawnSync('cc', ['--version']).status === 0
    ? false
    : 'needs a C compiler (cc) to build the planted library';

function plant(t: TestContext): { cache: string; build: string; marker: string } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-hostile-krunfw-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const marker = path.join(base, 'constructor-ran');
  const source = path.join(base, 'planted.c');
  fs.writeFileSync(
    source,
    `#include <stdio.h>
#include <stddef.h>
__attribute__((constructor)) static void planted(void) {
  FILE *f = fopen(${JSON.stringify(marker)}, "w"); if (f) { fputs("ran\\n", f); fclose(f); }
}
int krunfw_get_version(void) { return 5; }
static char k[64] = "Linux version 6.12.0 (planted) #1";
char *krunfw_get_kernel(size_t *l, size_t *e, size_t *s) { *l = 0; *e = 0; *s = sizeof k; return k; }
`,
  );
  const cache = path.join(base, 'cache');
  const parent = path.join(cache, 'kernels', `${arch}-libkrunfw`);
  const build = path.join(parent, KEY);
  fs.mkdirSync(build, { recursive: true, mode: 0o700 });
  for (const dir of [cache, path.join(cache, 'kernels'), parent, build]) fs.chmodSync(dir, 0o700);
  execFileSync('cc', ['-shared', '-fPIC', '-o', path.join(build, 'libkrunfw.so.5'), source]);
  fs.writeFileSync(path.join(parent, 'current'), `${KEY}\n`, { mode: 0o600 });
  return { cache, build, marker };
}

function runtime(cache: string) {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENSHELL_VM_CACHE_DIR: cache };
  delete env.OPENSHELL_VM_RUNTIME_DIR;
  return spawnSync(CLI, ['runtime'], { env, encoding: 'utf8', timeout: 60_000 });
}

test('control: a libkrunfw build in a cache of ours alone is loaded (the marker shows a load)', {
  skip: noCc,
}, (t) => {
  const { cache, marker } = plant(t);
  const r = runtime(cache);
  assert.ok(fs.existsSync(marker), `the library was loaded: ${r.stderr}${r.stdout}`);
});

test('a libkrunfw planted under a group/other-writable <cache>/kernels is refused, never loaded', {
  skip: noCc,
}, (t) => {
  const { cache, marker } = plant(t);
  fs.chmodSync(path.join(cache, 'kernels'), 0o777);
  const r = runtime(cache);
  assert.notEqual(r.status, 0, r.stdout);
  assert.match(r.stderr, /refusing to use .*kernels: it .*writable/);
  assert.match(r.stderr, /hint: chmod go-w /);
  assert.equal(fs.existsSync(marker), false, 'the planted constructor ran');
});

test('a libkrunfw build directory owned by another uid is refused, never loaded', {
  skip: noCc || (process.getuid?.() !== 0 && 'needs root (chown to nobody)'),
}, (t) => {
  const { cache, build, marker } = plant(t);
  fs.chownSync(build, NOBODY, NOBODY);
  const r = runtime(cache);
  assert.notEqual(r.status, 0, r.stdout);
  assert.match(r.stderr, new RegExp(`refusing to use ${build.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.equal(fs.existsSync(marker), false, 'the planted constructor ran');
});
