// Hostile: a `run` as guest root against the cached default rootfs that every later run boots, and
// a cached rootfs changed on disk. Real microVMs under QEMU (TCG here); run with
// flock /tmp/ovm-vm.lock. The artifact cache is private to this file (the provisioned kernel,
// agent and Node.js linked in from the shared one), so the on-disk tampering below never reaches
// another test's cache.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type CliRun, sandbox } from '../e2e/harness.ts';

const box = sandbox();
const sharedCache =
  process.env.OPENSHELL_VM_CACHE_DIR ||
  path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'openshell-vm');
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-hostile-cache-'));
for (const shared of ['host', 'agent', 'node']) {
  fs.symlinkSync(path.join(sharedCache, shared), path.join(cacheDir, shared));
}
after(() => {
  box.cleanup();
  fs.rmSync(cacheDir, { recursive: true, force: true });
});
const LIGHT = ['-q', '--vcpus', '1', '--mem', '256', '--net', 'none'];

async function run(script: string): Promise<CliRun> {
  const result = await box.run([...LIGHT, 'run', '--', '/bin/sh', '-c', script], {
    env: { OPENSHELL_VM_CACHE_DIR: cacheDir },
  });
  await box.assertClean(result);
  return result;
}

/** The one cached build of the default rootfs (its directory is named by its build key). */
function cachedRootfs(): string {
  const archDir = path.join(cacheDir, 'artifacts', os.arch() === 'arm64' ? 'arm64' : 'amd64');
  const builds = fs.readdirSync(archDir).filter((d) => !d.includes('.'));
  assert.equal(builds.length, 1, `one build in ${archDir}: ${builds.join(', ')}`);
  return path.join(archDir, builds[0] as string, 'rootfs');
}

/** Every entry under `dir` (type, mode, owner, content or link target), hashed; nothing followed. */
function treeHash(dir: string): string {
  const hash = createHash('sha256');
  const walk = (rel: string) => {
    const full = path.join(dir, rel);
    const st = fs.lstatSync(full);
    hash.update(`${rel}\0${st.mode}\0${st.uid}\0${st.gid}\0${st.nlink}\0${st.size}\0`);
    if (st.isSymbolicLink()) hash.update(fs.readlinkSync(full));
    else if (st.isFile()) hash.update(fs.readFileSync(full));
    else if (st.isDirectory()) for (const name of fs.readdirSync(full).sort()) walk(path.join(rel, name));
    hash.update('\0');
  };
  walk('.');
  return hash.digest('hex');
}

/** Setuid/setgid files and device nodes anywhere under `dir`. */
function privileged(dir: string): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    const st = fs.lstatSync(full);
    if (st.mode & 0o6000 || st.isBlockDevice() || st.isCharacterDevice()) found.push(full);
  }
  return found;
}

let original = '';
before(async () => {
  const warm = await run('true');
  assert.equal(warm.code, 0, warm.stderr);
  original = treeHash(cachedRootfs());
  assert.deepEqual(privileged(cachedRootfs()), []);
});

/** The cached rootfs after a run: byte for byte as built, and nothing setuid in it. */
function assertUntouched(): void {
  assert.equal(treeHash(cachedRootfs()), original, 'the cached default rootfs changed');
  assert.deepEqual(privileged(path.join(cacheDir, 'artifacts')), [], 'setuid files or device nodes appeared');
}

// What guest root tries against the share: a setuid copy of busybox, a changed /etc/passwd, a new
// directory, a device node. `|| true` everywhere: the attack must not depend on any step working.
const plant = (root: string) =>
  [
    `cp /bin/busybox ${root}/bin/ovm-planted && chmod 4755 ${root}/bin/ovm-planted`,
    `echo 'pwned::0:0::/:/bin/sh' >> ${root}/etc/passwd`,
    `mkdir ${root}/ovm-planted-dir && chmod 0777 ${root}/ovm-planted-dir`,
    `mknod ${root}/ovm-disk b 8 0`,
  ]
    .map((step) => `{ ${step}; } 2>/dev/null || true`)
    .join('\n');

// The run's command is an agent session: the guest has no handoff directory any more, so in exec
// mode nothing of the host is mounted in it at all (before: the share at /.ovm-host on 5ac75d2,
// then the handoff dir at /.ovm/run).
test('the guest has no mount of the host share at all: no /.ovm-host, no handoff dir, no virtiofs mount; planting where they were leaves the cached rootfs as built', async () => {
  const r = await run(
    [
      // What 5ac75d2 left mounted read-write in every run: the share itself, at /.ovm-host.
      'if [ -e /.ovm-host ]; then echo "host-mount: present"; else echo "host-mount: absent"; fi',
      // Every virtiofs mount the guest has: none may remain (the initramfs dropped the share).
      'awk \'$3 == "virtiofs" { print "virtiofs-mount: " $2 }\' /proc/mounts',
      // Every mount point at or under /.ovm (the handoff dir was one).
      'awk \'$2 ~ /^\\/\\.ovm/ { print "ovm-mount: " $2 }\' /proc/mounts',
      plant('/.ovm-host'),
      plant('/.ovm/run/..'),
      'exit 0',
    ].join('\n'),
  );
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout.toString();
  assert.match(out, /^host-mount: absent$/m, out);
  assert.doesNotMatch(out, /^virtiofs-mount: /m, `the guest still has a mount of the share:\n${out}`);
  assert.doesNotMatch(out, /^ovm-mount: /m, `something is mounted under /.ovm:\n${out}`);
  assertUntouched();
});

test('guest root remounting the share read-write, or mounting the virtio-fs tag again, cannot change the cached rootfs', async () => {
  const r = await run(
    [
      'mount -o remount,rw /.ovm-host 2>/dev/null || true',
      plant('/.ovm-host'),
      'mount -o remount,rw /.ovm/run 2>/dev/null || true',
      plant('/.ovm/run/..'),
      'mkdir -p /mnt/again && mount -t virtiofs ovmroot /mnt/again && echo mounted',
      'mount -o remount,rw /mnt/again 2>/dev/null || true',
      plant('/mnt/again'),
      plant('/mnt/again/.ovm/run/..'),
      // A hard link from the handoff directory to a rootfs file would make it writable there.
      'ln /mnt/again/bin/busybox /mnt/again/.ovm/run/ovm-link 2>/dev/null && chmod 4755 /mnt/again/.ovm/run/ovm-link',
      'exit 0',
    ].join('\n'),
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout.toString(), /mounted/, 'the tag can be mounted again (the attack ran)');
  assertUntouched();
});

test('writes to / of the overlay stay in the run: the guest sees them, the next run and the cached rootfs do not', async () => {
  const r = await run(
    `${plant('')}\nrm -f /bin/ls\necho x > /etc/ovm-mark\ncat /etc/ovm-mark; busybox ls -l /bin/ovm-planted`,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout.toString(), /^x\n-rwsr-xr-x .*\/bin\/ovm-planted\n$/);
  const next = await run('ls /bin/ls; ls /etc/ovm-mark /bin/ovm-planted 2>&1; exit 0');
  assert.match(next.stdout.toString(), /^\/bin\/ls\n.*No such file/);
  assertUntouched();
});

test('a file of the cached rootfs changed on disk is detected before the next run, which boots a rebuilt one', async () => {
  fs.appendFileSync(path.join(cachedRootfs(), 'etc/passwd'), 'pwned::0:0::/:/bin/sh\n');
  const r = await run('cat /etc/passwd');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'root:x:0:0:root:/root:/bin/sh\n');
  assert.match(r.stderr, /failed their integrity check \(.*etc\/passwd has other content.*\): rebuilt them/);
  assertUntouched();
});

test('a setuid file added to the cached rootfs on disk is detected and removed before the next run', async () => {
  const planted = path.join(cachedRootfs(), 'bin/ovm-suid');
  fs.copyFileSync(path.join(cachedRootfs(), 'bin/busybox'), planted);
  fs.chmodSync(planted, 0o4755);
  const r = await run('ls -l /bin/ovm-suid 2>&1; exit 0');
  assert.match(r.stdout.toString(), /No such file/);
  assert.match(r.stderr, /unexpected file bin\/ovm-suid \(mode 4755\)/);
  assert.ok(!fs.existsSync(planted));
  assertUntouched();
});

test('a directory of the cached rootfs made world-writable on disk is detected before the next run', async () => {
  fs.chmodSync(path.join(cachedRootfs(), 'etc'), 0o777);
  const r = await run('stat -c %a /etc');
  assert.equal(r.stdout.toString(), '755\n');
  assert.match(r.stderr, /etc has mode 0777, expected 0755/);
  assertUntouched();
});
