import assert from 'node:assert/strict';
import { test } from 'node:test';
import { READ_ONLY_SHARE_SCRIPT, readOnlyShareCommand } from './read-only-share.ts';

const inputs = {
  unshare: '/usr/bin/unshare',
  virtiofsd: '/usr/lib/qemu/virtiofsd',
  virtiofsdArgs: ['--socket-path=/run/vfs.sock', '-o', 'source=/root fs'],
  rootDir: '/root fs',
} as const;

test('virtiofsd runs in a private mount namespace, exec-ed so its pid stays the one supervised', () => {
  const { command, args } = readOnlyShareCommand({ ...inputs, flavour: 'c' });
  assert.equal(command, '/usr/bin/unshare');
  assert.deepEqual(args.slice(0, 7), [
    '--mount',
    '--propagation',
    'private',
    '--',
    '/bin/sh',
    '-c',
    READ_ONLY_SHARE_SCRIPT,
  ]);
  assert.ok(!args.includes('--fork'));
  assert.deepEqual(args.slice(8), [
    '/root fs',
    '/usr/lib/qemu/virtiofsd',
    '--socket-path=/run/vfs.sock',
    '-o',
    'source=/root fs',
    '-o',
    'modcaps=-mknod',
  ]);
  assert.deepEqual(readOnlyShareCommand({ ...inputs, flavour: 'rust' }).args.slice(-1), ['--modcaps=-mknod']);
});

test('the script binds the root read-only, keeps nothing of it writable, then execs virtiofsd', () => {
  const lines = READ_ONLY_SHARE_SCRIPT.split('\n');
  const at = (needle: string) => lines.findIndex((l) => l.includes(needle));
  assert.ok(at('remount,bind,ro') > at('mount --bind -- "$root" "$root"'));
  assert.ok(at('exec "$@"') > at('remount,bind,ro'));
  // One bind (the root's own) and one remount, read-only: no writable directory inside it.
  assert.equal(lines.filter((l) => l.startsWith('mount ')).length, 2);
  assert.doesNotMatch(READ_ONLY_SHARE_SCRIPT, /handoff|\.ovm/);
});
