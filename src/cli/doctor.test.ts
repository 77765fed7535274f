import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readEnvironment } from '../config/environment.ts';
import type { DoctorCheck } from '../host/doctor-check.ts';
import { readFragment } from '../kernel/requirements.ts';

// `openshell-vm doctor --json` run for real on this host: gvproxy as provisioning put it (and a
// fake one too old for the transport), and libkrunfw through `runtime --json`: Debian's
// libkrunfw5 (fetched by provisioning), with and without a kernel.config beside it, and a file
// that is not a library. The macOS-only parts are unit-tested in src/host/doctor-libkrun.test.ts
// and src/vmm/libkrun/macos.test.ts.

const MAIN = path.join(import.meta.dirname, 'main.ts');

function doctor(env: Record<string, string> = {}): {
  code: number | null;
  ok: boolean;
  checks: DoctorCheck[];
} {
  const r = spawnSync(process.execPath, [MAIN, 'doctor', '--json'], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  const report = JSON.parse(r.stdout) as { ok: boolean; checks: DoctorCheck[] };
  return { code: r.status, ...report };
}

const byName = (checks: readonly DoctorCheck[], name: string): DoctorCheck => {
  const c = checks.find((x) => x.name === name);
  assert.ok(c, `doctor has a "${name}" check (${checks.map((x) => x.name).join(', ')})`);
  return c;
};

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-doctor-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('every check is {name, ok, status, detail, fix?}, ok exactly when status is ok; exit code follows', () => {
  const r = doctor();
  assert.equal(r.code, r.ok ? 0 : 1);
  for (const c of r.checks) {
    const keys = Object.keys(c).filter((k) => (c as unknown as Record<string, unknown>)[k] !== undefined);
    assert.deepEqual(
      keys.sort(),
      c.ok ? ['detail', 'name', 'ok', 'status'] : ['detail', 'fix', 'name', 'ok', 'status'],
      c.name,
    );
    assert.equal(c.ok, c.status === 'ok', c.name);
  }
  for (const name of [
    'libkrun runtime',
    'libkrun',
    'libkrunfw',
    'libkrunfw gateway options',
    'libkrun loader path',
  ])
    byName(r.checks, name);
});

test('gvproxy here (provisioned) has -listen-qemu; the check says why the stream transport', () => {
  const g = byName(doctor().checks, 'gvproxy');
  assert.equal(g.ok, true, g.detail);
  assert.match(g.detail, /\(gvproxy \d+\.\d+\.\d+\), -listen-qemu: a unix stream socket with QEMU's framing/);
  assert.match(
    g.detail,
    /never the vfkit unixgram one, -listen-vfkit: the host-side frame filter, src\/net\/frame-relay\.ts, relays streams only/,
  );
});

test('a gvproxy without -listen-qemu is MISSING (exit 1) with the fix', () => {
  const fake = path.join(tmp, 'gvproxy');
  fs.writeFileSync(
    fake,
    '#!/bin/sh\n[ "$1" = -version ] && { echo "gvproxy version v0.2.0"; exit 0; }\necho "Usage of gvproxy:\n  -debug\n    \tPrint debug info\n  -listen-vpnkit string\n    \tVPNKit socket" >&2\nexit 2\n',
    { mode: 0o755 },
  );
  const r = doctor({ OPENSHELL_VM_GVPROXY: fake });
  const g = byName(r.checks, 'gvproxy');
  assert.equal(g.status, 'missing');
  assert.match(g.detail, /\(gvproxy 0\.2\.0\) has no -listen-qemu/);
  assert.match(g.fix ?? '', /provision-host\.sh/);
  assert.equal(r.code, 1);
});

const DEB_MANIFEST = path.join(readEnvironment().cacheDir, 'host', 'libkrunfw', 'manifest.json');
const deb = fs.existsSync(DEB_MANIFEST)
  ? (JSON.parse(fs.readFileSync(DEB_MANIFEST, 'utf8')) as { library: string; version: string })
  : undefined;
const noDeb = deb
  ? false
  : `Debian's libkrunfw5 is not in ${DEB_MANIFEST} (scripts/provision-host.sh fetches it; optional there)`;

describe("libkrunfw through runtime --json: Debian's libkrunfw5", { skip: noDeb }, () => {
  const library = deb?.library as string;

  test('found with its ABI (krunfw_get_version 5) and kernel; libkrun absent; options unknown; exit 1 (a runtime was named)', () => {
    const r = doctor({ OPENSHELL_VM_RUNTIME_DIR: path.dirname(library) });
    const fw = byName(r.checks, 'libkrunfw');
    assert.equal(fw.ok, true, fw.detail);
    assert.match(
      fw.detail,
      /libkrunfw\.so\.5 -> libkrunfw\.so\.5\.\d+\.\d+ \(libkrunfw 5\.\d+\.\d+, stock; krunfw_get_version: ABI 5; Linux 6\.12\.\d+, 2\d\.\d MB\)$/,
    );
    const krun = byName(r.checks, 'libkrun');
    assert.equal(krun.status, 'missing');
    assert.equal(krun.detail, `not in ${path.dirname(library)}`);
    const options = byName(r.checks, 'libkrunfw gateway options');
    assert.equal(options.ok, false);
    assert.match(options.detail, /^unknown \(no kernel\.config beside libkrunfw\.so\.5/);
    assert.match(options.fix ?? '', /^openshell-vm kernel build --target libkrunfw/);
    assert.match(byName(r.checks, 'libkrun loader path').detail, /LD_LIBRARY_PATH=.*libkrunfw\.so\.5: there/);
    assert.equal(r.code, 1);
  });

  test('with a kernel.config beside it: every gateway option built in, or the absent ones named', async () => {
    const fragment = await readFragment();
    const wanted = fragment.filter((q) => q.wanted === 'y').map((q) => q.option);
    const full = path.join(tmp, 'full');
    const short = path.join(tmp, 'short');
    for (const [dir, options] of [
      [full, wanted],
      [short, wanted.filter((o) => o !== 'CONFIG_VETH')],
    ] as const) {
      fs.mkdirSync(dir);
      fs.symlinkSync(library, path.join(dir, 'libkrunfw.so.5'));
      fs.writeFileSync(path.join(dir, 'kernel.config'), `${options.map((o) => `${o}=y`).join('\n')}\n`);
    }
    const all = byName(doctor({ OPENSHELL_VM_RUNTIME_DIR: full }).checks, 'libkrunfw gateway options');
    assert.equal(all.ok, true, all.detail);
    assert.equal(
      all.detail,
      `all ${wanted.length} built in (kernel check --builtin ${path.join(full, 'kernel.config')})`,
    );
    const some = byName(doctor({ OPENSHELL_VM_RUNTIME_DIR: short }).checks, 'libkrunfw gateway options');
    assert.equal(some.ok, false);
    assert.match(
      some.detail,
      new RegExp(`^1 of ${wanted.length} not built in \\(CONFIG_VETH; kernel check --builtin `),
    );
  });
});

test('a libkrunfw that is not a library: the child that reads it says so, doctor reports it', () => {
  const dir = path.join(tmp, 'broken');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'libkrunfw.so.5'), 'not an ELF file\n');
  const fw = byName(doctor({ OPENSHELL_VM_RUNTIME_DIR: dir }).checks, 'libkrunfw');
  assert.equal(fw.status, 'missing');
  assert.match(fw.detail, /libkrunfw\.so\.5: cannot load .*libkrunfw\.so\.5/);
  assert.ok(fw.fix, 'a fix');
});
