import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { readEnvironment } from './environment.ts';

const base = { HOME: '/home/u', PATH: '/usr/bin' };

test('OPENSHELL_VM_GUEST_HANDOFF: cmdline by default, krun on request, anything else refused naming it and the values', () => {
  assert.equal(readEnvironment(base).guestHandoff, 'cmdline');
  assert.equal(readEnvironment({ ...base, OPENSHELL_VM_GUEST_HANDOFF: 'krun' }).guestHandoff, 'krun');
  assert.throws(
    () => readEnvironment({ ...base, OPENSHELL_VM_GUEST_HANDOFF: 'libkrun' }),
    (e: unknown) =>
      e instanceof UsageError &&
      e.message === "OPENSHELL_VM_GUEST_HANDOFF: unknown value 'libkrun'" &&
      /cmdline, krun/.test(e.hint ?? ''),
  );
});

test("OPENSHELL_VM_KRUN_LOG_LEVEL: libkrun's log level 0..5 (default 1, errors); anything else refused", () => {
  assert.equal(readEnvironment(base).krunLogLevel, 1);
  assert.equal(readEnvironment({ ...base, OPENSHELL_VM_KRUN_LOG_LEVEL: '0' }).krunLogLevel, 0);
  assert.equal(readEnvironment({ ...base, OPENSHELL_VM_KRUN_LOG_LEVEL: '5' }).krunLogLevel, 5);
  for (const bad of ['6', '-1', 'debug', '1.5', ' 3']) {
    assert.throws(
      () => readEnvironment({ ...base, OPENSHELL_VM_KRUN_LOG_LEVEL: bad }),
      (e: unknown) =>
        e instanceof UsageError && /is not a log level/.test(e.message) && /4 \(debug\)/.test(e.hint ?? ''),
      bad,
    );
  }
});
