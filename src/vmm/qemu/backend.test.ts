import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { testEnvironment } from '../../../test/fixtures/env.ts';
import type { FakeQemuConfig } from '../../../test/fixtures/fake-qemu.ts';
import { RestoreError, VmError } from '../../errors.ts';
import type { RunningVm, VmSpec } from '../backend.ts';
import { QEMU_FILES, QemuBackend, type QemuTimeouts } from './backend.ts';

const FAKE_QEMU = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../test/fixtures/fake-qemu.ts',
);

interface Fake {
  readonly dir: string;
  readonly runDir: string;
  readonly backend: QemuBackend;
  readonly spec: VmSpec;
  /** The QMP commands the fake QEMU got, in order. */
  commands(): Promise<{ command: string; arguments?: Record<string, unknown> }[]>;
  /** The TMPDIR QEMU ran with. */
  tmpdir(): Promise<string | undefined>;
}

/** The QEMU backend on a fake qemu-system-x86_64 (test/fixtures/fake-qemu.ts) for a disk root. */
async function fake(
  t: { after: (fn: () => Promise<void>) => void },
  config: Omit<FakeQemuConfig, 'log'>,
  timeouts: Partial<QemuTimeouts> = {},
  restore = false,
): Promise<Fake> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-qemu-backend-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const runDir = path.join(dir, 'run');
  await fs.mkdir(runDir);
  const log = path.join(dir, 'fake.log');
  await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...config, log }));
  const wrapper = path.join(dir, 'qemu-system-x86_64');
  await fs.writeFile(
    wrapper,
    `#!/bin/sh\nexec '${process.execPath}' '${FAKE_QEMU}' '${path.join(dir, 'config.json')}' "$@"\n`,
    { mode: 0o755 },
  );
  await fs.writeFile(path.join(dir, 'disk.raw'), 'disk');
  await fs.writeFile(path.join(dir, 'state'), Buffer.alloc(4096, 1));
  const env = testEnvironment(dir, { toolOverrides: { 'qemu-x86_64': wrapper, virtiofsd: '/bin/true' } });
  const spec: VmSpec = {
    arch: 'x86_64',
    accel: 'tcg',
    vcpus: 1,
    memMib: 256,
    kernel: '/k',
    initramfs: '/i',
    guestMode: 'gateway',
    kernelArgs: [],
    rootDir: dir,
    rootMode: 'disk',
    rootDisk: { path: path.join(dir, 'disk.raw'), discardWrites: restore },
    restoreState: restore ? path.join(dir, 'state') : undefined,
    network: { mode: 'none' },
    runDir,
    socketDir: runDir,
    consoleLog: path.join(runDir, 'console.log'),
  };
  const entries = async () =>
    (await fs.readFile(log, 'utf8').catch(() => ''))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  return {
    dir,
    runDir,
    spec,
    backend: new QemuBackend(env, {}, timeouts),
    commands: async () =>
      (await entries()).filter(
        (e) => e.command && e.command !== 'qmp_capabilities' && e.command !== 'query-migrate',
      ),
    tmpdir: async () => (await entries()).find((e) => e.start)?.start.tmpdir,
  };
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(
    () => true,
    () => false,
  );
}

async function stopped(vm: RunningVm): Promise<void> {
  await vm.stop();
}

test('a save whose migration reports completed before its writer finished records the whole state', async (t) => {
  const f = await fake(t, { save: 'early', stateBytes: 3 << 20 });
  const vm = await f.backend.start(f.spec);
  const state = path.join(f.dir, 'snap', 'state');
  await fs.mkdir(path.dirname(state));
  const saved = await vm.saveState?.(state);
  assert.equal(saved?.bytes, 3 << 20);
  assert.equal((await fs.stat(state)).size, 3 << 20);
  assert.deepEqual(await fs.readdir(path.dirname(state)), ['state']);
  const commands = await f.commands();
  assert.deepEqual(
    commands.map((c) => c.command),
    ['stop', 'blockdev-snapshot-sync', 'migrate-set-parameters', 'migrate', 'cont'],
  );
  // The frozen disk's overlay, and QEMU's TMPDIR, are in the run's scratch directory.
  const scratch = path.join(f.runDir, QEMU_FILES.scratchDir);
  assert.equal(commands[1]?.arguments?.['snapshot-file'], path.join(scratch, QEMU_FILES.rootOverlay));
  assert.equal(await f.tmpdir(), scratch);
  assert.ok(await exists(path.join(scratch, QEMU_FILES.rootOverlay)));
  await stopped(vm);
  // Gone with QEMU; the run directory (its logs) stays.
  assert.equal(await exists(scratch), false);
  assert.ok(await exists(path.join(f.runDir, QEMU_FILES.qemuLog)));
});

test('a save that times out mid-migration cancels it and continues the VM; the error says so', async (t) => {
  const f = await fake(t, { save: 'hang' }, { saveMs: 300 });
  const vm = await f.backend.start(f.spec);
  const state = path.join(f.dir, 'state-out');
  await assert.rejects(vm.saveState?.(state) ?? Promise.resolve(), (err: VmError) => {
    assert.ok(err instanceof VmError);
    assert.match(err.message, /state was not saved \(QEMU's migration did not complete within 0.3 s/);
    assert.match(err.message, /the VM was continued$/);
    assert.match(err.hint ?? '', /qemu\.log/);
    return true;
  });
  const names = (await f.commands()).map((c) => c.command);
  assert.deepEqual(names.slice(-2), ['migrate_cancel', 'cont']);
  assert.equal(vm.hasExited, false);
  assert.equal(await exists(state), false);
  assert.equal(await exists(`${state}.partial`), false);
  await stopped(vm);
});

test('a refused step and a QMP command QEMU never answers also end with the VM continued', async (t) => {
  const refused = await fake(t, { save: 'refuse' });
  const vm = await refused.backend.start(refused.spec);
  await assert.rejects(
    vm.saveState?.(path.join(refused.dir, 'x')) ?? Promise.resolve(),
    /migration refused\); the VM was continued/,
  );
  assert.deepEqual((await refused.commands()).map((c) => c.command).slice(-2), ['migrate_cancel', 'cont']);
  await stopped(vm);

  const silent = await fake(t, { silent: ['blockdev-snapshot-sync'] }, { commandMs: 200 });
  const vm2 = await silent.backend.start(silent.spec);
  await assert.rejects(
    vm2.saveState?.(path.join(silent.dir, 'x')) ?? Promise.resolve(),
    /QEMU did not answer the QMP command blockdev-snapshot-sync within 0.2 s\); the VM was continued/,
  );
  assert.equal((await silent.commands()).at(-1)?.command, 'cont');
  await stopped(vm2);
});

test('restores: loaded then continued; a state QEMU cannot load is a RestoreError, and scratch goes', async (t) => {
  const ok = await fake(t, { restore: 'ok' }, {}, true);
  const vm = await ok.backend.start(ok.spec);
  assert.deepEqual(
    (await ok.commands()).map((c) => c.command),
    ['cont'],
  );
  await stopped(vm);

  for (const restore of ['fail', 'exit'] as const) {
    const bad = await fake(t, { restore }, {}, true);
    await assert.rejects(bad.backend.start(bad.spec), (err: unknown) => {
      assert.ok(err instanceof RestoreError, `${restore}: ${String(err)}`);
      assert.match(err.message, /QEMU could not load the saved state/);
      return true;
    });
    assert.equal(await exists(path.join(bad.runDir, QEMU_FILES.scratchDir)), false);
  }
});
