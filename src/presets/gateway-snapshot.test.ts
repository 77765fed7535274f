import assert from 'node:assert/strict';
import type { Writable } from 'node:stream';
import { test } from 'node:test';
import type { AgentSession, SessionIo } from '../agent/session.ts';
import { HostError, RestoreError, VmError } from '../errors.ts';
import {
  coldRetryAfter,
  RESTORE_READY_MAX_MS,
  readGuestFile,
  restoreCheckFailure,
  restoreReadyBudgetMs,
} from './gateway-snapshot.ts';

/** A guest whose `cat` writes `chunks` and exits with `code` (never, when code is undefined). */
function guest(chunks: readonly Buffer[], code: number | undefined) {
  const calls: { argv: readonly string[]; closed: boolean }[] = [];
  return {
    calls,
    exec(req: { argv: readonly string[] }, io: SessionIo): AgentSession {
      const call = { argv: req.argv, closed: false };
      calls.push(call);
      for (const c of chunks) (io.stdout as Writable).write(c);
      const done = code === undefined ? new Promise<number>(() => undefined) : Promise.resolve(code);
      return {
        done,
        close: () => {
          call.closed = true;
        },
      } as unknown as AgentSession;
    },
  };
}

test('a guest file read through the agent: its bytes; absent is undefined', async () => {
  const g = guest([Buffer.from('clusters:\n'), Buffer.from('users:\n')], 0);
  assert.equal((await readGuestFile(g, '/etc/x', 1024))?.toString(), 'clusters:\nusers:\n');
  assert.deepEqual(g.calls[0]?.argv, ['cat', '--', '/etc/x']);
  assert.equal(await readGuestFile(guest([], 1), '/etc/x', 1024), undefined);
});

test('hostile guest: an answer over the cap is an error, not buffered; one that never ends is cut off', async () => {
  const flood = guest(
    Array.from({ length: 64 }, () => Buffer.alloc(16 * 1024, 0x41)),
    0,
  );
  await assert.rejects(readGuestFile(flood, '/etc/x', 256 * 1024 - 1), /is over 262143 bytes/);
  const stuck = guest([Buffer.from('clusters:')], undefined);
  await assert.rejects(
    readGuestFile(stuck, '/etc/x', 1024, 50),
    /did not answer `cat \/etc\/x` within 0.05 s/,
  );
  assert.equal(stuck.calls[0]?.closed, true, 'the stuck session is closed');
});

test("only a restore that did not come back drops the state and boots cold; a host failure is the start's own", () => {
  const loadFailed = new RestoreError('QEMU could not load the saved state: load of migration failed');
  const portInUse = new HostError('127.0.0.1:30051 is in use');
  assert.equal(coldRetryAfter(loadFailed, true, undefined), true);
  assert.equal(coldRetryAfter(portInUse, true, undefined), false);
  assert.equal(coldRetryAfter(new VmError('gvproxy did not start'), true, undefined), false);
  // Not restoring, or aborted (Ctrl-C): never a cold retry.
  assert.equal(coldRetryAfter(loadFailed, false, undefined), false);
  const ac = new AbortController();
  ac.abort(new Error('interrupted'));
  assert.equal(coldRetryAfter(loadFailed, true, ac.signal), false);

  // A restored guest's failed check becomes a RestoreError with its words, hint and cause.
  const notReady = new VmError('the gateway did not answer mTLS on 127.0.0.1:30051 within 120 s', {
    hint: 'see x',
  });
  const wrapped = restoreCheckFailure(notReady, undefined);
  assert.ok(wrapped instanceof RestoreError);
  assert.equal(wrapped.message, notReady.message);
  assert.equal(wrapped.hint, 'see x');
  assert.equal(wrapped.cause, notReady);
  assert.equal(coldRetryAfter(wrapped, true, undefined), true);
  assert.equal(restoreCheckFailure(loadFailed, undefined), loadFailed);
  // An abort's reason is not turned into a failed restore.
  assert.equal(restoreCheckFailure(ac.signal.reason, ac.signal), ac.signal.reason);
});

test("a restore's readiness is bounded by min(--ready-timeout, 120 s)", () => {
  assert.equal(RESTORE_READY_MAX_MS, 120_000);
  assert.equal(restoreReadyBudgetMs(600_000), 120_000);
  assert.equal(restoreReadyBudgetMs(45_000), 45_000);
});
