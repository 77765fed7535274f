import assert from 'node:assert/strict';
import { test } from 'node:test';
import { errorOf, parseRuntimeReport } from './doctor-runtime-report.ts';

/** `OPENSHELL_VM_RUNTIME_DIR=<Debian's libkrunfw5 unpacked> openshell-vm runtime --json`, captured here. */
const DEBIAN = `{
  "dir": "/root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu",
  "source": "env",
  "libkrunfw": [
    "/root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu/libkrunfw.so.5",
    "/root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu/libkrunfw.so.5.5.0"
  ],
  "libkrunfwSha256": "6942d3ed31c2ed75ab95158bbb289eaf0db9efd97838bb84c4c78a5d2be82b0e",
  "kind": "stock",
  "bootable": false,
  "problem": {
    "message": "runtime /root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu: no libkrun.so or libkrun.so.1",
    "hint": "install libkrun and libkrunfw (Fedora: dnf install libkrun; elsewhere build them), or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle"
  },
  "libkrunfwKernel": {
    "library": "/root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu/libkrunfw.so.5",
    "abiVersion": 5,
    "loadAddr": 16777216,
    "entryAddr": 16777507,
    "kernelBytes": 21299200,
    "kernel": {
      "release": "6.12.91",
      "banner": "Linux version 6.12.91 (root@libkrunfw) (gcc (Debian 15.3.0-1) 15.3.0, GNU ld (GNU Binutils for Debian) 2.46.50.20260617) # SMP PREEMPT_DYNAMIC Mon Jun  1 16:28:39 CEST 2026"
    },
    "options": {
      "known": false,
      "why": "no kernel.config beside libkrunfw.so.5 and no CONFIG_IKCONFIG in its kernel"
    },
    "gateway": {
      "ok": false,
      "message": "libkrunfw libkrunfw.so.5: kernel options unknown (no kernel.config beside libkrunfw.so.5 and no CONFIG_IKCONFIG in its kernel)",
      "hint": "openshell-vm kernel build --target libkrunfw builds a libkrunfw with the gateway's options built in, and its kernel.config"
    }
  }
}`;

test("runtime --json on Debian's libkrunfw5: ABI 5, its kernel, options unknown", () => {
  const r = parseRuntimeReport(DEBIAN);
  assert.ok(r);
  assert.deepEqual(r.facts, {
    library: '/root/.cache/openshell-vm/host/libkrunfw/root/usr/lib/x86_64-linux-gnu/libkrunfw.so.5',
    kind: 'stock',
    provenanceVersion: undefined,
    abiVersion: 5,
    kernelRelease: '6.12.91',
    kernelBytes: 21299200,
  });
  assert.deepEqual(r.options, {
    known: false,
    why: 'no kernel.config beside libkrunfw.so.5 and no CONFIG_IKCONFIG in its kernel',
  });
});

test('runtime --json of a custom build: provenance version, options known, missing and modules both absent', () => {
  const j = JSON.parse(DEBIAN);
  j.kind = 'custom';
  j.provenance = { version: 'v5.2.1', libkrunfw_version: '5.2.1' };
  j.libkrunfwKernel.options = {
    known: true,
    source: '/b/kernel.config',
    kernel: '6.12.118',
    gatewayOptions: 77,
    missing: ['CONFIG_VETH'],
    modules: ['CONFIG_BRIDGE'],
  };
  const r = parseRuntimeReport(JSON.stringify(j));
  assert.equal(r?.facts.provenanceVersion, '5.2.1');
  assert.deepEqual(r?.options, {
    known: true,
    source: '/b/kernel.config',
    total: 77,
    absent: ['CONFIG_VETH', 'CONFIG_BRIDGE'],
  });
});

test('no report: not JSON, or JSON of another shape; the error and hint lines of stderr', () => {
  assert.equal(parseRuntimeReport(''), undefined);
  assert.equal(parseRuntimeReport('{"dir": "/x"}'), undefined);
  assert.equal(parseRuntimeReport('[]'), undefined);
  // What the CLI's boundary writes for runtime --json (captured: OPENSHELL_VM_RUNTIME_DIR=/tmp).
  const message = 'runtime /tmp: no libkrunfw library (the guest kernel)';
  const hint =
    'install libkrun and libkrunfw (Fedora: dnf install libkrun; elsewhere build them), or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle';
  const stderr = `openshell-vm: error: ${message}\n  hint: ${hint}\n`;
  assert.deepEqual(errorOf(JSON.stringify({ error: { message, hint } }), stderr), { error: message, hint });
  assert.deepEqual(errorOf('', stderr), { error: message, hint });
  assert.deepEqual(errorOf('', 'Segmentation fault\n'), { error: undefined, hint: undefined });
});
