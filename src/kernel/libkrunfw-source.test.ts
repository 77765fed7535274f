import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
import { libkrunfwBuildKey } from './libkrunfw-build.ts';
import { parseLibkrunfwMakefile, readLibkrunfwTree, resolveInput, treeSha256 } from './libkrunfw-source.ts';

const MAKEFILE = 'KERNEL_VERSION = linux-6.12.91\nKERNEL_REMOTE = x\nABI_VERSION = 5\nFULL_VERSION = 5.5.0\n';

function tmp(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krunsrc-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

test("libkrunfw's Makefile: kernel version, ABI and full version; another Makefile is refused", () => {
  assert.deepEqual(parseLibkrunfwMakefile(MAKEFILE), {
    kernelVersion: '6.12.91',
    abiVersion: 5,
    fullVersion: '5.5.0',
  });
  assert.throws(
    () => parseLibkrunfwMakefile('all:\n\techo hi\n'),
    (e: unknown) => e instanceof HostError && /this is not libkrunfw/.test(e.message),
  );
});

test('a libkrunfw tree: its patches sorted as the Makefile applies them, the arch config required', async (t) => {
  const d = tmp(t);
  fs.writeFileSync(path.join(d, 'Makefile'), MAKEFILE);
  fs.mkdirSync(path.join(d, 'patches'));
  for (const n of ['0002-b.patch', '0001-a.patch', 'README', '1000-not-applied.patch'])
    fs.writeFileSync(path.join(d, 'patches', n), '');
  await assert.rejects(readLibkrunfwTree(d, 'x86_64'), /has no config-libkrunfw_x86_64/);
  fs.writeFileSync(path.join(d, 'config-libkrunfw_x86_64'), 'CONFIG_A=y\n');
  const tree = await readLibkrunfwTree(d, 'x86_64');
  assert.deepEqual(
    tree.patches.map((p) => path.basename(p)),
    ['0001-a.patch', '0002-b.patch'],
  );
  assert.equal(tree.configFile, path.join(d, 'config-libkrunfw_x86_64'));
});

test('treeSha256 changes with a file, a mode or a name, and ignores .git', async (t) => {
  const d = tmp(t);
  fs.writeFileSync(path.join(d, 'a'), 'one');
  fs.mkdirSync(path.join(d, '.git'));
  const first = await treeSha256(d);
  fs.writeFileSync(path.join(d, '.git', 'HEAD'), 'ref');
  assert.equal(await treeSha256(d), first);
  fs.chmodSync(path.join(d, 'a'), 0o755);
  const moded = await treeSha256(d);
  assert.notEqual(moded, first);
  fs.writeFileSync(path.join(d, 'a'), 'two');
  assert.notEqual(await treeSha256(d), moded);
});

test('a local input is used as given: the pinned one recognised, another one warned about', async (t) => {
  const d = tmp(t);
  const file = path.join(d, 'src.tar.gz');
  fs.writeFileSync(file, 'bytes');
  const sha = (await import('./source.ts')).sha256File;
  const pin = {
    what: 'libkrunfw source',
    version: '5.5.0',
    url: 'http://127.0.0.1:9/x',
    sha256: await sha(file),
    fileName: 'x.tar.gz',
  };
  const warnings: string[] = [];
  const opts = { allowDirectory: false, flag: '--x', warn: (m: string) => warnings.push(m) };
  assert.equal((await resolveInput(pin, file, d, opts)).pinned, true);
  assert.deepEqual(warnings, []);
  const other = await resolveInput({ ...pin, sha256: 'ab'.repeat(32) }, file, d, opts);
  assert.equal(other.pinned, false);
  assert.match(warnings[0] ?? '', /is not the pinned libkrunfw source 5\.5\.0 .*used as given/);
  await assert.rejects(resolveInput(pin, d, d, opts), /is a directory/);
  await assert.rejects(resolveInput(pin, path.join(d, 'none'), d, opts), /--x .* does not exist/);
});

test('the build key changes with each input', () => {
  const inputs = {
    arch: 'x86_64' as const,
    libkrunfwSha256: 'a'.repeat(64),
    kernelSha256: 'b'.repeat(64),
    requestSha256: 'c'.repeat(64),
    toolchain: { compiler: 'gcc 12.2.0', make: 'GNU Make 4.3' },
  };
  const key = libkrunfwBuildKey(inputs);
  assert.match(key, /^[0-9a-f]{24}$/);
  const variants = [
    { ...inputs, arch: 'aarch64' as const },
    { ...inputs, libkrunfwSha256: 'd'.repeat(64) },
    { ...inputs, kernelSha256: 'd'.repeat(64) },
    { ...inputs, requestSha256: 'd'.repeat(64) },
    { ...inputs, toolchain: { compiler: 'gcc 14', make: 'GNU Make 4.3' } },
  ];
  for (const v of variants) assert.notEqual(libkrunfwBuildKey(v), key);
  assert.equal(libkrunfwBuildKey({ ...inputs }), key);
});

test('the libkrunfw build refuses another platform than Linux before looking for anything', async () => {
  const { buildLibkrunfw } = await import('./libkrunfw-build.ts');
  const { testEnvironment } = await import('../../test/fixtures/env.ts');
  await assert.rejects(
    buildLibkrunfw(testEnvironment('/nonexistent'), { arch: 'aarch64', jobs: 1, platform: 'darwin' }),
    (e: unknown) =>
      e instanceof HostError &&
      e.message === 'kernel build --target libkrunfw runs on Linux only (this host is darwin)' &&
      /libkrunfw\.5\.dylib/.test(e.hint ?? ''),
  );
});
