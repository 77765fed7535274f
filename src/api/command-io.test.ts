import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import type { SessionIo } from '../agent/session.ts';
import { UsageError, VmError } from '../errors.ts';
import type { InstanceHandle } from '../instance/start.ts';
import { commandIo, DEFAULT_MAX_BUFFER_BYTES } from './command-io.ts';
import { RunningInstance } from './running.ts';

const write = (stream: NodeJS.WritableStream, chunk: Buffer) =>
  new Promise<void>((resolve, reject) => stream.write(chunk, (err) => (err ? reject(err) : resolve())));

test('a buffered stream past maxBuffer: the signal aborts with a VmError naming the stream and the option; the result throws it', async () => {
  const { io, signal, result } = commandIo({ maxBuffer: 16 });
  await write(io.stdout, Buffer.from('0123456789'));
  await write(io.stderr, Buffer.from('0123456789'));
  assert.equal(signal.aborted, false, 'under the limit, each stream counted apart');
  assert.deepEqual(result(0), { exitCode: 0, signal: undefined, stdout: '0123456789', stderr: '0123456789' });
  await write(io.stderr, Buffer.from('abcdefg'));
  assert.equal(signal.aborted, true);
  const reason = signal.reason as VmError;
  assert.ok(reason instanceof VmError);
  assert.equal(
    reason.message,
    'the command wrote more than maxBuffer (16 bytes) to its stderr: it was ended',
  );
  assert.match(reason.hint ?? '', /raise maxBuffer .* or pass a stderr stream/);
  // The collector keeps taking (the session writes on without an error listener) but keeps nothing.
  await write(io.stderr, Buffer.alloc(1024));
  await write(io.stdout, Buffer.from('0123456789'));
  assert.throws(
    () => result(0),
    (e) => e === reason,
    'the first overflow is the error',
  );
});

test('the default limit is 64 MiB of each stream', async () => {
  const { io, signal } = commandIo({});
  const mib = Buffer.alloc(2 ** 20, 0x79);
  for (let i = 0; i < 64; i++) await write(io.stdout, mib);
  assert.equal(DEFAULT_MAX_BUFFER_BYTES, 64 * 2 ** 20);
  assert.equal(signal.aborted, false, 'exactly 64 MiB is kept');
  await write(io.stdout, Buffer.from('y'));
  assert.match((signal.reason as Error).message, /more than maxBuffer \(67108864 bytes\) to its stdout/);
});

test("the caller's streams are not limited, and the caller's signal ends the session with its own reason", async () => {
  let bytes = 0;
  const out = new Writable({
    write(chunk: Buffer, _e, done) {
      bytes += chunk.length;
      done();
    },
  });
  const caller = new AbortController();
  const { io, signal } = commandIo({ maxBuffer: 1, stdout: out, signal: caller.signal });
  await write(io.stdout, Buffer.alloc(4096));
  assert.equal(bytes, 4096);
  assert.equal(signal.aborted, false);
  const why = new Error('caller stopped it');
  caller.abort(why);
  assert.equal(signal.reason, why);
});

test('maxBuffer that is not a whole number of bytes in range is refused, naming the option', () => {
  for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 40, '10', null, 10n]) {
    assert.throws(
      () => commandIo({ maxBuffer: bad as number }),
      (e) =>
        e instanceof UsageError &&
        /^maxBuffer: /.test(e.message) &&
        /a whole number of bytes from 1 to \d+/.test(e.message),
      String(bad),
    );
  }
});

/**
 * A running instance whose guest command writes `total` bytes in 64 KiB chunks (as `head -c` of
 * /dev/zero would) and then exits 0, unless its session is closed first; says whether it was.
 */
function floodingHandle(total: number): { handle: InstanceHandle; closed: () => boolean } {
  let closed = false;
  const chunk = Buffer.alloc(64 * 1024, 0x79);
  const handle = {
    instance: 'flood',
    vm: { hasExited: false },
    state: { phase: 'running', processes: [] },
    exec: (_request: unknown, io: SessionIo) => {
      let settle: { resolve: (code: number) => void; reject: (err: Error) => void } | undefined;
      const done = new Promise<number>((resolve, reject) => {
        settle = { resolve, reject };
      });
      done.catch(() => undefined);
      let written = 0;
      const pump = () => {
        if (closed) return;
        if (written >= total) return settle?.resolve(0);
        io.stdout.write(chunk);
        written += chunk.length;
        setImmediate(pump);
      };
      setImmediate(pump);
      return {
        done,
        close: () => {
          if (closed || written >= total) return;
          closed = true;
          settle?.reject(new VmError("the command's session was closed before it ended"));
        },
        signal: () => undefined,
        resize: () => undefined,
      };
    },
    failure: async (message: string) => new VmError(message),
  };
  return { handle: handle as unknown as InstanceHandle, closed: () => closed };
}

test('vm.exec of a command that writes past maxBuffer: rejects with the VmError and ends the session at the limit', async () => {
  const { handle, closed } = floodingHandle(16 * 2 ** 20);
  const vm = new RunningInstance(handle, []);
  await assert.rejects(
    vm.exec(['/usr/bin/yes'], { maxBuffer: 2 ** 20 }),
    (e) => e instanceof VmError && /more than maxBuffer \(1048576 bytes\) to its stdout/.test(e.message),
  );
  assert.equal(closed(), true, 'the session was closed before the command ended (the agent kills it)');
});
