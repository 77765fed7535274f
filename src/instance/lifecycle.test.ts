import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import {
  type CleanupContext,
  type InstanceCleanup,
  PRESETS_FILE,
  type ResetContext,
  readPresetRecord,
  recordPreset,
} from './cleanup.ts';
import { deleteInstance, resetInstance } from './lifecycle.ts';
import { INSTANCE_LOCK, readLockHolder, takeInstanceLock } from './lock.ts';
import { instanceDir } from './runs.ts';

function env(t: { after: (fn: () => void) => void }): HostEnvironment {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-lifecycle-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  return testEnvironment(base, { dataDir: path.join(base, 'data'), runtimeDir: path.join(base, 'rt') });
}

/** An instance directory as a stopped instance leaves it (0700, a file inside). */
function instance(e: HostEnvironment, name: string): string {
  const dir = instanceDir(e, name);
  fs.mkdirSync(path.join(dir, 'logs'), { recursive: true, mode: 0o700 });
  fs.chmodSync(path.dirname(dir), 0o700);
  fs.writeFileSync(path.join(dir, 'logs', 'console.log'), 'booted\n');
  return dir;
}

interface Call {
  readonly preset: string;
  readonly hook: 'delete' | 'reset';
  /** What the hook saw when it ran. */
  readonly dirThere: boolean;
  readonly lockPurpose: string | undefined;
  readonly rootAt?: string | undefined;
}

/** A fake preset's cleanup that writes down each call and what it saw, and may fail. */
function fake(preset: string, calls: Call[], fail?: Error): InstanceCleanup {
  const seen = async (hook: Call['hook'], ctx: CleanupContext, rootAt?: string) => {
    calls.push({
      preset,
      hook,
      dirThere: fs.existsSync(ctx.instanceDir),
      lockPurpose: (await readLockHolder(ctx.instanceDir))?.purpose,
      rootAt,
    });
    if (fail) throw fail;
  };
  return {
    preset,
    async onDelete(ctx) {
      await seen('delete', ctx);
      ctx.warn(`${preset} warns`);
      return { removed: [`/${preset}/a`, `/${preset}/b`], takenOut: [`${preset}: an entry`] };
    },
    async onReset(ctx: ResetContext) {
      await seen('reset', ctx, ctx.root.root);
      return { removed: [`/${preset}/r`], takenOut: [`${preset}: reset entry`] };
    },
  };
}

test('delete: stop, lock, the recorded presets’ hooks in the order given, then the directory; removed lists it first', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, 'beta');
  await recordPreset(dir, 'alpha');
  await recordPreset(dir, 'alpha'); // once
  assert.deepEqual(await readPresetRecord(dir), { kind: 'ok', presets: ['beta', 'alpha'] });
  const calls: Call[] = [];
  const warnings: string[] = [];
  const result = await deleteInstance(e, 'gw', {
    timeoutMs: 1000,
    cleanups: [fake('alpha', calls), fake('unused', calls), fake('beta', calls)],
    warn: (m) => warnings.push(m),
  });
  // The list's order, not the record's; a preset the record does not name is not run.
  assert.deepEqual(
    calls.map((c) => [c.preset, c.hook, c.dirThere, c.lockPurpose]),
    [
      ['alpha', 'delete', true, 'deleting the instance'],
      ['beta', 'delete', true, 'deleting the instance'],
    ],
  );
  assert.deepEqual(result, {
    stopped: false,
    removed: [dir, '/alpha/a', '/alpha/b', 'alpha: an entry', '/beta/a', '/beta/b', 'beta: an entry'],
  });
  assert.deepEqual(warnings, ['alpha warns', 'beta warns']);
  assert.equal(fs.existsSync(dir), false);
});

test('delete of an instance no preset with a cleanup booted (no record): no hook runs, the directory goes', async (t) => {
  const e = env(t);
  const dir = instance(e, 'web');
  const calls: Call[] = [];
  const result = await deleteInstance(e, 'web', { timeoutMs: 1000, cleanups: [fake('gateway', calls)] });
  assert.deepEqual(calls, []);
  assert.deepEqual(result.removed, [dir]);
  assert.equal(fs.existsSync(dir), false);
});

test('delete with a broken presets record (symlink, not JSON, bad name): every hook runs, with a warning naming the file', async (t) => {
  const plants: Record<string, (file: string) => void> = {
    symlink: (f) => fs.symlinkSync('/etc/passwd', f),
    'not JSON': (f) => fs.writeFileSync(f, '{"version":1,"pres', { mode: 0o600 }),
    'a bad preset name': (f) =>
      fs.writeFileSync(f, JSON.stringify({ version: 1, presets: ['../../etc'] }), { mode: 0o600 }),
    'group-writable': (f) => {
      fs.writeFileSync(f, JSON.stringify({ version: 1, presets: [] }), { mode: 0o600 });
      fs.chmodSync(f, 0o620);
    },
  };
  for (const [shape, plant] of Object.entries(plants)) {
    const e = env(t);
    const dir = instance(e, 'gw');
    const file = path.join(dir, PRESETS_FILE);
    plant(file);
    const calls: Call[] = [];
    const warnings: string[] = [];
    await deleteInstance(e, 'gw', {
      timeoutMs: 1000,
      cleanups: [fake('a', calls), fake('b', calls)],
      warn: (m) => warnings.push(m),
    });
    assert.deepEqual(
      calls.map((c) => c.preset),
      ['a', 'b'],
      shape,
    );
    assert.ok(
      warnings[0]?.startsWith(`${file} `) && warnings[0].includes('every preset'),
      `${shape}: ${warnings}`,
    );
    assert.equal(fs.existsSync(dir), false, shape);
  }
  // The symlink's target was never touched.
  assert.ok(fs.statSync('/etc/passwd').size > 0);
});

test('delete: a recorded preset unknown to this openshell-vm is named in a warning, the known ones run', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, 'future');
  await recordPreset(dir, 'gateway');
  const calls: Call[] = [];
  const warnings: string[] = [];
  await deleteInstance(e, 'gw', {
    timeoutMs: 1000,
    cleanups: [fake('gateway', calls)],
    warn: (m) => warnings.push(m),
  });
  assert.deepEqual(
    calls.map((c) => c.preset),
    ['gateway'],
  );
  assert.match(warnings[0] ?? '', /names preset 'future', unknown to this openshell-vm/);
});

test('delete: a failing hook does not stop the others; the directory (and its records) is kept, the lock released, the error names it', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, 'a');
  await recordPreset(dir, 'b');
  const calls: Call[] = [];
  const boom = new HostError('cannot remove /x: EACCES', { hint: 'chmod u+w /x' });
  await assert.rejects(
    deleteInstance(e, 'gw', { timeoutMs: 1000, cleanups: [fake('a', calls, boom), fake('b', calls)] }),
    (err: unknown) => {
      assert.ok(err instanceof HostError);
      assert.match(
        err.message,
        /could not delete instance 'gw': the a cleanup failed: cannot remove \/x: EACCES/,
      );
      assert.match(err.message, /the other cleanups removed: \/b\/a, \/b\/b, b: an entry/);
      assert.match(err.hint ?? '', /chmod u\+w \/x; then run openshell-vm delete gw again/);
      assert.equal(err.cause, boom);
      return true;
    },
  );
  assert.deepEqual(
    calls.map((c) => c.preset),
    ['a', 'b'],
  );
  assert.ok(fs.existsSync(path.join(dir, PRESETS_FILE)), 'a second delete still knows the presets');
  assert.equal(fs.existsSync(path.join(dir, INSTANCE_LOCK)), false);
  // The retry, with the failure fixed, finishes the job.
  await deleteInstance(e, 'gw', { timeoutMs: 1000, cleanups: [fake('a', []), fake('b', [])] });
  assert.equal(fs.existsSync(dir), false);
});

test('delete of a busy instance (another openshell-vm holds its lock): refused, no hook run, nothing removed', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, 'gateway');
  // This process holds it "building the rootfs", as prepare-rootfs would.
  const release = await takeInstanceLock(dir, 'gw', 'building the rootfs');
  t.after(release);
  const calls: Call[] = [];
  await assert.rejects(
    deleteInstance(e, 'gw', { timeoutMs: 1000, cleanups: [fake('gateway', calls)] }),
    /instance 'gw' is busy: openshell-vm \(pid \d+\) is building the rootfs/,
  );
  assert.deepEqual(calls, []);
  assert.ok(fs.existsSync(path.join(dir, 'logs', 'console.log')));
});

test('delete of an instance directory that is not ours alone (0777): refused, no hook run, nothing removed', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  await recordPreset(dir, 'gateway');
  fs.chmodSync(dir, 0o777);
  const calls: Call[] = [];
  await assert.rejects(
    deleteInstance(e, 'gw', { timeoutMs: 1000, cleanups: [fake('gateway', calls)] }),
    /refusing to touch instance 'gw'/,
  );
  assert.deepEqual(calls, []);
  assert.ok(fs.existsSync(path.join(dir, 'logs', 'console.log')));
});

test('delete of a missing instance: the error names it, with list as the hint; no hook runs', async (t) => {
  const e = env(t);
  const calls: Call[] = [];
  await assert.rejects(
    deleteInstance(e, 'nope', { timeoutMs: 1000, cleanups: [fake('gateway', calls)] }),
    (err: unknown) =>
      err instanceof HostError &&
      /no instance 'nope'/.test(err.message) &&
      err.hint === 'see: openshell-vm list',
  );
  assert.deepEqual(calls, []);
});

test('reset: lock held, every hook (no record needed) in the order given with the rootfs as its GuestRoot; the directory stays', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(rootfs, { mode: 0o755 });
  const calls: Call[] = [];
  const out = await resetInstance(e, 'gw', {
    rootfs,
    refusedHint: 'rebuild it',
    cleanups: [fake('b', calls), fake('a', calls)],
  });
  assert.deepEqual(calls, [
    { preset: 'b', hook: 'reset', dirThere: true, lockPurpose: 'resetting the instance', rootAt: rootfs },
    { preset: 'a', hook: 'reset', dirThere: true, lockPurpose: 'resetting the instance', rootAt: rootfs },
  ]);
  assert.deepEqual(out, { removed: ['/b/r', '/a/r'], takenOut: ['b: reset entry', 'a: reset entry'] });
  assert.ok(fs.existsSync(path.join(dir, 'logs', 'console.log')));
  assert.equal(fs.existsSync(path.join(dir, INSTANCE_LOCK)), false);
});

test('reset: the first failing hook ends it with its own error (the rest do not run), the lock is released', async (t) => {
  const e = env(t);
  instance(e, 'gw');
  const calls: Call[] = [];
  const boom = new HostError('var is a symlink');
  await assert.rejects(
    resetInstance(e, 'gw', {
      rootfs: path.join(instanceDir(e, 'gw'), 'rootfs'),
      refusedHint: 'rebuild it',
      cleanups: [fake('a', calls, boom), fake('b', calls)],
    }),
    (err: unknown) => err === boom,
  );
  assert.deepEqual(
    calls.map((c) => c.preset),
    ['a'],
  );
  assert.equal(fs.existsSync(path.join(instanceDir(e, 'gw'), INSTANCE_LOCK)), false);
});

test('reset of a running (locked) instance: the lock error, no hook run', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  const release = await takeInstanceLock(dir, 'gw', 'running the gateway');
  t.after(release);
  const calls: Call[] = [];
  await assert.rejects(
    resetInstance(e, 'gw', {
      rootfs: path.join(dir, 'rootfs'),
      refusedHint: 'x',
      cleanups: [fake('a', calls)],
    }),
    /instance 'gw' is in use: openshell-vm \(pid \d+\) is running the gateway/,
  );
  assert.deepEqual(calls, []);
});

test('the GuestRoot a reset hook gets: a planted var -> host dir stays inside the root, a planted file symlink is refused with the caller’s hint', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  const rootfs = path.join(dir, 'rootfs');
  const outside = path.join(path.dirname(dir), 'outside');
  fs.mkdirSync(path.join(outside, 'lib', 'cni'), { recursive: true });
  fs.mkdirSync(path.join(rootfs, 'etc'), { recursive: true });
  fs.symlinkSync(outside, path.join(rootfs, 'var'));
  fs.symlinkSync('/etc/passwd', path.join(rootfs, 'etc', 'k3s.yaml'));
  const wiper: InstanceCleanup = {
    preset: 'wiper',
    async onReset(ctx) {
      await ctx.root.remove('var/lib/cni');
      await ctx.root.readText('etc/k3s.yaml');
      return { removed: [], takenOut: [] };
    },
  };
  await assert.rejects(
    resetInstance(e, 'gw', { rootfs, refusedHint: 'rebuild the rootfs: HINT', cleanups: [wiper] }),
    (err: unknown) =>
      err instanceof HostError &&
      /k3s\.yaml is a symlink/.test(err.message) &&
      err.hint === 'rebuild the rootfs: HINT',
  );
  assert.ok(fs.existsSync(path.join(outside, 'lib', 'cni')), 'nothing outside the rootfs removed');
});

test('recordPreset replaces a broken record and refuses a name that is not one', async (t) => {
  const e = env(t);
  const dir = instance(e, 'gw');
  fs.writeFileSync(path.join(dir, PRESETS_FILE), 'garbage', { mode: 0o600 });
  await recordPreset(dir, 'gateway');
  assert.deepEqual(await readPresetRecord(dir), { kind: 'ok', presets: ['gateway'] });
  assert.equal(fs.statSync(path.join(dir, PRESETS_FILE)).mode & 0o777, 0o600);
  await assert.rejects(recordPreset(dir, '../x'), /not a preset name/);
});
