import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { InstanceHandle, StopOptions } from '../instance/start.ts';
import { Vm } from './vm.ts';

/** An instance whose stop fails (a full disk as the run directory is finished), ended by `end()`. */
function failingHandle(failure: Error): {
  handle: InstanceHandle;
  end: () => void;
  stops: StopOptions[];
} {
  let end: () => void = () => undefined;
  const exited = new Promise<void>((resolve) => {
    end = resolve;
  });
  const stops: StopOptions[] = [];
  const handle = {
    instance: 'teardown',
    vm: { hasExited: false },
    state: { phase: 'running', processes: [] },
    stopRequested: new Promise<number>(() => undefined),
    exited,
    stop: async (options: StopOptions) => {
      stops.push(options);
      throw failure;
    },
  };
  return { handle: handle as unknown as InstanceHandle, end, stops };
}

/** The unhandled rejections while `body` runs and the event loop turns a few times. */
async function unhandledDuring(body: () => void): Promise<unknown[]> {
  const seen: unknown[] = [];
  const onUnhandled = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    body();
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
  return seen;
}

for (const trigger of ['the VM ends by itself', 'the signal aborts'] as const) {
  test(`a stop that fails when ${trigger}: no unhandled rejection; stop() and dispose reject with its error, the stop ran once`, async () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const { handle, end, stops } = failingHandle(enospc);
    const controller = new AbortController();
    const vm = new Vm(handle, [], controller.signal);
    const unhandled = await unhandledDuring(() => {
      if (trigger === 'the signal aborts') controller.abort(new Error('stop'));
      else end();
    });
    assert.deepEqual(unhandled, []);
    assert.equal(stops.length, 1);
    assert.equal(stops[0]?.orderly, false);
    assert.equal(stops[0]?.failed, trigger === 'the VM ends by itself');
    await assert.rejects(vm.stop(), (e) => e === enospc);
    await assert.rejects(vm[Symbol.asyncDispose](), (e) => e === enospc);
    assert.equal(stops.length, 1, 'idempotent: the first stop is the only one');
  });
}
