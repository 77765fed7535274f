import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeRecord, FrameStream, FramingError, MAX_FRAME_BYTES } from './qemu-stream.ts';

const frame = (fill: number, length: number) => Buffer.alloc(length, fill);

test('records split at every byte boundary come out whole, in order', () => {
  const frames = [frame(1, 60), frame(2, 1514), frame(3, 14), frame(4, 0)];
  const wire = Buffer.concat(frames.map(encodeRecord));
  for (const step of [1, 2, 3, 5, 64, 1000, wire.length]) {
    const stream = new FrameStream();
    const seen: Buffer[] = [];
    const out: Buffer[] = [];
    for (let at = 0; at < wire.length; at += step) {
      out.push(
        ...stream.push(wire.subarray(at, at + step), (f) => {
          seen.push(Buffer.from(f));
          return true;
        }),
      );
    }
    assert.deepEqual(seen, frames, `step ${step}`);
    assert.deepEqual(Buffer.concat(out), wire, `step ${step}: everything kept is forwarded`);
    assert.equal(stream.pendingBytes, 0);
  }
});

test('dropped records are cut out; consecutive kept ones stay one slice without a copy', () => {
  const wire = Buffer.concat([frame(1, 20), frame(2, 20), frame(9, 20), frame(3, 20)].map(encodeRecord));
  const out = new FrameStream().push(wire, (f) => f[0] !== 9);
  assert.equal(out.length, 2);
  assert.equal(out[0]?.buffer, wire.buffer, 'a slice of the chunk');
  assert.deepEqual(
    Buffer.concat(out),
    Buffer.concat([frame(1, 20), frame(2, 20), frame(3, 20)].map(encodeRecord)),
  );
});

test('an incomplete record waits; nothing of it is forwarded early', () => {
  const stream = new FrameStream();
  const record = encodeRecord(frame(7, 100));
  assert.deepEqual(
    stream.push(record.subarray(0, 50), () => true),
    [],
  );
  assert.equal(stream.pendingBytes, 50);
  assert.deepEqual(Buffer.concat(stream.push(record.subarray(50), () => true)), record);
});

test('a length beyond any frame is a framing error', () => {
  const bad = Buffer.alloc(4);
  bad.writeUInt32BE(MAX_FRAME_BYTES + 1);
  assert.throws(() => new FrameStream().push(bad, () => true), FramingError);
});
