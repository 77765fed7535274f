import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { VmSpec } from '../backend.ts';
import {
  kernelCommandLine,
  optValue,
  partialStateFile,
  qemuArgs,
  saveStateUri,
  virtiofsdArgs,
} from './argv.ts';

const spec: VmSpec = {
  arch: 'x86_64',
  accel: 'tcg',
  vcpus: 2,
  memMib: 512,
  kernel: '/k/vmlinuz',
  initramfs: '/k/initrd',
  guestMode: 'exec',
  kernelArgs: ['loglevel=4'],
  rootDir: '/root fs',
  rootMode: 'overlay',
  agentSocket: '/run,dir/agent.sock',
  network: { mode: 'none' },
  runDir: '/run',
  socketDir: '/run',
  consoleLog: '/run/console.log',
};

const after = (argv: string[], flag: string) => argv.filter((_, i) => argv[i - 1] === flag);

test("x86_64: microvm with shared memfd memory, virtio-fs root, the agent's serial port, -no-reboot", () => {
  const argv = qemuArgs(spec, { virtiofsSocket: '/run/vfs.sock' });
  assert.deepEqual(after(argv, '-M'), ['microvm,memory-backend=mem,pit=on,pic=on']);
  assert.deepEqual(after(argv, '-accel'), ['tcg']);
  assert.deepEqual(after(argv, '-object'), ['memory-backend-memfd,id=mem,size=512M,share=on']);
  assert.ok(argv.includes('-no-reboot'));
  assert.deepEqual(after(argv, '-serial'), ['file:/run/console.log']);
  assert.ok(after(argv, '-device').includes('vhost-user-fs-device,chardev=vfs,tag=ovmroot'));
  // The agent's port is the only virtio-serial port (no output or request ports any more).
  assert.deepEqual(
    after(argv, '-device').filter((d) => d.startsWith('virtserialport') || d.startsWith('virtio-serial')),
    ['virtio-serial-device', 'virtserialport,chardev=agent,name=org.openshell.agent'],
  );
  // A comma in a path is doubled, QEMU's escape.
  assert.deepEqual(
    after(argv, '-chardev').filter((c) => c.includes('id=agent')),
    ['socket,id=agent,path=/run,,dir/agent.sock'],
  );
  // Without an agent socket, no virtio-serial device at all.
  const bare = qemuArgs({ ...spec, agentSocket: undefined }, { virtiofsSocket: '/run/vfs.sock' });
  assert.ok(!bare.some((a) => a.includes('virtio-serial') || a.includes('virtserialport')));
  assert.equal(after(argv, '-cpu').length, 0);
});

test('aarch64: the virt machine with a cortex-a72 under TCG and -cpu host with acceleration', () => {
  const tcg = qemuArgs({ ...spec, arch: 'aarch64' }, { virtiofsSocket: '/s' });
  assert.deepEqual(after(tcg, '-M'), ['virt,memory-backend=mem']);
  assert.deepEqual(after(tcg, '-cpu'), ['cortex-a72']);
  assert.deepEqual(
    after(qemuArgs({ ...spec, arch: 'aarch64', accel: 'hvf' }, { virtiofsSocket: '/s' }), '-cpu'),
    ['host'],
  );
});

test('the kernel command line names the console, the root share and the mode', () => {
  assert.equal(
    kernelCommandLine(spec),
    'console=ttyS0 reboot=t panic=-1 ovm.tag=ovmroot ovm.root=overlay ovm.mode=exec ovm.net=none loglevel=4',
  );
  assert.match(kernelCommandLine({ ...spec, arch: 'aarch64' }), /^console=ttyAMA0 panic=-1 /);
});

test("handoff 'krun': no ovm.mode/ovm.net words; libkrun's environment words instead (the kernel gives them to init)", () => {
  const gateway: VmSpec = { ...spec, guestMode: 'gateway', rootMode: 'rw' };
  const line = kernelCommandLine(
    { ...gateway, network: { mode: 'gvproxy', socketPath: '/g', mac: '5a:94:ef:e4:0c:ee' } },
    'krun',
  );
  assert.equal(
    line,
    'console=ttyS0 reboot=t panic=-1 ovm.tag=ovmroot ovm.root=rw KRUN_INIT=/sbin/ovm-init KRUN_INIT_PID1=1 OVM_MODE=gateway OVM_NET=gvproxy loglevel=4',
  );
  assert.doesNotMatch(line, /ovm\.(mode|net)=/);
  // Through qemuArgs too: -append carries the same line.
  assert.ok(qemuArgs(gateway, { virtiofsSocket: '/s' }, 'krun').some((a) => a.includes('OVM_MODE=gateway')));
});

test('virtiofsd argv for the C and the Rust implementations', () => {
  assert.deepEqual(virtiofsdArgs('/s', '/d', 'c'), [
    '--socket-path=/s',
    '-o',
    'source=/d',
    '-o',
    'cache=auto',
    '-o',
    'sandbox=chroot',
  ]);
  assert.deepEqual(virtiofsdArgs('/s', '/d', 'rust'), [
    '--socket-path=/s',
    '--shared-dir=/d',
    '--cache=auto',
    '--sandbox=chroot',
  ]);
  assert.equal(optValue('a,b'), 'a,,b');
});

test("networks: virtio-net with the fixed MAC on gvproxy's stream socket, on QEMU slirp with host forwards, or none", () => {
  const mac = '5a:94:ef:e4:0c:ee';
  const gv = qemuArgs(
    { ...spec, network: { mode: 'gvproxy', socketPath: '/r/gv.sock', mac } },
    { virtiofsSocket: '/s' },
  );
  assert.deepEqual(after(gv, '-netdev'), ['stream,id=n0,server=off,addr.type=unix,addr.path=/r/gv.sock']);
  assert.ok(after(gv, '-device').includes(`virtio-net-device,netdev=n0,mac=${mac}`));
  const user = qemuArgs(
    {
      ...spec,
      network: {
        mode: 'user',
        mac,
        forwards: [{ hostAddress: '127.0.0.1', hostPort: 18080, guestPort: 80 }],
      },
    },
    { virtiofsSocket: '/s' },
  );
  assert.deepEqual(after(user, '-netdev'), ['user,id=n0,hostfwd=tcp:127.0.0.1:18080-:80']);
  assert.equal(after(qemuArgs(spec, { virtiofsSocket: '/s' }), '-netdev').length, 0);
});

test("rootMode 'disk': the image on virtio-blk, QMP, plain RAM, no virtio-fs; a saved state is resumed", () => {
  const disk: VmSpec = {
    ...spec,
    rootMode: 'disk',
    rootDisk: { path: "/inst/snap,shot/it's.raw", discardWrites: false },
  };
  const argv = qemuArgs(disk, { virtiofsSocket: '/run/vfs.sock', qmpSocket: '/run/qmp.sock' });
  assert.deepEqual(after(argv, '-drive'), [
    "file=/inst/snap,,shot/it's.raw,format=raw,if=none,id=root,cache=writeback,discard=unmap",
  ]);
  assert.ok(after(argv, '-device').includes('virtio-blk-device,drive=root'));
  assert.deepEqual(after(argv, '-qmp'), ['unix:/run/qmp.sock,server=on,wait=off']);
  assert.deepEqual(after(argv, '-object'), ['memory-backend-ram,id=mem,size=512M']);
  assert.ok(!argv.some((a) => a.includes('vhost-user-fs') || a.includes('vfs.sock')));
  assert.match(after(argv, '-append')[0] ?? '', /ovm\.root=disk/);
  assert.deepEqual(after(argv, '-incoming'), []);

  const restore = qemuArgs(
    { ...disk, rootDisk: { path: '/inst/disk.raw', discardWrites: true }, restoreState: "/inst/a b/it's" },
    { virtiofsSocket: '/run/vfs.sock', qmpSocket: '/run/qmp.sock' },
  );
  // The writes of a restored VM go to a throwaway overlay; the state is one quoted shell word.
  assert.match(after(restore, '-drive')[0] ?? '', /,snapshot=on$/);
  assert.deepEqual(after(restore, '-incoming'), [`exec:cat -- '/inst/a b/it'\\''s'`]);
});

test('a disk root without its image or QMP socket, or a saved state without a disk root, is refused', () => {
  assert.throws(() => qemuArgs({ ...spec, rootMode: 'disk' }, { virtiofsSocket: '/v', qmpSocket: '/q' }));
  assert.throws(() =>
    qemuArgs(
      { ...spec, rootMode: 'disk', rootDisk: { path: '/d', discardWrites: true } },
      { virtiofsSocket: '/v' },
    ),
  );
  assert.throws(() => qemuArgs({ ...spec, restoreState: '/s' }, { virtiofsSocket: '/v' }));
});

test("the state writer (QEMU's exec: URI, run by /bin/sh -c) fills <state>.partial and renames it only once it has all", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "ovm-writer-it's "));
  const file = path.join(dir, 'state');
  const uri = saveStateUri(file);
  assert.ok(uri.startsWith('exec:'));
  const child = spawn('/bin/sh', ['-c', uri.slice('exec:'.length)], {
    stdio: ['pipe', 'inherit', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  const chunk = Buffer.alloc(1 << 20, 7);
  await new Promise<void>((r) => child.stdin.write(chunk, () => r()));
  // Mid-stream: only the partial file, never the final name.
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(await fs.readdir(dir), ['state.partial']);
  child.stdin.end(chunk);
  assert.equal(await exited, 0);
  assert.deepEqual(await fs.readdir(dir), ['state']);
  assert.equal((await fs.stat(file)).size, 2 << 20);
  assert.equal(partialStateFile(file), `${file}.partial`);
  await fs.rm(dir, { recursive: true });
});
