import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatReference, parseImageReference, registryBaseUrl } from './reference.ts';

test('image references parse as docker does', () => {
  const cases: [string, string][] = [
    ['alpine', 'docker.io/library/alpine:latest'],
    ['rancher/k3s:v1', 'docker.io/rancher/k3s:v1'],
    ['ghcr.io/nvidia/openshell/gateway:latest', 'ghcr.io/nvidia/openshell/gateway:latest'],
    ['localhost:5000/a/b', 'localhost:5000/a/b:latest'],
    ['localhost/a', 'localhost/a:latest'],
    [`127.0.0.1:5000/x@sha256:${'a'.repeat(64)}`, `127.0.0.1:5000/x@sha256:${'a'.repeat(64)}`],
    [`reg.io/x:t@sha256:${'b'.repeat(64)}`, `reg.io/x:t@sha256:${'b'.repeat(64)}`],
  ];
  for (const [input, canonical] of cases)
    assert.equal(formatReference(parseImageReference(input)), canonical, input);
});

test('bad references are refused with the expected form', () => {
  for (const bad of ['UPPER/case', 'x@sha256:short', 'a//b', 'x:bad tag', '']) {
    assert.throws(() => parseImageReference(bad), /is not an image reference[\s\S]*/, bad);
  }
});

test('loopback and listed registries use plain HTTP; Docker Hub uses its API host', () => {
  assert.equal(registryBaseUrl('127.0.0.1:5000'), 'http://127.0.0.1:5000');
  assert.equal(registryBaseUrl('localhost:5000'), 'http://localhost:5000');
  assert.equal(registryBaseUrl('ghcr.io'), 'https://ghcr.io');
  assert.equal(registryBaseUrl('reg.lan:5000', ['reg.lan:5000']), 'http://reg.lan:5000');
  assert.equal(registryBaseUrl('docker.io'), 'https://registry-1.docker.io');
});
