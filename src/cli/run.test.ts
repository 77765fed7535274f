import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { HostError } from '../errors.ts';
import { parseHandoff } from './run.ts';

// A detached run's CLI prepares the guest artifacts and hands the result to the supervisor, which
// stays resident for the instance's life: the supervisor must neither load nor run that code.

const DETACH = pathToFileURL(path.join(import.meta.dirname, 'detach.ts')).href;
const RUN = path.join(import.meta.dirname, 'run.ts');

const GOOD = {
  prepared: {
    artifacts: { kernel: '/k/vmlinuz', initramfs: '/a/initramfs.cpio.gz', rootfs: '/a/rootfs' },
  },
  events: [
    { type: 'warning', message: 'a note', elapsedMs: 3 },
    { type: 'stage', stage: 'artifacts', message: 'guest artifacts cached', elapsedMs: 5 },
  ],
};

test('the handoff is checked: what the CLI sends passes, anything else is a HostError naming the field', () => {
  assert.equal(parseHandoff(undefined), undefined, 'no handoff (--supervise by hand): prepare here');
  assert.deepEqual(parseHandoff(GOOD), GOOD);
  const withRootfs = {
    ...GOOD,
    prepared: {
      ...GOOD.prepared,
      rootfs: '/r',
      artifacts: { ...GOOD.prepared.artifacts, modulesRelease: '6.12' },
    },
  };
  assert.deepEqual(parseHandoff(withRootfs), withRootfs);
  for (const bad of [
    { ...GOOD, prepared: { artifacts: { kernel: 1, initramfs: '/i', rootfs: '/r' } } },
    { ...GOOD, prepared: { ...GOOD.prepared, extra: true } },
    { ...GOOD, events: [{ type: 'stage', stage: 'boot', message: 'x', elapsedMs: 1 }] },
    { prepared: GOOD.prepared },
    'text',
  ]) {
    assert.throws(
      () => parseHandoff(bad),
      (err: unknown) => err instanceof HostError && /handoff/.test(err.message) && Boolean(err.hint),
      JSON.stringify(bad),
    );
  }
});

/** A child that waits for its handoff (receiveHandoff) and prints what it got, or its error. */
function receiver(ipc: boolean) {
  const script = `import { receiveHandoff } from ${JSON.stringify(DETACH)};
receiveHandoff().then(
  (v) => process.stdout.write(JSON.stringify({ value: v ?? null })),
  (e) => process.stdout.write(JSON.stringify({ error: e.name + ': ' + e.message })),
).finally(() => process.connected && process.disconnect());`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ipc ? ['ignore', 'pipe', 'inherit', 'ipc'] : ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  const result = once(child, 'exit').then(() => JSON.parse(out) as { value?: unknown; error?: string });
  return { child, result };
}

test('receiveHandoff: the value sent over the IPC channel; a starter that goes away is a HostError', async () => {
  const sent = receiver(true);
  sent.child.send({ type: 'other' });
  sent.child.send({ type: 'handoff', value: GOOD });
  assert.deepEqual((await sent.result).value, GOOD, 'other messages are passed over');

  const gone = receiver(true);
  gone.child.disconnect();
  assert.match((await gone.result).error ?? '', /^HostError: .*went away/);

  const none = receiver(false);
  assert.equal((await none.result).value, null, 'no IPC channel: nothing to wait for');
});

test("the supervisor's path (src/cli/run.ts) does not load the guest artifact code nor node:zlib", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-run-test-'));
  try {
    const out = path.join(dir, 'loaded.txt');
    const hook = path.join(dir, 'hook.mjs');
    fs.writeFileSync(
      hook,
      `import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const urls = new Set();
registerHooks({ load(url, context, next) { urls.add(url); return next(url, context); } });
process.on('exit', () => writeFileSync(${JSON.stringify(out)}, [...urls, ...process.moduleLoadList].join('\\n')));
`,
    );
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        hook,
        '--input-type=module',
        '-e',
        `await import(${JSON.stringify(pathToFileURL(RUN).href)})`,
      ],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const loaded = fs.readFileSync(out, 'utf8').split('\n');
    assert.ok(
      loaded.some((u) => u.endsWith('/src/presets/run.ts')),
      'the hook saw the run path load',
    );
    for (const heavy of [
      '/src/guest/artifacts.ts',
      '/src/guest/initramfs.ts',
      '/src/guest/tree.ts',
      '/src/rootfs/record.ts',
    ]) {
      assert.ok(
        !loaded.some((u) => u.endsWith(heavy)),
        `${heavy} is loaded only where the guest is prepared`,
      );
    }
    assert.ok(!loaded.includes('NativeModule zlib'), 'node:zlib (the initramfs builder) is not loaded');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
