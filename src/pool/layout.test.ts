import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLI_NAMES, resolveVmOptions } from '../options/exec-options.ts';
import { isMemberOf, memberName, POOL_ID, poolIdOf, poolKeyOf } from './layout.ts';

const host = { cpus: 8, memMib: 16_384 };
const idOf = (raw: Record<string, string>) =>
  poolIdOf(poolKeyOf(resolveVmOptions(raw, host, CLI_NAMES).options));

test("a pool's id is its VM options after validation: spellings of one value share it", () => {
  const id = idOf({ mem: '2GiB', vcpus: '2' });
  assert.match(id, POOL_ID);
  assert.equal(idOf({ mem: '2048', vcpus: '2' }), id, '2GiB and 2048 MiB are one memory size');
  assert.equal(idOf({}), id, 'the defaults are 2 vCPUs and 2048 MiB');
  assert.notEqual(idOf({ mem: '1GiB' }), id);
  assert.notEqual(idOf({ vcpus: '1' }), id);
  assert.notEqual(idOf({ net: 'none' }), id);
  assert.notEqual(idOf({ accel: 'tcg' }), id, 'an explicit accelerator is another pool');
  assert.notEqual(idOf({ kernel: 'debian' }), id);
});

test('the options run ignores for a pool (name, ports, boot timeout) do not change its id', () => {
  const id = idOf({});
  assert.equal(idOf({ name: 'other', bootTimeout: '30' }), id);
});

test('member names belong to their pool only', () => {
  assert.equal(memberName('0123456789', 4), 'pool-0123456789-4');
  assert.equal(isMemberOf('0123456789', 'pool-0123456789-4'), true);
  assert.equal(isMemberOf('0123456789', 'pool-0123456789-4x'), false);
  assert.equal(isMemberOf('0123456789', 'pool-abcdefabcd-4'), false);
  assert.equal(isMemberOf('0123456789', 'default'), false);
});
