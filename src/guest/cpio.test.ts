import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type CpioEntry, writeCpio } from './cpio.ts';

/** Minimal newc reader for checking what writeCpio produced. */
function readCpio(buf: Buffer) {
  const out: { name: string; mode: number; data: Buffer; rdev: [number, number] }[] = [];
  let off = 0;
  const align = () => {
    off = (off + 3) & ~3;
  };
  for (;;) {
    assert.equal(buf.toString('ascii', off, off + 6), '070701');
    const field = (i: number) =>
      Number.parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const rdev: [number, number] = [field(9), field(10)];
    const nameSize = field(11);
    off += 110;
    const name = buf.toString('utf8', off, off + nameSize - 1);
    off += nameSize;
    align();
    const data = buf.subarray(off, off + size);
    off += size;
    align();
    if (name === 'TRAILER!!!') break;
    out.push({ name, mode, data, rdev });
  }
  return out;
}

const entries: CpioEntry[] = [
  { type: 'dir', path: 'bin' },
  { type: 'file', path: '/bin/tool', data: Buffer.from('abcde'), mode: 0o755 },
  { type: 'symlink', path: 'bin/sh', target: 'tool' },
  { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  { type: 'file', path: 'empty', data: new Uint8Array(0) },
];

test('writeCpio round-trips names, modes, data, links and device numbers', () => {
  const got = readCpio(writeCpio(entries));
  assert.deepEqual(
    got.map((e) => [e.name, e.mode.toString(8)]),
    [
      ['bin', '40755'],
      ['bin/tool', '100755'],
      ['bin/sh', '120777'],
      ['dev/console', '20600'],
      ['empty', '100644'],
    ],
  );
  assert.equal(got[1]?.data.toString(), 'abcde');
  assert.equal(got[2]?.data.toString(), 'tool');
  assert.deepEqual(got[3]?.rdev, [5, 1]);
});

test('writeCpio is reproducible and padded to 512-byte blocks', () => {
  const a = writeCpio(entries);
  const b = writeCpio(entries);
  assert.ok(a.equals(b));
  assert.equal(a.length % 512, 0);
});

test('writeCpio rejects duplicate and escaping paths', () => {
  assert.throws(
    () =>
      writeCpio([
        { type: 'dir', path: 'a' },
        { type: 'dir', path: '/a/' },
      ]),
    /duplicate entry a/,
  );
  assert.throws(() => writeCpio([{ type: 'dir', path: 'a/../b' }]), /invalid path/);
});
