import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventSink, ON_EVENT_WARNING } from './events.ts';

type Event = { readonly type: string; readonly message?: string };

/** The process warnings emitted while `body` runs and the event loop turns a few times. */
async function warningsDuring(body: () => void): Promise<Error[]> {
  const seen: Error[] = [];
  const onWarning = (w: Error) => seen.push(w);
  process.on('warning', onWarning);
  try {
    body();
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off('warning', onWarning);
  }
  return seen;
}

test('a throwing onEvent never reaches the lifecycle: every event still delivered, the first throw a process warning with it as cause', async () => {
  const delivered: string[] = [];
  const bug = new Error('a bug in the caller');
  const sink = eventSink<Event>((event) => {
    delivered.push(event.type);
    throw bug;
  });
  const warnings = await warningsDuring(() => {
    assert.doesNotThrow(() => sink.emit({ type: 'process' }));
    assert.doesNotThrow(() => sink.progress('booting'));
    assert.doesNotThrow(() => sink.warn('slow'));
    assert.doesNotThrow(() => sink.event({ type: 'stage' }));
  });
  assert.deepEqual(delivered, ['process', 'progress', 'warning', 'stage']);
  const ours = warnings.filter((w) => w.name === ON_EVENT_WARNING);
  assert.equal(ours.length, 1, 'reported once');
  assert.match(ours[0]?.message ?? '', /onEvent threw on a 'process' event \(a bug in the caller\)/);
  assert.equal(ours[0]?.cause, bug);
});

test('an async onEvent that rejects: no unhandled rejection, one process warning', async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    const sink = eventSink<Event>(async () => {
      throw new Error('async bug');
    });
    const warnings = await warningsDuring(() => {
      sink.emit({ type: 'stage' });
      sink.emit({ type: 'stage' });
    });
    assert.deepEqual(unhandled, []);
    assert.deepEqual(
      warnings.filter((w) => w.name === ON_EVENT_WARNING).map((w) => w.message),
      [
        "onEvent threw on a 'stage' event (async bug); openshell-vm went on without it (later throws are not reported)",
      ],
    );
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test('without onEvent nothing is sent and nothing warned', async () => {
  const sink = eventSink<Event>(undefined);
  assert.deepEqual(await warningsDuring(() => sink.emit({ type: 'stage' })), []);
});
