import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { LONGEST_SOCKET_NAME } from '../instance/runs.ts';
import { GVPROXY_FILES, gvproxyArgs } from './gvproxy.ts';

test('gvproxy: API on -services when available, else -listen; no default SSH forward', () => {
  assert.deepEqual(gvproxyArgs('/r', true), [
    '-services',
    'unix:///r/gv-api.sock',
    '-listen-qemu',
    'unix:///r/gv-qemu.sock',
    '-ssh-port',
    '-1',
  ]);
  assert.equal(gvproxyArgs('/r', false)[0], '-listen');
});

test('the sun_path check measures the longest socket name in a run', () => {
  const names = [
    ...Object.values(GVPROXY_FILES).filter((n) => n.endsWith('.sock')),
    'vfs.sock',
    'stdout.sock',
    'stderr.sock',
  ];
  const longest = names.reduce((a, b) => (b.length > a.length ? b : a));
  assert.equal(path.basename(LONGEST_SOCKET_NAME).length, longest.length);
});
