import assert from 'node:assert/strict';
import { test } from 'node:test';
import { busyboxApplets } from './busybox.ts';

const table = ['[', '[[', 'cat', 'insmod', 'mount', 'poweroff', 'sh', 'switch_root'];

test('busyboxApplets reads the applet table out of the binary', () => {
  const binary = Buffer.concat([
    Buffer.from('\x7fELF junk\0'),
    Buffer.from(`${table.join('\0')}\0\0`, 'latin1'),
    Buffer.from([0xff, 1]),
  ]);
  assert.deepEqual(busyboxApplets(binary), table);
});

test('busyboxApplets refuses a binary without the table or without required applets', () => {
  assert.throws(() => busyboxApplets(Buffer.from('not busybox')), /applet table not found/);
  assert.throws(() => busyboxApplets(Buffer.from('[\0[[\0cat\0\0', 'latin1')), /applet 'sh' missing/);
});
