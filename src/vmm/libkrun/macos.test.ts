import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { HostEnvironment } from '../../config/environment.ts';
import {
  codesignArgs,
  ENTITLEMENTS_PLIST,
  grantsHypervisor,
  HYPERVISOR_ENTITLEMENT,
  hasHypervisorEntitlement,
  parseCodesignEntitlements,
  parseCodesignSignature,
  runnerNode,
  signedNodePath,
} from './macos.ts';

const env = { cacheDir: '/c' } as HostEnvironment;

test('the shipped entitlements grant exactly the hypervisor entitlement', () => {
  const plist = fs.readFileSync(ENTITLEMENTS_PLIST, 'utf8');
  assert.match(plist, new RegExp(`<key>${HYPERVISOR_ENTITLEMENT.replaceAll('.', '\\.')}</key>\\s*<true/>`));
  assert.equal((plist.match(/<key>/g) ?? []).length, 1);
  // What codesign prints back for it (the XML form) is read as granting it.
  assert.deepEqual(parseCodesignEntitlements(plist).entitlements, { [HYPERVISOR_ENTITLEMENT]: true });
});

test('ad-hoc signing argv, and one signed copy per Node.js binary and version in the cache', () => {
  assert.deepEqual(codesignArgs('/c/node', '/e.plist'), [
    '--force',
    '--sign',
    '-',
    '--entitlements',
    '/e.plist',
    '/c/node',
  ]);
  const a = signedNodePath(env, '/usr/bin/node', 'v24.1.0');
  assert.match(a, /^\/c\/libkrun-runner\/node-v24\.1\.0-[0-9a-f]{12}$/);
  assert.notEqual(a, signedNodePath(env, '/opt/node', 'v24.1.0'));
});

test('outside macOS the runner uses this Node.js as is (no signing)', async () => {
  assert.equal(await runnerNode(env, 'linux'), process.execPath);
});

// codesign's output in the shapes it prints them (written from its documented formats: no Mac
// ran these here). RUNNER is the cache path signedNodePath gives.
const RUNNER = '/Users/u/.cache/openshell-vm/libkrun-runner/node-v24.11.1-0123456789ab';
const TEXT_GRANTED = `Executable=${RUNNER}
[Dict]
\t[Key] com.apple.security.hypervisor
\t[Value]
\t\t[Bool] true
`;
const TEXT_FALSE = `Executable=${RUNNER}
[Dict]
\t[Key] com.apple.security.cs.allow-jit
\t[Value]
\t\t[Bool] true
\t[Key] com.apple.security.hypervisor
\t[Value]
\t\t[Bool] false
`;
const TEXT_NESTED = `Executable=${RUNNER}
[Dict]
\t[Key] com.example.settings
\t[Value]
\t\t[Dict]
\t\t\t[Key] com.apple.security.hypervisor
\t\t\t[Value]
\t\t\t\t[Bool] true
\t[Key] com.apple.application-identifier
\t[Value]
\t\t[String] ABCDE.org.example
`;
/** macOS 11 and older: an 8-byte blob header (magic 0xfade7171, length), then the plist. */
const XML_LEGACY = `Executable=${RUNNER}
\u00fa\u00deqq\u0000\u0000\u0001\u0013<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
\t<key>com.apple.security.hypervisor</key>
\t<true/>
</dict>
</plist>`;
const XML_TRAPS = `<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd"><plist version="1.0"><dict><key>com.example.list</key><array><string>com.apple.security.hypervisor</string></array><key>com.example.inner</key><dict><key>com.apple.security.hypervisor</key><true/></dict><key>com.apple.security.hypervisor</key><false/><key>n</key><integer>3</integer><key>e</key><array/></dict></plist>`;
const UNSIGNED = `${RUNNER}: code object is not signed at all\n`;
const NO_ENTITLEMENTS = `Executable=${RUNNER}\n`;

test('codesign entitlements, text form (macOS 12+): granted only when the top-level value is true', () => {
  assert.deepEqual(parseCodesignEntitlements(TEXT_GRANTED), {
    signed: true,
    entitlements: { [HYPERVISOR_ENTITLEMENT]: true },
  });
  assert.equal(grantsHypervisor(TEXT_GRANTED), true);
  assert.deepEqual(parseCodesignEntitlements(TEXT_FALSE).entitlements, {
    'com.apple.security.cs.allow-jit': true,
    [HYPERVISOR_ENTITLEMENT]: false,
  });
  assert.equal(grantsHypervisor(TEXT_FALSE), false);
  // The name inside another entitlement's dictionary grants nothing.
  assert.deepEqual(parseCodesignEntitlements(TEXT_NESTED).entitlements, {
    'com.example.settings': '(dict)',
    'com.apple.application-identifier': 'ABCDE.org.example',
  });
  assert.equal(grantsHypervisor(TEXT_NESTED), false);
});

test('codesign entitlements, XML form (macOS 11 and older, or --xml): the blob header skipped, nesting honoured', () => {
  assert.equal(grantsHypervisor(XML_LEGACY), true);
  assert.deepEqual(parseCodesignEntitlements(XML_TRAPS).entitlements, {
    'com.example.list': '(array)',
    'com.example.inner': '(dict)',
    [HYPERVISOR_ENTITLEMENT]: false,
    n: 3,
    e: '(array)',
  });
  assert.equal(grantsHypervisor(XML_TRAPS), false);
});

test('codesign entitlements: unsigned, and signed without entitlements', () => {
  assert.deepEqual(parseCodesignEntitlements(UNSIGNED), { signed: false, entitlements: {} });
  assert.deepEqual(parseCodesignEntitlements(NO_ENTITLEMENTS), { signed: true, entitlements: {} });
  assert.equal(grantsHypervisor(UNSIGNED), false);
  assert.equal(grantsHypervisor(''), false);
});

const SIG_ADHOC = `Executable=${RUNNER}
Identifier=node
Format=Mach-O thin (arm64)
CodeDirectory v=20400 size=735817 flags=0x2(adhoc) hashes=22984+7 location=embedded
Hash type=sha256 size=32
Signature=adhoc
Info.plist=not bound
TeamIdentifier=not set
Sealed Resources=none
Internal requirements count=0 size=12
`;
const SIG_NODEJS_ORG = `Executable=/usr/local/bin/node
Identifier=node
Format=Mach-O thin (arm64)
CodeDirectory v=20500 size=736189 flags=0x10000(runtime) hashes=22995+7 location=embedded
Hash type=sha256 size=32
Authority=Developer ID Application: Node.js Foundation (HX7739G8FX)
Authority=Developer ID Certification Authority
Authority=Apple Root CA
Timestamp=Nov 11, 2026 at 10:00:00
TeamIdentifier=HX7739G8FX
`;

test('codesign signature: ad hoc without the hardened runtime (our runner) vs a hardened, notarised node', () => {
  assert.deepEqual(parseCodesignSignature(SIG_ADHOC), {
    signed: true,
    flags: ['adhoc'],
    adhoc: true,
    hardenedRuntime: false,
  });
  assert.deepEqual(parseCodesignSignature(SIG_NODEJS_ORG), {
    signed: true,
    flags: ['runtime'],
    adhoc: false,
    hardenedRuntime: true,
  });
  assert.equal(parseCodesignSignature(UNSIGNED).signed, false);
});

test('hasHypervisorEntitlement runs codesign -d --entitlements - FILE and reads it with the parser (a codesign double on PATH)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-codesign-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The double prints the sample named by the file it is asked about, and its argv to a log.
  for (const [name, text] of Object.entries({
    granted: TEXT_GRANTED,
    false: TEXT_FALSE,
    nested: TEXT_NESTED,
  })) {
    fs.writeFileSync(path.join(dir, `${name}.out`), text);
  }
  fs.writeFileSync(
    path.join(dir, 'codesign'),
    `#!/bin/sh\necho "$@" >> "${dir}/argv.log"\nfor last; do :; done\ncat "${dir}/$(basename "$last").out"\n`,
    { mode: 0o755 },
  );
  const saved = process.env.PATH;
  process.env.PATH = `${dir}:${saved}`;
  t.after(() => {
    process.env.PATH = saved;
  });
  assert.equal(await hasHypervisorEntitlement('/x/granted'), true);
  // The entitlement named with the value false, or inside another one's dictionary, grants nothing.
  assert.equal(await hasHypervisorEntitlement('/x/false'), false);
  assert.equal(await hasHypervisorEntitlement('/x/nested'), false);
  assert.equal(
    fs.readFileSync(path.join(dir, 'argv.log'), 'utf8').split('\n')[0],
    '-d --entitlements - /x/granted',
  );
});
