import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { HostError } from '../errors.ts';
import { acceptRunHandoff, RUN_HANDOFF_FORMAT, runHandoffBuild } from './run-handoff.ts';
import { parseRunHandoff } from './run-handoff-schema.ts';

// A detached run's CLI validates the options, chooses the VMM and prepares the guest artifacts, and
// hands the whole run to the supervisor, which stays resident for the instance's life: the
// supervisor must neither load nor run that code (src/cli/startup.test.ts checks what it loads).

const DETACH = pathToFileURL(path.join(import.meta.dirname, 'detach.ts')).href;
const RUN = path.join(import.meta.dirname, 'run.ts');

const PLAN = {
  arch: 'x86_64',
  accel: { accel: 'tcg', reason: 'no /dev/kvm', forced: false },
  vcpus: 1,
  memMib: 256,
  instance: 'one',
  bootTimeoutMs: 180_000,
  keepLogs: false,
  network: 'gvproxy',
  forwards: [{ hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80 }],
  detached: true,
  prepared: {
    artifacts: { kernel: '/k/vmlinuz', initramfs: '/a/initramfs.cpio.gz', rootfs: '/a/rootfs' },
  },
  request: { exec: 'sleep', args: ['600'], env: [['PATH', '/bin']], workdir: '/' },
};

const GOOD = {
  format: RUN_HANDOFF_FORMAT,
  build: runHandoffBuild(),
  backend: 'qemu',
  plan: PLAN,
  events: [
    { type: 'warning', message: 'a note', elapsedMs: 3 },
    { type: 'stage', stage: 'artifacts', message: 'guest artifacts cached', elapsedMs: 5 },
  ],
  reporter: { quiet: true, debug: false, eventsFile: '/tmp/e.ndjson', recorded: '{"type":"progress"}\n' },
  readyText: "Started: 'sleep 600'\n",
};

test('the handoff is checked: what the CLI sends passes, anything else is a HostError naming the field', () => {
  assert.deepEqual(parseRunHandoff(GOOD), GOOD);
  const withRootfs = {
    ...GOOD,
    plan: {
      ...PLAN,
      rootfs: '/r',
      kernel: { kind: 'file', path: '/k' },
      prepared: { rootfs: '/r', artifacts: { ...PLAN.prepared.artifacts, modulesRelease: '6.12' } },
    },
  };
  assert.deepEqual(parseRunHandoff(withRootfs), withRootfs);
  for (const bad of [
    { ...GOOD, plan: { ...PLAN, prepared: { artifacts: { kernel: 1, initramfs: '/i', rootfs: '/r' } } } },
    { ...GOOD, plan: { ...PLAN, prepared: { ...PLAN.prepared, extra: true } } },
    { ...GOOD, plan: { ...PLAN, detached: false } },
    { ...GOOD, plan: { ...PLAN, accel: { ...PLAN.accel, accel: 'xen' } } },
    { ...GOOD, events: [{ type: 'stage', stage: 'boot', message: 'x', elapsedMs: 1 }] },
    { ...GOOD, format: RUN_HANDOFF_FORMAT + 1 },
    { ...GOOD, backend: 'firecracker' },
    { prepared: PLAN.prepared, events: [] },
    undefined,
    'text',
  ]) {
    assert.throws(
      () => parseRunHandoff(bad),
      (err: unknown) => err instanceof HostError && /handoff/.test(err.message) && Boolean(err.hint),
      JSON.stringify(bad),
    );
  }
});

test("the supervisor accepts its starting command's handoff, and refuses another build's or format's", () => {
  assert.deepEqual(acceptRunHandoff(GOOD), GOOD);
  for (const bad of [
    { ...GOOD, format: RUN_HANDOFF_FORMAT + 1 },
    { ...GOOD, build: '0.0.0-other' },
    { ...GOOD, backend: 'firecracker' },
    { ...GOOD, plan: { ...PLAN, detached: false } },
    { ...GOOD, plan: undefined },
    [GOOD],
    undefined,
    'text',
  ]) {
    assert.throws(
      () => acceptRunHandoff(bad),
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

test("run's module (the starting command's path) does not load the guest artifact code nor node:zlib", () => {
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
