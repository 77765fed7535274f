import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { writeGatewayRootfs } from '../../test/fixtures/gateway-rootfs.ts';
import { HostError } from '../errors.ts';
import { isTerminalSafe } from '../host/terminal-text.ts';
import { ROOTFS_PATHS } from './layout.ts';
import {
  instanceOfRootfs,
  RECORD_FORMAT,
  RECORD_MAX_BYTES,
  type RootfsRecord,
  readRootfsRecord,
  verifyRootfsForBoot,
} from './record.ts';

const RECORD: RootfsRecord = {
  format: RECORD_FORMAT,
  tool: { name: 'openshell-vm', version: '0.1.0' },
  builtAt: '2026-11-25T00:00:00.000Z',
  buildMs: 12,
  arch: 'x86_64',
  instance: 'gw',
  base: { kind: 'debian', source: 'debian:bookworm' },
  owners: 'preserved',
  kernelRelease: undefined,
  inputs: [
    {
      kind: 'k3s',
      source: 'https://example.invalid/k3s',
      version: 'v1.31.4+k3s1',
      sha256: 'ab'.repeat(32),
      path: 'usr/local/bin/k3s',
      verification: 'sha256sum file',
    },
  ],
  packages: { bash: '5.2.15-2+b7' },
  warnings: ['not running as root: files in the rootfs belong to this user'],
};

async function rootfsWith(
  t: { after: (fn: () => Promise<void>) => void },
  content: unknown,
): Promise<string> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-record-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  const rootfs = path.join(base, 'instances', 'gw', 'rootfs');
  const file = path.join(rootfs, ROOTFS_PATHS.record);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return rootfs;
}

const refused = (re: RegExp, secret?: string) => (e: unknown) => {
  assert.ok(e instanceof HostError, String(e));
  assert.match(e.message, re);
  assert.match(e.message, /rootfs\.json/, 'the error names the file');
  assert.match(e.hint ?? '', /prepare-rootfs --name gw --force/);
  if (secret) {
    for (let at: unknown = e; at instanceof Error; at = at.cause) {
      assert.ok(!at.message.includes(secret), `content echoed: ${at.message}`);
    }
  }
  return true;
};

test('a record as the build writes it is read back, kernelRelease key present when it was dropped', async (t) => {
  const record = await readRootfsRecord(await rootfsWith(t, RECORD));
  assert.deepEqual(record, RECORD);
  assert.ok('kernelRelease' in record);
  const withKernel = await readRootfsRecord(
    await rootfsWith(t, { ...RECORD, kernelRelease: '6.1.0-28-amd64' }),
  );
  assert.equal(withKernel.kernelRelease, '6.1.0-28-amd64');
});

test('extraPackages: read back when present, absent in records without it, bounded and printable', async (t) => {
  const withExtras = { ...RECORD, extraPackages: ['hello', 'python3-grpcio'] };
  assert.deepEqual(await readRootfsRecord(await rootfsWith(t, withExtras)), withExtras);
  assert.equal((await readRootfsRecord(await rootfsWith(t, RECORD))).extraPackages, undefined);
  for (const extraPackages of [['a\x1b[2J'], 'hello', [7]]) {
    await assert.rejects(
      readRootfsRecord(await rootfsWith(t, { ...RECORD, extraPackages })),
      /is not a valid build record/,
    );
  }
});

test('images: each pre-loaded image read back (reference, digest, source, for, path); absent in older records', async (t) => {
  const digest = `sha256:${'cd'.repeat(32)}`;
  const path = `${ROOTFS_PATHS.k3sImages}/x.tar`;
  const images = [
    {
      reference: 'ghcr.io/nvidia/openshell/gateway:0.0.116',
      digest,
      source: 'default',
      for: 'gateway',
      path,
    },
    { digest, source: 'given', path }, // an archive that names no image, for nothing of the gateway
  ];
  const withImages = { ...RECORD, images };
  assert.deepEqual(await readRootfsRecord(await rootfsWith(t, withImages)), withImages);
  assert.equal((await readRootfsRecord(await rootfsWith(t, RECORD))).images, undefined);
  const one = images[0] as Record<string, unknown>;
  for (const bad of [
    { ...one, source: 'pulled' },
    { ...one, for: 'database' },
    { ...one, digest: 'sha256:xyz' },
    { ...one, reference: 'a\x1b]52;c;aGk=\x07' },
    { ...one, extra: 1 },
  ]) {
    await assert.rejects(
      readRootfsRecord(await rootfsWith(t, { ...RECORD, images: [bad] })),
      /is not a valid build record/,
    );
  }
});

test('not JSON: refused without quoting the content', async (t) => {
  const secret = 'hunter2-the-host-secret';
  await assert.rejects(readRootfsRecord(await rootfsWith(t, secret)), refused(/is not JSON/, secret));
});

test('another format: refused with the format named', async (t) => {
  await assert.rejects(
    readRootfsRecord(await rootfsWith(t, { ...RECORD, format: 7 })),
    refused(/format 7, expected 1/),
  );
});

test('schema: unknown fields, a bad hash, a foreign instance name and missing fields are refused', async (t) => {
  const cases: [unknown, RegExp][] = [
    [{ ...RECORD, extra: 1 }, /does not match its schema/],
    [{ ...RECORD, inputs: [{ ...RECORD.inputs[0], sha256: 'xyz' }] }, /inputs\.0\.sha256/],
    [{ ...RECORD, instance: 'gw; rm -rf ~' }, /instance/],
    [{ ...RECORD, arch: 'riscv64' }, /arch/],
    [{ format: RECORD_FORMAT }, /does not match its schema/],
    [[1, 2, 3], /does not match its schema/],
    [null, /does not match its schema/],
  ];
  for (const [content, re] of cases) {
    await assert.rejects(readRootfsRecord(await rootfsWith(t, content)), refused(re));
  }
});

test('control characters in any string (an ESC sequence for rootfs info to print) are refused', async (t) => {
  for (const bad of [
    { ...RECORD, base: { kind: 'debian', source: 'debian\x1b]52;c;eA==\x07' } },
    { ...RECORD, warnings: ['ok\u009b2J'] },
    { ...RECORD, packages: { 'a\x1b[2J': '1' } },
  ]) {
    await assert.rejects(readRootfsRecord(await rootfsWith(t, bad)), (e: unknown) => {
      assert.ok(e instanceof HostError);
      assert.match(e.message, /control characters|does not match/);
      assert.ok(isTerminalSafe(e.message), 'the message carries no control character');
      return true;
    });
  }
});

test('an unknown key with escapes in its name is not printed raw', async (t) => {
  const rootfs = await rootfsWith(t, `{"format":1,"\\u001b]0;owned\\u0007":1}`);
  await assert.rejects(readRootfsRecord(rootfs), (e: unknown) => {
    assert.ok(e instanceof HostError);
    assert.ok(isTerminalSafe(e.message), e.message);
    return true;
  });
});

test('a record over the size limit is refused unread', async (t) => {
  const rootfs = await rootfsWith(t, ' '.repeat(RECORD_MAX_BYTES + 1));
  await assert.rejects(readRootfsRecord(rootfs), refused(/larger than 1 MiB/));
});

test('no record, no rootfs: said so with the build command', async (t) => {
  const rootfs = await rootfsWith(t, RECORD);
  await fs.rm(path.join(rootfs, ROOTFS_PATHS.record));
  await assert.rejects(
    readRootfsRecord(rootfs),
    (e: unknown) => e instanceof HostError && /has no build record/.test(e.message),
  );
  await assert.rejects(
    readRootfsRecord(path.join(rootfs, 'nope')),
    (e: unknown) => e instanceof HostError && /there is no rootfs/.test(e.message),
  );
});

test('run --rootfs /missing: the hint never names an empty or made-up instance', async (t) => {
  const hintOf = async (rootfs: string) => {
    const err = await readRootfsRecord(rootfs).then(
      () => assert.fail('refused'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof HostError);
    return err.hint ?? '';
  };
  for (const rootfs of ['/missing', '/', path.join(os.tmpdir(), 'ovm-no-such', 'r')]) {
    const hint = await hintOf(rootfs);
    assert.doesNotMatch(hint, /--name\s+(--|\S*-force|$)/, `no empty --name: ${hint}`);
    assert.doesNotMatch(
      hint,
      /--name ovm-no-such|--name tmp/,
      'no name taken from a directory that is not an instance',
    );
    assert.match(hint, /openshell-vm prepare-rootfs \(/);
    assert.match(hint, /leave --rootfs out/);
  }
  // Where prepare-rootfs builds (<data>/instances/NAME/rootfs), the instance's own command.
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-record-'));
  t.after(() => fs.rm(base, { recursive: true, force: true }));
  assert.equal(
    await hintOf(path.join(base, 'instances', 'gw', 'rootfs')),
    'build it: openshell-vm prepare-rootfs --name gw --force',
  );
  assert.equal(instanceOfRootfs(path.join(base, 'instances', 'gw', 'rootfs')), 'gw');
  assert.equal(instanceOfRootfs(path.join(base, 'gw', 'rootfs')), undefined);
  assert.equal(instanceOfRootfs(path.join(base, 'instances', 'Bad Name', 'rootfs')), undefined);
});

test('a guest script made longer or shorter after the build is reported as changed (not read, not a size refusal)', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-record-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await writeGatewayRootfs(root, { instance: 'gw' });
  const init = path.join(root, 'sbin/ovm-init');
  const original = await fs.readFile(init);
  for (const edited of [Buffer.concat([original, Buffer.from('# edited\n')]), original.subarray(1)]) {
    await fs.writeFile(init, edited);
    await assert.rejects(verifyRootfsForBoot(root, {}), (err: unknown) => {
      assert.ok(err instanceof HostError);
      assert.match(err.message, /\/sbin\/ovm-init in .* was changed or removed after the build/);
      assert.match(err.hint ?? '', /prepare-rootfs --name gw --force/);
      return true;
    });
  }
});
