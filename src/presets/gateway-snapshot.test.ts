import assert from 'node:assert/strict';
import type { Writable } from 'node:stream';
import { test } from 'node:test';
import type { AgentSession, SessionIo } from '../agent/session.ts';
import { readGuestFile } from './gateway-snapshot.ts';

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
