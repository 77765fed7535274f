import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { buildFakeLibkrunfw, fakeKernelImage } from '../../../test/fixtures/libkrunfw/fake-libkrunfw.ts';
import { HostError } from '../../errors.ts';
import { readFragment } from '../../kernel/requirements.ts';
import {
  describeLibkrunfw,
  gatewayRefusal,
  inspectLibkrunfw,
  libkrunfwGatewayRefusal,
  readKrunfw,
} from './krunfw.ts';
import { readRuntimeDir } from './runtime.ts';

function tmp(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-krunfw-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A config with every option of the gateway's fragment built in, less `drop`. */
async function gatewayConfig(drop: readonly string[] = []): Promise<string> {
  const wanted = (await readFragment()).filter((r) => r.wanted === 'y' && !drop.includes(r.option));
  return `# Linux/x86 6.12.91 Kernel Configuration\n${wanted.map((r) => `${r.option}=y`).join('\n')}\n`;
}

test('readKrunfw: the ABI version, addresses and size through the real ABI, and the banner in the bytes', (t) => {
  const image = fakeKernelImage({ release: '6.12.91' });
  const lib = buildFakeLibkrunfw(path.join(tmp(t), 'libkrunfw.so.5'), { kernel: image, abi: 5 });
  const facts = readKrunfw(lib);
  assert.equal(facts.abiVersion, 5);
  assert.equal(facts.kernelBytes, image.length);
  assert.equal(facts.loadAddr, 0x1000000);
  assert.equal(facts.entryAddr, 0x1000123);
  assert.equal(facts.kernel?.release, '6.12.91');
  assert.equal(facts.ikconfig, undefined);
  const other = buildFakeLibkrunfw(path.join(tmp(t), 'libkrunfw.so.4'), { kernel: image, abi: 4 });
  assert.equal(readKrunfw(other).abiVersion, 4);
});

test('readKrunfw: not a library, or a library without the ABI, is a HostError naming it', (t) => {
  const dir = tmp(t);
  const notLib = path.join(dir, 'libkrunfw.so.5');
  fs.writeFileSync(notLib, 'not an ELF file');
  assert.throws(
    () => readKrunfw(notLib),
    (e: unknown) => e instanceof HostError && e.message === `cannot load ${notLib}` && !!e.hint,
  );
  const noKernel = buildFakeLibkrunfw(path.join(dir, 'libkrunfw-nokernel.so'), {
    kernel: fakeKernelImage({}),
    omitGetKernel: true,
  });
  assert.throws(
    () => readKrunfw(noKernel),
    (e: unknown) =>
      e instanceof HostError && /has no function krunfw_get_kernel: it is not a libkrunfw/.test(e.message),
  );
});

test('kernel options: unknown without kernel.config or IKCONFIG, and the gateway is refused with the build as the fix', async (t) => {
  const dir = tmp(t);
  buildFakeLibkrunfw(path.join(dir, 'libkrunfw.so.5'), { kernel: fakeKernelImage({ release: '6.12.91' }) });
  const report = await inspectLibkrunfw(await readRuntimeDir(dir, 'env', 'linux'));
  assert.equal(report.options.known, false);
  const refusal = gatewayRefusal(report);
  assert.match(
    refusal?.message ?? '',
    /^libkrunfw libkrunfw\.so\.5: kernel options unknown \(no kernel\.config beside libkrunfw\.so\.5 and no CONFIG_IKCONFIG in its kernel\)$/,
  );
  assert.match(refusal?.hint ?? '', /^openshell-vm kernel build --target libkrunfw/);
  const lines = describeLibkrunfw(report);
  assert.ok(lines.includes('libkrunfw-abi: 5'));
  assert.ok(lines.some((l) => /^kernel: Linux 6\.12\.91, 0\.0 MB \(\d+ bytes/.test(l)));
  assert.ok(lines.some((l) => l.startsWith('kernel-options: unknown (')));
});

test('kernel options from the kernel IKCONFIG: checked built-in only against the gateway fragment', async (t) => {
  const ok = tmp(t);
  buildFakeLibkrunfw(path.join(ok, 'libkrunfw.so.5'), {
    kernel: fakeKernelImage({ release: '6.12.91', ikconfig: await gatewayConfig() }),
  });
  const good = await inspectLibkrunfw(await readRuntimeDir(ok, 'env', 'linux'));
  assert.equal(good.options.known && good.options.source.endsWith('libkrunfw.so.5 (IKCONFIG)'), true);
  assert.equal(gatewayRefusal(good), undefined);

  const lacking = tmp(t);
  buildFakeLibkrunfw(path.join(lacking, 'libkrunfw.so.5'), {
    kernel: fakeKernelImage({
      release: '6.12.91',
      ikconfig: `${await gatewayConfig(['CONFIG_BRIDGE'])}CONFIG_VETH=m\n`,
    }),
  });
  const bad = gatewayRefusal(await inspectLibkrunfw(await readRuntimeDir(lacking, 'env', 'linux')));
  assert.match(
    bad?.message ?? '',
    /lacks 2 option\(s\) the gateway needs built in: .*CONFIG_BRIDGE.*CONFIG_VETH|lacks 2 option\(s\) the gateway needs built in: .*CONFIG_VETH.*CONFIG_BRIDGE/,
  );
});

test('kernel options from kernel.config beside the library win over the image', async (t) => {
  const dir = tmp(t);
  buildFakeLibkrunfw(path.join(dir, 'libkrunfw.so.5'), {
    kernel: fakeKernelImage({ release: '6.12.91', ikconfig: await gatewayConfig(['CONFIG_VETH']) }),
  });
  fs.writeFileSync(path.join(dir, 'kernel.config'), await gatewayConfig());
  const report = await inspectLibkrunfw(await readRuntimeDir(dir, 'env', 'linux'));
  assert.equal(report.options.known && report.options.source, path.join(dir, 'kernel.config'));
  assert.equal(gatewayRefusal(report), undefined);
});

test('libkrunfwGatewayRefusal: an unreadable libkrunfw is a refusal too; a complete kernel none', async (t) => {
  const broken = tmp(t);
  buildFakeLibkrunfw(path.join(broken, 'libkrunfw.so.5'), {
    kernel: fakeKernelImage({}),
    omitGetKernel: true,
  });
  const refusal = await libkrunfwGatewayRefusal(await readRuntimeDir(broken, 'env', 'linux'));
  assert.match(refusal?.message ?? '', /^its libkrunfw cannot be read: .* has no function krunfw_get_kernel/);
  assert.match(refusal?.hint ?? '', /^openshell-vm kernel build --target libkrunfw/);
  const good = tmp(t);
  buildFakeLibkrunfw(path.join(good, 'libkrunfw.so.5'), { kernel: fakeKernelImage({ release: '6.12.91' }) });
  fs.writeFileSync(path.join(good, 'kernel.config'), await gatewayConfig());
  assert.equal(await libkrunfwGatewayRefusal(await readRuntimeDir(good, 'env', 'linux')), undefined);
});
