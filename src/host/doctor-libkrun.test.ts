import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  gatewayOptionsCheck,
  type LibkrunfwFacts,
  libkrunCheck,
  libkrunfwCheck,
  libraryVersion,
  loaderCheck,
  type RunnerFacts,
  runnerCheck,
} from './doctor-libkrun.ts';

test('library versions from file names: Homebrew dylibs, Linux sonames, unversioned links', () => {
  assert.equal(libraryVersion('libkrun.1.17.0.dylib', 'libkrun'), '1.17.0');
  assert.equal(libraryVersion('libkrun.1.dylib', 'libkrun'), '1');
  assert.equal(libraryVersion('libkrun.so.1.17.0', 'libkrun'), '1.17.0');
  assert.equal(libraryVersion('libkrun.so', 'libkrun'), undefined);
  assert.equal(libraryVersion('libkrun.dylib', 'libkrun'), undefined);
  assert.equal(libraryVersion('libkrunfw.so.5.5.0', 'libkrunfw'), '5.5.0');
  assert.equal(libraryVersion('libkrunfw.5.dylib', 'libkrunfw'), '5');
  // One stem is not the other.
  assert.equal(libraryVersion('libkrunfw.so.5', 'libkrun'), undefined);
});

test('libkrun: the version from the file its links end at; absent: the platform install line', () => {
  const c = libkrunCheck({
    platform: 'darwin',
    needed: true,
    libkrun: {
      path: '/opt/homebrew/lib/libkrun.dylib',
      resolved: '/opt/homebrew/Cellar/libkrun/1.17.0/lib/libkrun.1.17.0.dylib',
    },
  });
  assert.deepEqual(c, {
    name: 'libkrun',
    ok: true,
    status: 'ok',
    detail: '/opt/homebrew/lib/libkrun.dylib -> libkrun.1.17.0.dylib (libkrun 1.17.0)',
  });
  const none = libkrunCheck({
    platform: 'darwin',
    needed: false,
    libkrun: undefined,
  });
  assert.equal(none.status, 'optional');
  assert.equal(none.detail, 'not found (see libkrun runtime)');
  assert.equal(
    libkrunCheck({ platform: 'linux', needed: false, libkrun: undefined, runtimeDir: '/d' }).detail,
    'not in /d',
  );
  assert.match(none.fix ?? '', /^brew install libkrun\b/);
  assert.equal(libkrunCheck({ platform: 'linux', needed: true, libkrun: undefined }).status, 'missing');
});

const DEBIAN: LibkrunfwFacts = {
  library: {
    path: '/c/usr/lib/x86_64-linux-gnu/libkrunfw.so.5',
    resolved: '/c/usr/lib/x86_64-linux-gnu/libkrunfw.so.5.5.0',
  },
  kind: 'stock',
  provenanceVersion: undefined,
  abiVersion: 5,
  kernelRelease: '6.12.34',
  kernelBytes: 21_000_000,
};

test('libkrunfw: ABI 5 through krunfw_get_version, the version from provenance or the file name', () => {
  const c = libkrunfwCheck({ platform: 'linux', needed: false, facts: DEBIAN });
  assert.equal(c.ok, true);
  assert.equal(
    c.detail,
    '/c/usr/lib/x86_64-linux-gnu/libkrunfw.so.5 -> libkrunfw.so.5.5.0 (libkrunfw 5.5.0, stock; krunfw_get_version: ABI 5; Linux 6.12.34, 21.0 MB)',
  );
  const custom = libkrunfwCheck({
    platform: 'linux',
    needed: false,
    facts: { ...DEBIAN, kind: 'custom', provenanceVersion: '5.2.1' },
  });
  assert.match(custom.detail, /\(libkrunfw 5\.2\.1, custom;/);
  const abi4 = libkrunfwCheck({ platform: 'darwin', needed: true, facts: { ...DEBIAN, abiVersion: 4 } });
  assert.equal(abi4.status, 'missing');
  assert.match(abi4.detail, /ABI 4.*: libkrun 1\.17\+ loads ABI 5$/);
  assert.match(abi4.fix ?? '', /kernel build --target libkrunfw on a Linux host/);
  const unreadable = libkrunfwCheck({
    platform: 'linux',
    needed: false,
    facts: { error: 'cannot load /x/libkrunfw.so.5', hint: 'reinstall' },
  });
  assert.deepEqual(
    [unreadable.status, unreadable.detail, unreadable.fix],
    ['optional', 'cannot load /x/libkrunfw.so.5', 'reinstall'],
  );
  assert.equal(
    libkrunfwCheck({ platform: 'linux', needed: false, facts: undefined }).fix,
    'openshell-vm kernel build --target libkrunfw',
  );
});

test('gateway options: all built in, some absent (named), or unknown without a kernel.config', () => {
  const all = gatewayOptionsCheck('linux', {
    known: true,
    source: '/b/kernel.config',
    total: 77,
    absent: [],
  });
  assert.deepEqual([all.ok, all.detail], [true, 'all 77 built in (kernel check --builtin /b/kernel.config)']);
  const some = gatewayOptionsCheck('linux', {
    known: true,
    source: '/b/kernel.config',
    total: 77,
    absent: ['CONFIG_NETFILTER', 'CONFIG_VETH'],
  });
  assert.equal(some.ok, false);
  assert.equal(some.status, 'optional');
  assert.match(
    some.detail,
    /^2 of 77 not built in \(CONFIG_NETFILTER, CONFIG_VETH; kernel check --builtin \/b\/kernel\.config\)/,
  );
  const unknown = gatewayOptionsCheck('linux', {
    known: false,
    why: 'no kernel.config beside libkrunfw.so.5',
  });
  assert.equal(unknown.detail, 'unknown (no kernel.config beside libkrunfw.so.5)');
  assert.match(unknown.fix ?? '', /^openshell-vm kernel build --target libkrunfw \(/);
  assert.match(gatewayOptionsCheck('darwin', undefined).fix ?? '', /macOS refuses it today/);
});

test('loader path: the runtime first on the variable, the dlopen name there; macOS needs the dylib name', () => {
  const linux = loaderCheck({
    platform: 'linux',
    needed: false,
    runtimeDir: '/r',
    libkrunfwNames: ['libkrunfw.so.5', 'libkrunfw.so.5.5.0'],
    inherited: '/usr/local/lib',
  });
  assert.equal(linux.ok, true);
  assert.match(
    linux.detail,
    /^the runner gets LD_LIBRARY_PATH=\/r:\/usr\/local\/lib and preloads libkrunfw\.so\.5, libkrunfw\.so\.5\.5\.0; libkrun dlopens libkrunfw\.so\.5: there/,
  );
  // Linux: a preloaded library answers to its soname even under another file name.
  assert.equal(
    loaderCheck({
      platform: 'linux',
      needed: true,
      runtimeDir: '/r',
      libkrunfwNames: ['libkrunfw.so.5.5.0'],
      inherited: undefined,
    }).ok,
    true,
  );
  const mac = loaderCheck({
    platform: 'darwin',
    needed: true,
    runtimeDir: '/b',
    libkrunfwNames: ['libkrunfw.so.5'],
    inherited: undefined,
  });
  assert.equal(mac.status, 'missing');
  assert.match(
    mac.detail,
    /DYLD_LIBRARY_PATH=\/b and preloads libkrunfw\.so\.5; libkrun dlopens libkrunfw\.5\.dylib, which \/b lacks/,
  );
  const hardened = loaderCheck({
    platform: 'darwin',
    needed: true,
    runtimeDir: '/b',
    libkrunfwNames: ['libkrunfw.5.dylib'],
    inherited: undefined,
    runnerHardened: true,
    runnerPath: '/c/node-x',
  });
  assert.equal(hardened.ok, false);
  assert.match(hardened.detail, /hardened runtime, under which dyld ignores DYLD_LIBRARY_PATH/);
  assert.equal(hardened.fix, 'rm /c/node-x (the next libkrun run signs a copy without it)');
  assert.equal(
    loaderCheck({
      platform: 'darwin',
      needed: false,
      runtimeDir: undefined,
      libkrunfwNames: [],
      inherited: undefined,
    }).status,
    'optional',
  );
});

const RUNNER: RunnerFacts = {
  path: '/c/libkrun-runner/node-v24.11.1-0123456789ab',
  exists: true,
  codesign: true,
  signed: true,
  granted: true,
  entitlement: 'com.apple.security.hypervisor',
  signCommand:
    'codesign --force --sign - --entitlements /p/entitlements.plist /c/libkrun-runner/node-v24.11.1-0123456789ab',
};

test('runner: entitlement present; not yet made; unsigned or without it (fix: sign it); no codesign', () => {
  assert.equal(runnerCheck(RUNNER, true).ok, true);
  const notYet = runnerCheck({ ...RUNNER, exists: false }, true);
  assert.equal(notYet.status, 'optional');
  assert.match(
    notYet.fix ?? '',
    /^openshell-vm run --backend libkrun -- true \(or by hand: codesign --force/,
  );
  const without = runnerCheck({ ...RUNNER, granted: false }, true);
  assert.deepEqual([without.status, without.fix], ['missing', RUNNER.signCommand]);
  assert.match(without.detail, /is signed without com\.apple\.security\.hypervisor/);
  assert.match(runnerCheck({ ...RUNNER, signed: false, granted: false }, false).detail, /is not signed$/);
  assert.equal(runnerCheck({ ...RUNNER, codesign: false }, true).fix, 'xcode-select --install');
});
