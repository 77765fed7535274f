import assert from 'node:assert/strict';
import { test } from 'node:test';
import { debianBaseKey, GATEWAY_PACKAGES, hostMmdebstrapArgv, MMDEBSTRAP_SHAPE } from './base-debian.ts';

const facts = {
  release: 'bookworm',
  debArch: 'amd64',
  packages: [...GATEWAY_PACKAGES],
  sources: ['deb http://mirror.example/debian bookworm main'],
};

test('the base key: the same package set in any order or with repeats is the same base', () => {
  const key = debianBaseKey(facts);
  assert.match(key, /^[0-9a-f]{16}$/);
  assert.equal(debianBaseKey({ ...facts, packages: [...GATEWAY_PACKAGES].reverse() }), key);
  assert.equal(debianBaseKey({ ...facts, packages: [...GATEWAY_PACKAGES, 'zstd', 'kmod'] }), key);
});

test('the base key: an extra package, another release, arch or source is another base', () => {
  const key = debianBaseKey(facts);
  const keys = [
    debianBaseKey({ ...facts, packages: [...GATEWAY_PACKAGES, 'hello'] }),
    debianBaseKey({ ...facts, packages: [...GATEWAY_PACKAGES, 'python3-grpcio'] }),
    debianBaseKey({ ...facts, packages: [...GATEWAY_PACKAGES, 'hello', 'python3-grpcio'] }),
    debianBaseKey({ ...facts, release: 'trixie' }),
    debianBaseKey({ ...facts, debArch: 'arm64' }),
    debianBaseKey({ ...facts, sources: ['deb http://other.example/debian bookworm main'] }),
  ];
  assert.equal(new Set([key, ...keys]).size, keys.length + 1);
});

test('the host mmdebstrap argv: every package in one --include, the shape, apt options, then release, output, sources', () => {
  const argv = hostMmdebstrapArgv(
    {
      ...facts,
      packages: ['busybox-static', 'hello', 'python3-grpcio'],
      aptOptions: ['Acquire::Check-Valid-Until "false"'],
    },
    '/cache/x.tar',
  );
  assert.deepEqual(argv, [
    'mmdebstrap',
    '--variant=minbase',
    '--architectures=amd64',
    '--include=busybox-static,hello,python3-grpcio',
    '--format=tar',
    ...MMDEBSTRAP_SHAPE,
    '--aptopt=Acquire::Check-Valid-Until "false"',
    'bookworm',
    '/cache/x.tar',
    'deb http://mirror.example/debian bookworm main',
  ]);
});
