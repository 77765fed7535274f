import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { HostError } from '../errors.ts';
import { type DirRules, ensurePrivateDir } from './trust.ts';

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0 ? false : 'needs root (entries owned by nobody are made with chown)';

async function openDir(t: TestContext, mode: number): Promise<string> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-trust-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const dir = path.join(base, 'instance');
  await fs.mkdir(dir);
  await fs.chmod(dir, mode);
  return dir;
}

function rules(warnings: string[], extra: Partial<DirRules> = {}): DirRules {
  return { policy: 'tighten', openBits: 0o077, warn: (m) => warnings.push(m), fix: 'remove it', ...extra };
}

const modeOf = async (p: string) => (await fs.stat(p)).mode & 0o7777;

test('tightening a directory that was open: entries of ours are kept, the mode becomes 0700', async (t) => {
  const dir = await openDir(t, 0o777);
  await fs.mkdir(path.join(dir, 'rootfs'));
  await fs.writeFile(path.join(dir, 'api-port'), '1234\n');
  const warnings: string[] = [];
  await ensurePrivateDir(dir, rules(warnings, { checkInside: ['rootfs'] }));
  assert.equal(await modeOf(dir), 0o700);
  assert.match(warnings[0] ?? '', /was mode 0777, open to other users: set it to 0700/);
});

test("tightening a directory that was writable by others refuses another user's entry, and stays refused", {
  skip: asRoot,
}, async (t) => {
  const dir = await openDir(t, 0o777);
  const planted = path.join(dir, 'api-port');
  await fs.writeFile(planted, '1\n');
  await fs.chown(planted, NOBODY, NOBODY);
  const warnings: string[] = [];
  const fix = (entry: string) => `rm -rf ${entry}`;
  for (let i = 0; i < 2; i++) {
    await assert.rejects(ensurePrivateDir(dir, rules(warnings, { foreignFix: fix })), (err: unknown) => {
      assert.ok(err instanceof HostError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `refusing to use ${dir}: it was open to other users \\(mode 0777\\), and ${planted} in it belongs to uid ${NOBODY}`,
        ),
      );
      assert.equal(err.hint, `rm -rf ${planted}`);
      return true;
    });
    // Left as it was: the next start looks again instead of trusting a 0700 directory.
    assert.equal(await modeOf(dir), 0o777);
  }
  assert.deepEqual(warnings, []);
});

test("an entry of another user inside a checked child (the instance's rootfs) is refused too", {
  skip: asRoot,
}, async (t) => {
  const dir = await openDir(t, 0o757);
  await fs.mkdir(path.join(dir, 'rootfs', 'etc'), { recursive: true });
  await fs.chown(path.join(dir, 'rootfs', 'etc'), NOBODY, NOBODY);
  await assert.rejects(
    ensurePrivateDir(dir, rules([], { checkInside: ['rootfs'] })),
    new RegExp(`${dir}/rootfs/etc in it belongs to uid ${NOBODY}`),
  );
  // Not named in checkInside: only the direct children are looked at.
  await ensurePrivateDir(dir, rules([]));
  assert.equal(await modeOf(dir), 0o700);
});

test('a directory that was only readable by others is tightened without looking at owners', {
  skip: asRoot,
}, async (t) => {
  const dir = await openDir(t, 0o755);
  const theirs = path.join(dir, 'x');
  await fs.writeFile(theirs, '');
  await fs.chown(theirs, NOBODY, NOBODY);
  const warnings: string[] = [];
  await ensurePrivateDir(dir, rules(warnings));
  assert.equal(await modeOf(dir), 0o700);
  assert.equal(warnings.length, 1);
});
