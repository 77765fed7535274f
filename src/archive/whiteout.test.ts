import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
import { splitArchivePath } from './root-path.ts';
import { classifyLayerMember } from './whiteout.ts';

const classify = (name: string) => classifyLayerMember(splitArchivePath(name, 'layer'), name, 'layer');

test('whiteouts, the opaque marker, AUFS metadata and ordinary members are told apart by name', () => {
  assert.deepEqual(classify('etc/.wh.passwd'), { kind: 'whiteout', target: 'passwd' });
  assert.deepEqual(classify('.wh.etc'), { kind: 'whiteout', target: 'etc' });
  assert.deepEqual(classify('a/.wh...hidden'), { kind: 'whiteout', target: '..hidden' });
  assert.deepEqual(classify('opt/.wh..wh..opq'), { kind: 'opaque' });
  assert.deepEqual(classify('.wh..wh..opq'), { kind: 'opaque' });
  assert.deepEqual(classify('.wh..wh.aufs'), { kind: 'aufs-meta' });
  assert.deepEqual(classify('.wh..wh.plnk/1234.5678'), { kind: 'aufs-meta' });
  assert.deepEqual(classify('usr/bin/.whatever'), { kind: 'entry' });
  assert.deepEqual(classify('usr/.wh/x'), { kind: 'entry' });
});

test('a whiteout that names no plain file, or has members under it, is refused naming the member', () => {
  for (const name of [
    '.wh.',
    '.wh..',
    '.wh...',
    'a/.wh..',
    'a/.wh.../',
    '.wh./x',
    'a/.wh.b/c',
    '.wh..wh..opq/x',
  ]) {
    assert.throws(
      () => classify(name),
      (err: unknown) =>
        err instanceof HostError && err.message.startsWith(`layer: refusing the member '${name}'`),
      name,
    );
  }
});
