import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { processStartTime } from '../supervisor/identity.ts';
import { POOL_FILES } from './layout.ts';
import {
  CLAIM_WRITE_GRACE_MS,
  claimedMembers,
  claimMember,
  ensureMemberDirs,
  forgetMember,
  isClaimantAlive,
  publishReady,
  readyMembers,
} from './members.ts';

async function poolFixture(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-pool-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await ensureMemberDirs(dir);
  return dir;
}

test('each ready member is taken by exactly one of many concurrent claims', async (t) => {
  const dir = await poolFixture(t);
  for (let n = 0; n < 5; n++) await publishReady(dir, `pool-0123456789-${n}`);
  const claims = await Promise.all(Array.from({ length: 40 }, () => claimMember(dir)));
  const taken = claims.filter((c) => c !== undefined);
  assert.equal(taken.length, 5, 'five members, five claims won');
  assert.equal(new Set(taken).size, 5, 'no member was given twice');
  assert.deepEqual(await readyMembers(dir), []);
  assert.deepEqual((await claimedMembers(dir)).sort(), [...taken].sort());
});

test('claims take the oldest member first and skip the dot files a publish writes first', async (t) => {
  const dir = await poolFixture(t);
  await publishReady(dir, 'pool-0123456789-10');
  await publishReady(dir, 'pool-0123456789-9');
  await fs.writeFile(path.join(dir, POOL_FILES.ready, '.pool-0123456789-11.tmp'), 'x');
  assert.equal(await claimMember(dir), 'pool-0123456789-9');
  assert.equal(await claimMember(dir), 'pool-0123456789-10');
  assert.equal(await claimMember(dir), undefined, 'a half-published member is never taken');
});

test('a claim names its claimant; a dead claimant, or a claim never written in time, is not alive', async (t) => {
  const dir = await poolFixture(t);
  await publishReady(dir, 'pool-0123456789-1');
  await publishReady(dir, 'pool-0123456789-2');
  assert.equal(await claimMember(dir), 'pool-0123456789-1');
  assert.equal(await isClaimantAlive(dir, 'pool-0123456789-1'), true, 'this process is alive');

  const child = spawn(process.execPath, ['-e', '0']);
  const pid = child.pid as number;
  const startTime = await processStartTime(pid);
  await new Promise((r) => child.once('exit', r));
  assert.equal(await claimMember(dir, { pid, startTime }), 'pool-0123456789-2');
  assert.equal(await isClaimantAlive(dir, 'pool-0123456789-2'), false, 'its claimant has exited');

  await fs.writeFile(path.join(dir, POOL_FILES.claimed, 'pool-0123456789-3'), '');
  assert.equal(
    await isClaimantAlive(dir, 'pool-0123456789-3'),
    true,
    'just renamed, identity not yet written',
  );
  assert.equal(
    await isClaimantAlive(dir, 'pool-0123456789-3', Date.now() + CLAIM_WRITE_GRACE_MS + 1),
    false,
    'never written: abandoned',
  );
  await forgetMember(dir, 'pool-0123456789-3');
  assert.equal(await isClaimantAlive(dir, 'pool-0123456789-3'), false, 'a claim that is gone');
});
