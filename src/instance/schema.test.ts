import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as v from 'valibot';
import { rootfsRecordSchema } from '../rootfs/record.ts';
import { lockRecordSchema, ownerRecordSchema, parseRecord, pidRecordSchema } from './schema.ts';
import type { InstanceState } from './state.ts';
import { instanceStateSchema } from './state-schema.ts';

// The on-disk records' schemas: as strict as the zod ones they replace (unknown fields, arrays for
// objects, bounds), and their one-line reasons never quote what the (planted) file holds.

const STATE: InstanceState = {
  version: 1,
  instance: 'gw',
  mode: 'run',
  phase: 'running',
  supervisor: { name: 'openshell-vm', pid: 4242, startTime: '123' },
  detached: true,
  backend: 'qemu',
  accel: 'tcg',
  arch: 'x86_64',
  vcpus: 2,
  memMib: 2048,
  startedAt: '2026-12-02T14:00:00.000Z',
  runDir: '/run/x',
  control: '/run/x/control.sock',
  processes: [{ name: 'qemu', pid: 4243, startTime: undefined }],
  sockets: ['/run/x/control.sock'],
  forwards: [],
  logs: { console: '/run/x/console.log' },
};

const reasonFor = (value: unknown) => {
  const parsed = parseRecord(JSON.stringify(value), instanceStateSchema);
  assert.equal(parsed.ok, false, `refused: ${JSON.stringify(value).slice(0, 200)}`);
  return (parsed as { reason: string }).reason;
};

test('a valid state parses, and a dropped startTime comes back as undefined', () => {
  const parsed = parseRecord(JSON.stringify(STATE), instanceStateSchema);
  assert.ok(parsed.ok);
  assert.deepEqual(parsed.value, STATE);
  assert.ok('startTime' in (parsed.value.processes[0] ?? {}));
});

test('unknown fields, wrong types, bounds and missing fields are refused, naming the field', () => {
  const cases: [unknown, RegExp][] = [
    [{ ...STATE, extra: 1 }, /\(extra: unknown field\)/],
    [{ ...STATE, supervisor: { ...STATE.supervisor, uid: 0 } }, /\(supervisor\.uid: unknown field\)/],
    [{ ...STATE, version: 2 }, /\(version: expected 1\)/],
    [{ ...STATE, vcpus: 1.5 }, /\(vcpus: expected an integer\)/],
    [{ ...STATE, vcpus: 2000 }, /\(vcpus: expected a number <=1024\)/],
    [{ ...STATE, processes: [{ name: 'q', pid: 0 }] }, /\(processes\.0\.pid: expected a number >=1\)/],
    [{ ...STATE, runDir: '' }, /\(runDir: expected a length >=1\)/],
    [{ ...STATE, sockets: Array(65).fill('/s') }, /\(sockets: expected a length <=64\)/],
    [{ ...STATE, mode: 'gateway-ish' }, /\(mode: expected \("gateway" \| "run"\)\)/],
    [{ ...STATE, logs: { kernel: '/x' } }, /\(logs\.kernel: expected \(/],
    [{ ...STATE, detached: 'yes' }, /\(detached: expected boolean\)/],
    [{ version: 1 }, /\(instance: missing\)/],
    [null, /\(the record: expected an object\)/],
  ];
  for (const [value, reason] of cases) assert.match(reasonFor(value), reason);
});

test('an array is refused wherever an object is expected (valibot alone would take [] for {})', () => {
  assert.match(reasonFor([]), /\(the record: expected an object, not an array\)/);
  assert.match(reasonFor({ ...STATE, logs: [] }), /\(logs: expected an object, not an array\)/);
  assert.match(reasonFor({ ...STATE, endpoints: [] }), /\(endpoints: expected an object, not an array\)/);
  const record = parseRecord('[]', ownerRecordSchema);
  assert.equal(record.ok, false);
});

test("the reason quotes no value from the file (a planted escape sequence or path), only the field's name", () => {
  const planted = '\u001b]52;c;cGxhbnRlZA==\u0007/etc/shadow';
  for (const value of [
    { ...STATE, vcpus: planted },
    { ...STATE, mode: planted },
    { ...STATE, instance: planted.repeat(10) },
    { ...STATE, runDir: 7 },
  ]) {
    const reason = reasonFor(value);
    assert.ok(!reason.includes('\u001b'), reason);
    assert.doesNotMatch(reason, /shadow|cGxhbnRlZA/, reason);
  }
});

test("a planted key's control characters are escaped and its length cut; a file that is not JSON is described by its size only", () => {
  const key = '\u001b]0;owned\u0007\u001b[2J';
  const keyed = parseRecord(JSON.stringify({ pid: 1, purpose: 'x', [key]: 1 }), lockRecordSchema);
  assert.equal(keyed.ok, false);
  const reason = (keyed as { reason: string }).reason;
  assert.equal(reason, 'does not match its schema (\\x1b]0;owned\\x07\\x1b[2J: unknown field)');
  const long = parseRecord(JSON.stringify({ pid: 1, purpose: 'x', ['k'.repeat(5000)]: 1 }), lockRecordSchema);
  assert.match((long as { reason: string }).reason, /^does not match its schema \(k{200}…: unknown field\)$/);
  const text = '\u001b[31mRED{';
  const notJson = parseRecord(text, lockRecordSchema);
  assert.deepEqual(notJson, { ok: false, reason: `is not JSON (${Buffer.byteLength(text)} bytes)` });
});

test('owner, pid and lock records: exact fields, bounded', () => {
  const ok = [
    [ownerRecordSchema, { pid: 10, extraPaths: ['/tmp/a'] }],
    [pidRecordSchema, { name: 'qemu', pid: 10, startTime: '5', argv: ['qemu', '-M'] }],
    [lockRecordSchema, { pid: 10, purpose: 'starting' }],
  ] as const;
  for (const [schema, value] of ok) {
    const parsed = parseRecord<unknown>(JSON.stringify(value), schema);
    assert.ok(parsed.ok, JSON.stringify(parsed));
    assert.ok('startTime' in (parsed.value as object));
  }
  const bad = [
    [ownerRecordSchema, { pid: 10, extraPaths: Array(17).fill('/a') }, /extraPaths: expected a length <=16/],
    [pidRecordSchema, { name: 'qemu', pid: 2 ** 31, argv: [] }, /pid: expected a number <=2147483647/],
    [lockRecordSchema, { pid: 10, purpose: 'x', holder: 'me' }, /holder: unknown field/],
    [lockRecordSchema, { pid: 10, purpose: 'x'.repeat(257) }, /purpose: expected a length <=256/],
  ] as const;
  for (const [schema, value, reason] of bad) {
    const parsed = parseRecord<unknown>(JSON.stringify(value), schema);
    assert.equal(parsed.ok, false);
    assert.match((parsed as { reason: string }).reason, reason);
  }
  assert.match((parseRecord('{"pid":', lockRecordSchema) as { reason: string }).reason, /^is not JSON/);
});

test("the rootfs record's builtAt is a real UTC date and time, as toISOString writes it", () => {
  const record = {
    format: 1,
    tool: { name: 'openshell-vm', version: '0.1.0' },
    builtAt: new Date(Date.UTC(2024, 1, 29, 12, 0, 0)).toISOString(),
    buildMs: 5,
    arch: 'x86_64',
    instance: 'gw',
    base: { kind: 'debian', source: 'debian:bookworm' },
    owners: 'preserved',
    inputs: [],
    packages: {},
    warnings: [],
  };
  const parse = (builtAt: unknown, extra: object = {}) =>
    v.safeParse(rootfsRecordSchema, { ...record, builtAt, ...extra });
  assert.ok(parse(record.builtAt).success, 'a leap day parses');
  assert.ok(parse('2026-12-02T14:22Z').success, 'seconds are optional');
  for (const bad of [
    '2026-02-29T00:00:00Z', // no leap day in 2026
    '2026-02-30T00:00:00.000Z',
    '2026-13-01T00:00:00Z',
    '2026-12-02T24:00:00Z',
    '2026-12-02T14:22:33+01:00', // UTC only, as toISOString writes it
    '2026-12-02 14:22:33Z',
    '2026-12-02',
    1764684153000,
  ]) {
    assert.equal(parse(bad).success, false, `${bad} refused`);
  }
  assert.equal(parse(record.builtAt, { packages: [] }).success, false, 'packages: [] refused');
});
