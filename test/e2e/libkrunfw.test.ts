import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { HostError } from '../../src/errors.ts';
import { hostArch } from '../../src/host/arch.ts';
import { buildLibkrunfw, libkrunfwTargetDir } from '../../src/kernel/libkrunfw-build.ts';
import type { PinnedDownload } from '../../src/kernel/libkrunfw-pins.ts';
import { gatewayRefusal, inspectLibkrunfw } from '../../src/vmm/libkrun/krunfw.ts';
import { readRuntimeDir } from '../../src/vmm/libkrun/runtime.ts';
import { testEnvironment } from '../fixtures/env.ts';
import { writeGatewayRootfs } from '../fixtures/gateway-rootfs.ts';
import { buildLibkrunDouble } from '../fixtures/libkrun-double.ts';
import { ROOT, type Sandbox, sandbox } from './harness.ts';

/**
 * libkrunfw, the real thing: Debian's libkrunfw5 (fetched into the shared cache by
 * scripts/lib/fetch-libkrunfw-deb.sh, as provisioning does) loaded through its ABI by
 * `openshell-vm runtime`, and the gateway refused on it; the `libkrunfw` build target's download
 * and verification against a local HTTP server; the full build, gated on local sources.
 */

const CACHE = readEnvironment().cacheDir;
const DEB_MANIFEST = path.join(CACHE, 'host', 'libkrunfw', 'manifest.json');

/** Debian's libkrunfw5 in the cache (fetched when absent), or why it cannot be had here. */
function debianLibkrunfw(): { library: string; version: string } | { skip: string } {
  if (!fs.existsSync(DEB_MANIFEST)) {
    const r = spawnSync('bash', [path.join(ROOT, 'scripts/lib/fetch-libkrunfw-deb.sh'), CACHE], {
      encoding: 'utf8',
    });
    if (r.status !== 0)
      return {
        skip: `Debian's libkrunfw5 cannot be fetched here (scripts/lib/fetch-libkrunfw-deb.sh exit ${r.status}: ${r.stderr.trim().split('\n').slice(-2).join(' / ')})`,
      };
  }
  const m = JSON.parse(fs.readFileSync(DEB_MANIFEST, 'utf8')) as { library: string; version: string };
  return { library: m.library, version: m.version };
}

describe("Debian's libkrunfw5 through the FFI", () => {
  const deb = debianLibkrunfw();
  const skip = 'skip' in deb ? deb.skip : false;
  let box: Sandbox;
  let bundle: string;
  before(() => {
    box = sandbox();
    if (skip) return;
    // A complete runtime: the libkrun test double (libkrun is in no Debian suite), Debian's real
    // libkrunfw as libkrunfw.so.5, and a gvproxy (never started: nothing boots here).
    fs.mkdirSync(box.dataDir, { recursive: true });
    bundle = fs.mkdtempSync(path.join(box.dataDir, 'bundle-'));
    buildLibkrunDouble(bundle);
    fs.rmSync(path.join(bundle, 'libkrunfw.so.5'));
    fs.symlinkSync((deb as { library: string }).library, path.join(bundle, 'libkrunfw.so.5'));
    fs.writeFileSync(path.join(bundle, 'gvproxy'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  });
  after(() => box?.cleanup());

  test('runtime on the unpacked package: ABI 5, the 21 MB kernel, Linux 6.12.x, options unknown; no libkrun, exit 125', {
    skip,
  }, async () => {
    const dir = path.dirname((deb as { library: string }).library);
    const r = await box.run(['runtime'], { env: { OPENSHELL_VM_RUNTIME_DIR: dir } });
    const out = r.stdout.toString();
    assert.equal(r.code, 125, r.stderr);
    assert.match(out, /^libkrun: missing \(this directory cannot boot VMs\)$/m);
    assert.match(out, /^libkrunfw-abi: 5$/m);
    assert.match(
      out,
      /^kernel: Linux 6\.12\.\d+, 2\d\.\d MB \(\d+ bytes, load 0x1000000, entry 0x1000123\)$/m,
    );
    assert.match(out, /^kernel-banner: Linux version 6\.12\.\d+ \(/m);
    assert.match(
      out,
      /^kernel-options: unknown \(no kernel\.config beside libkrunfw\.so\.5 and no CONFIG_IKCONFIG in its kernel\)$/m,
    );
    assert.match(
      out,
      /^gateway: cannot run on it \(.*kernel options unknown.*fix: openshell-vm kernel build --target libkrunfw/m,
    );
    assert.match(r.stderr, /error: runtime .*: no libkrun\.so or libkrun\.so\.1/);
  });

  test('runtime --json on a complete bundle with it: bootable, the same facts, exit 0', {
    skip,
  }, async () => {
    const r = await box.run(['runtime', '--json'], { env: { OPENSHELL_VM_RUNTIME_DIR: bundle } });
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout.toString()) as {
      bootable: boolean;
      kind: string;
      libkrunfwKernel: {
        abiVersion: number;
        kernelBytes: number;
        kernel: { release: string; banner: string };
        options: { known: boolean };
        gateway: { ok: boolean; message: string; hint: string };
      };
    };
    assert.equal(j.bootable, true);
    assert.equal(j.kind, 'stock');
    assert.equal(j.libkrunfwKernel.abiVersion, 5);
    assert.ok(
      j.libkrunfwKernel.kernelBytes > 20_000_000 && j.libkrunfwKernel.kernelBytes < 23_000_000,
      String(j.libkrunfwKernel.kernelBytes),
    );
    assert.match(j.libkrunfwKernel.kernel.release, /^6\.12\.\d+$/);
    assert.equal(j.libkrunfwKernel.options.known, false);
    assert.equal(j.libkrunfwKernel.gateway.ok, false);
    assert.match(j.libkrunfwKernel.gateway.hint, /^openshell-vm kernel build --target libkrunfw/);
  });

  test('the gateway on it is refused: kernel options unknown, kernel build --target libkrunfw the fix; nothing started', {
    skip,
  }, async () => {
    fs.mkdirSync(path.join(box.dataDir, 'instances', 'gw'), { recursive: true, mode: 0o700 });
    await writeGatewayRootfs(path.join(box.dataDir, 'instances', 'gw', 'rootfs'), { instance: 'gw' });
    const r = await box.run(['--name', 'gw', '--backend', 'libkrun'], {
      env: { OPENSHELL_VM_RUNTIME_DIR: bundle },
    });
    assert.notEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /kernel options unknown/);
    assert.match(r.stderr, /openshell-vm kernel build --target libkrunfw/);
    assert.deepEqual(r.processes, []);
    await box.assertClean(r, 'gw');
  });
});

describe('kernel build --target libkrunfw: downloads verified against their pins (local HTTP server)', () => {
  let server: http.Server;
  let base: string;
  let work: string;
  const served = new Map<string, Buffer>();
  const hits: string[] = [];
  const arch = hostArch() ?? 'x86_64';

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krunfw-dl-'));
    // A libkrunfw-shaped source (Makefile facts, the arch's config, one patch) and a tarball that
    // is no Linux tree: the build gets as far as unpacking the kernel, and refuses it there.
    const src = path.join(work, 'src', 'libkrunfw-9.9.9');
    fs.mkdirSync(path.join(src, 'patches'), { recursive: true });
    fs.writeFileSync(
      path.join(src, 'Makefile'),
      'KERNEL_VERSION = linux-9.9.9\nABI_VERSION = 5\nFULL_VERSION = 9.9.9\n',
    );
    fs.writeFileSync(path.join(src, `config-libkrunfw_${arch}`), '# CONFIG_MODULES is not set\n');
    fs.writeFileSync(path.join(src, 'patches', '0001-none.patch'), '');
    const kdir = path.join(work, 'src', 'linux-9.9.9');
    fs.mkdirSync(kdir);
    fs.writeFileSync(path.join(kdir, 'README'), 'not a kernel\n');
    const tar = (args: string[]) => {
      const r = spawnSync('tar', args, { cwd: path.join(work, 'src') });
      assert.equal(r.status, 0, String(r.stderr));
    };
    tar(['-czf', path.join(work, 'libkrunfw.tar.gz'), 'libkrunfw-9.9.9']);
    tar(['-cJf', path.join(work, 'linux.tar.xz'), 'linux-9.9.9']);
    served.set('/libkrunfw.tar.gz', fs.readFileSync(path.join(work, 'libkrunfw.tar.gz')));
    served.set('/linux.tar.xz', fs.readFileSync(path.join(work, 'linux.tar.xz')));
    server = http.createServer((req, res) => {
      hits.push(req.url ?? '');
      const body = served.get(req.url ?? '');
      if (body) res.end(body);
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server?.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const sha = (name: string) =>
    createHash('sha256')
      .update(served.get(name) as Buffer)
      .digest('hex');
  const pins = (libkrunfwSha: string | undefined): { libkrunfw: PinnedDownload; kernel: PinnedDownload } => ({
    libkrunfw: {
      what: 'libkrunfw source',
      version: '9.9.9',
      url: `${base}/libkrunfw.tar.gz`,
      sha256: libkrunfwSha,
      fileName: 'libkrunfw-9.9.9.tar.gz',
    },
    kernel: {
      what: 'Linux kernel source',
      version: '9.9.9',
      url: `${base}/linux.tar.xz`,
      sha256: sha('/linux.tar.xz'),
      fileName: 'linux-9.9.9.tar.xz',
    },
  });
  /** Every file under the cache's kernels/ directory, relative. */
  const cacheFiles = (cache: string) =>
    fs.existsSync(path.join(cache, 'kernels'))
      ? (fs.readdirSync(path.join(cache, 'kernels'), { recursive: true }) as string[]).sort()
      : [];

  test('a checksum mismatch is refused and nothing is kept, nothing half-built', async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const env = testEnvironment(cache, { searchPath: process.env.PATH ?? '' });
    await assert.rejects(
      buildLibkrunfw(env, { arch, jobs: 1, pins: pins('ab'.repeat(32)) }),
      (e: unknown) =>
        e instanceof HostError &&
        e.message.startsWith(
          `checksum mismatch: ${base}/libkrunfw.tar.gz sent a file with sha256 ${sha('/libkrunfw.tar.gz')}`,
        ),
    );
    assert.ok(hits.includes('/libkrunfw.tar.gz'), 'it was downloaded');
    assert.deepEqual(
      cacheFiles(cache).filter((f) => f !== 'downloads'),
      [],
      `left: ${cacheFiles(cache)}`,
    );
  });

  test('a pin without a sha256 is refused before any request', async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const env = testEnvironment(cache, { searchPath: process.env.PATH ?? '' });
    const before = hits.length;
    await assert.rejects(
      buildLibkrunfw(env, { arch, jobs: 1, pins: pins(undefined) }),
      /has no pinned sha256/,
    );
    assert.equal(hits.length, before);
    assert.deepEqual(cacheFiles(cache), []);
  });

  test('good checksums are accepted and kept; the next step refuses the fake kernel, leaving only its log', async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const env = testEnvironment(cache, { searchPath: process.env.PATH ?? '' });
    const progress: string[] = [];
    await assert.rejects(
      buildLibkrunfw(
        env,
        { arch, jobs: 1, pins: pins(sha('/libkrunfw.tar.gz')) },
        { onProgress: (m) => progress.push(m) },
      ),
      (e: unknown) =>
        e instanceof HostError && /linux-9\.9\.9\.tar\.xz is not a Linux source tarball/.test(e.message),
    );
    assert.ok(
      progress.some((m) =>
        /sources: libkrunfw source 9\.9\.9 \(libkrunfw-9\.9\.9\.tar\.gz, sha256 verified, downloaded\)/.test(
          m,
        ),
      ),
      progress.join('\n'),
    );
    assert.deepEqual(fs.readdirSync(path.join(cache, 'kernels', 'downloads')).sort(), [
      'libkrunfw-9.9.9.tar.gz',
      'linux-9.9.9.tar.xz',
    ]);
    assert.deepEqual(fs.readdirSync(libkrunfwTargetDir(env, arch)), ['last-failure.log']);
  });
});

describe('kernel build --target libkrunfw: bad inputs stop it, naming the problem, nothing half-built', () => {
  let work: string;
  const arch = hostArch() ?? 'x86_64';
  /**
   * Local sources shaped like the real ones: a libkrunfw tree (its Makefile's facts, the arch's
   * config, one patch) and a "Linux" tarball whose Makefile stands in for kconfig: its
   * olddefconfig drops CONFIG_BRIDGE, as kconfig drops an option whose dependencies are unmet.
   */
  const sources = (patch: string) => {
    const dir = fs.mkdtempSync(path.join(work, 'src-'));
    const src = path.join(dir, 'libkrunfw');
    fs.mkdirSync(path.join(src, 'patches'), { recursive: true });
    fs.writeFileSync(
      path.join(src, 'Makefile'),
      'KERNEL_VERSION = linux-9.9.9\nABI_VERSION = 5\nFULL_VERSION = 9.9.9\n',
    );
    fs.writeFileSync(path.join(src, `config-libkrunfw_${arch}`), '# CONFIG_MODULES is not set\n');
    fs.writeFileSync(path.join(src, 'patches', '0001-change.patch'), patch);
    const k = path.join(dir, 'linux-9.9.9');
    fs.mkdirSync(k);
    fs.writeFileSync(
      path.join(k, 'Makefile'),
      "VERSION = 9\nPATCHLEVEL = 9\nSUBLEVEL = 9\nolddefconfig:\n\tsed -i '/^CONFIG_BRIDGE=y$$/d' .config\n",
    );
    fs.writeFileSync(path.join(k, 'Kconfig'), '');
    fs.writeFileSync(path.join(k, 'file.txt'), 'one\n');
    const r = spawnSync('tar', ['-cJf', path.join(dir, 'linux-9.9.9.tar.xz'), 'linux-9.9.9'], { cwd: dir });
    assert.equal(r.status, 0, String(r.stderr));
    return { libkrunfwSource: src, kernelSource: path.join(dir, 'linux-9.9.9.tar.xz') };
  };
  const applies = '--- a/file.txt\n+++ b/file.txt\n@@ -1 +1 @@\n-one\n+two\n';
  const conflicts = '--- a/file.txt\n+++ b/file.txt\n@@ -1 +1 @@\n-three\n+four\n';

  before(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krunfw-bad-'));
  });
  after(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const leftovers = (cache: string) =>
    fs.readdirSync(libkrunfwTargetDir(testEnvironment(cache), arch)).sort();

  test('a patch that does not apply to the kernel is named, with the kernel it was made for', async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const env = testEnvironment(cache, { searchPath: process.env.PATH ?? '' });
    const warnings: string[] = [];
    await assert.rejects(
      buildLibkrunfw(env, { arch, jobs: 1, ...sources(conflicts) }, { onWarning: (m) => warnings.push(m) }),
      (e: unknown) =>
        e instanceof HostError &&
        /^libkrunfw's 0001-change\.patch does not apply to Linux 9\.9\.9/.test(e.message) &&
        /made for Linux 9\.9\.9/.test(e.hint ?? '') &&
        /last-failure\.log/.test(e.hint ?? ''),
    );
    assert.ok(
      warnings.some((w) => /--libkrunfw-source .* is not the pinned libkrunfw source/.test(w)),
      warnings.join('\n'),
    );
    assert.deepEqual(leftovers(cache), ['last-failure.log']);
  });

  test('an option kconfig drops is named (olddefconfig checked), nothing compiled', async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const env = testEnvironment(cache, { searchPath: process.env.PATH ?? '' });
    await assert.rejects(
      buildLibkrunfw(env, { arch, jobs: 1, ...sources(applies) }),
      (e: unknown) =>
        e instanceof HostError &&
        /^kconfig could not enable 1 requested option\(s\) in Linux 9\.9\.9:\nCONFIG_BRIDGE=y \(openshell\.kconfig\): dropped by kconfig/.test(
          e.message,
        ),
    );
    assert.deepEqual(leftovers(cache), ['last-failure.log']);
  });
});

const LOCAL_SRC = process.env.OPENSHELL_VM_LIBKRUNFW_SRC;
const LOCAL_KERNEL = process.env.OPENSHELL_VM_KERNEL_TARBALL;

test('the full libkrunfw build from local sources: runtime shows it, every gateway option built in; a second build does nothing', {
  skip:
    LOCAL_SRC && LOCAL_KERNEL
      ? false
      : 'the full libkrunfw build (a kernel compile: tens of minutes on 2 cores) runs with OPENSHELL_VM_LIBKRUNFW_SRC=<libkrunfw source dir or tarball> and OPENSHELL_VM_KERNEL_TARBALL=<Linux source tarball>',
  timeout: 4 * 3600_000,
}, async () => {
  const env = readEnvironment();
  const arch = hostArch() ?? 'x86_64';
  const request = {
    arch,
    jobs: os.availableParallelism(),
    libkrunfwSource: LOCAL_SRC,
    kernelSource: LOCAL_KERNEL,
  };
  const log = (m: string) => process.stderr.write(`libkrunfw build: ${m}\n`);
  const first = await buildLibkrunfw(env, request, { onProgress: log, onWarning: log });
  log(`${first.built ? 'built' : 'cached'} in ${(first.elapsedMs / 1000).toFixed(0)} s: ${first.dir}`);
  const dir = await readRuntimeDir(first.dir, 'env', 'linux');
  assert.equal(dir.kind, 'custom');
  assert.equal(dir.kernelConfig, path.join(first.dir, 'kernel.config'));
  const report = await inspectLibkrunfw(dir);
  assert.equal(report.facts.abiVersion, 5);
  assert.equal(report.facts.kernel?.release, dir.provenance?.kernel_version);
  assert.equal(report.options.known, true);
  assert.equal(gatewayRefusal(report), undefined, 'every gateway option is built in');
  // The library alone (no kernel.config beside it): its options come from the kernel's IKCONFIG.
  const alone = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krunfw-alone-'));
  try {
    fs.copyFileSync(first.library, path.join(alone, path.basename(first.library)));
    const fromImage = await inspectLibkrunfw(await readRuntimeDir(alone, 'env', 'linux'));
    assert.equal(fromImage.options.known && fromImage.options.source.endsWith('(IKCONFIG)'), true);
    assert.equal(gatewayRefusal(fromImage), undefined);
  } finally {
    fs.rmSync(alone, { recursive: true, force: true });
  }

  const box = sandbox();
  try {
    const r = await box.run(['runtime'], { env: { OPENSHELL_VM_RUNTIME_DIR: first.dir } });
    assert.match(r.stdout.toString(), /^type: custom \(OpenShell-built\)$/m);
    assert.match(r.stdout.toString(), /^gateway: its kernel has every option the gateway needs$/m);
    const check = await box.run(['kernel', 'check', '--builtin', path.join(first.dir, 'kernel.config')]);
    assert.equal(check.code, 0, check.stdout.toString() + check.stderr);
  } finally {
    box.cleanup();
  }
  const second = await buildLibkrunfw(env, request, { onProgress: log });
  assert.equal(second.built, false);
  assert.equal(second.key, first.key);
});
