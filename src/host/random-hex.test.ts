import assert from 'node:assert/strict';
import { test } from 'node:test';
import { randomHex } from './random-hex.ts';

test('randomHex: the length asked for, hex only, and not the same twice', () => {
  const a = randomHex(4);
  const b = randomHex(4);
  assert.match(a, /^[0-9a-f]{8}$/);
  assert.notEqual(a, b);
  assert.match(randomHex(64), /^[0-9a-f]{128}$/);
});
