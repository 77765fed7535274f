import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import type { HostEnvironment } from '../../config/environment.ts';
import {
  codesignArgs,
  ENTITLEMENTS_PLIST,
  HYPERVISOR_ENTITLEMENT,
  runnerNode,
  signedNodePath,
} from './macos.ts';

const env = { cacheDir: '/c' } as HostEnvironment;

test('the shipped entitlements grant exactly the hypervisor entitlement', () => {
  const plist = fs.readFileSync(ENTITLEMENTS_PLIST, 'utf8');
  assert.match(plist, new RegExp(`<key>${HYPERVISOR_ENTITLEMENT.replaceAll('.', '\\.')}</key>\\s*<true/>`));
  assert.equal((plist.match(/<key>/g) ?? []).length, 1);
});

test('ad-hoc signing argv, and one signed copy per Node.js binary and version in the cache', () => {
  assert.deepEqual(codesignArgs('/c/node', '/e.plist'), [
    '--force',
    '--sign',
    '-',
    '--entitlements',
    '/e.plist',
    '/c/node',
  ]);
  const a = signedNodePath(env, '/usr/bin/node', 'v24.1.0');
  assert.match(a, /^\/c\/libkrun-runner\/node-v24\.1\.0-[0-9a-f]{12}$/);
  assert.notEqual(a, signedNodePath(env, '/opt/node', 'v24.1.0'));
});

test('outside macOS the runner uses this Node.js as is (no signing)', async () => {
  assert.equal(await runnerNode(env, 'linux'), process.execPath);
});
