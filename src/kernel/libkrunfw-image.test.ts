import assert from 'node:assert/strict';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { fakeKernelImage } from '../../test/fixtures/libkrunfw/fake-libkrunfw.ts';
import { HostError } from '../errors.ts';
import { extractIkconfig, findKernelBanner } from './libkrunfw-image.ts';

test('the banner is the linux_banner line, not the "Linux version %s" format string before it', () => {
  const found = findKernelBanner(fakeKernelImage({ release: '6.12.91' }));
  assert.equal(found?.release, '6.12.91');
  assert.match(found?.banner ?? '', /^Linux version 6\.12\.91 \(root@test\) \(gcc .*UTC 2026$/);
  assert.equal(findKernelBanner(fakeKernelImage({})), undefined, 'a format string alone is no banner');
  assert.equal(findKernelBanner(new Uint8Array(100)), undefined);
});

test('IKCONFIG: the gzipped config between IKCFG_ST and IKCFG_ED, undefined without it', () => {
  const config = '# Linux/x86 6.12.91 Kernel Configuration\nCONFIG_BRIDGE=y\n# CONFIG_MODULES is not set\n';
  assert.equal(extractIkconfig(fakeKernelImage({ release: '6.12.91', ikconfig: config })), config);
  assert.equal(extractIkconfig(fakeKernelImage({ release: '6.12.91' })), undefined);
});

test('damaged IKCONFIG blocks are errors naming the problem', () => {
  const start = Buffer.from('IKCFG_ST');
  const cases: [Buffer, RegExp][] = [
    [Buffer.concat([start, zlib.gzipSync('CONFIG_A=y\n')]), /no IKCFG_ED after it/],
    [Buffer.concat([start, Buffer.from('not gzip'), Buffer.from('IKCFG_ED')]), /does not decompress/],
    [Buffer.concat([start, zlib.gzipSync('hello\n'), Buffer.from('IKCFG_ED')]), /has no CONFIG_ lines/],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(
      () => extractIkconfig(bytes),
      (e: unknown) => e instanceof HostError && re.test(e.message) && !!e.hint,
      String(re),
    );
  }
});
