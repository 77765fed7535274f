import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { GvproxyRelay } from './frame-relay.ts';
import { encodeRecord, FrameStream } from './qemu-stream.ts';

// The relay between a VMM stand-in (a client socket) and a gvproxy stand-in (a server socket that
// accepts one connection, as gvproxy's -listen-qemu does).

function frame(
  dst: string,
  protocol: number,
  srcPort: number,
  dstPort: number,
  src = '192.168.127.2',
  flags = 0x02,
) {
  const b = Buffer.alloc(14 + 40);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(40, 16);
  b[23] = protocol;
  b.set(src.split('.').map(Number), 26);
  b.set(dst.split('.').map(Number), 30);
  b.writeUInt16BE(srcPort, 34);
  b.writeUInt16BE(dstPort, 36);
  b[47] = flags;
  return b;
}

async function setup(t: TestContext) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-relay-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const gvPath = path.join(dir, 'gv.sock');
  const vmPath = path.join(dir, 'vm.sock');
  let resolveGv!: (s: net.Socket) => void;
  const gvConn = new Promise<net.Socket>((r) => (resolveGv = r));
  const gvServer = net.createServer((s) => {
    gvServer.close();
    resolveGv(s);
  });
  await new Promise<void>((r) => gvServer.listen(gvPath, r));
  const drops: string[] = [];
  const relay = await GvproxyRelay.start({
    listenPath: vmPath,
    gvproxyPath: gvPath,
    onDrop: (v) => drops.push(v.detail),
  });
  t.after(() => relay.close());
  const gv = await gvConn;
  const vm = net.connect(vmPath);
  await new Promise((r) => vm.once('connect', r));
  t.after(() => {
    vm.destroy();
    gv.destroy();
  });
  return { relay, gv, vm, vmPath, drops };
}

/** Collects the frames arriving on `socket` until `count` came. */
function receive(socket: net.Socket, count: number): Promise<Buffer[]> {
  const stream = new FrameStream();
  const frames: Buffer[] = [];
  return new Promise((resolve) => {
    const onData = (chunk: Buffer) => {
      stream.push(chunk, (f) => {
        frames.push(Buffer.from(f));
        return true;
      });
      if (frames.length >= count) {
        socket.off('data', onData);
        resolve(frames);
      }
    };
    socket.on('data', onData);
  });
}

test('relay: guest frames to the API are dropped, the rest pass both ways; replies to gvproxy-opened flows pass', async (t) => {
  const { relay, gv, vm, drops } = await setup(t);
  const api = frame('192.168.127.1', 6, 40000, 80);
  const dns = frame('192.168.127.1', 17, 40001, 53);
  const out = frame('93.184.216.34', 6, 40002, 443);
  const got = receive(gv, 2);
  vm.write(Buffer.concat([api, dns, out].map(encodeRecord)));
  assert.deepEqual(await got, [dns, out]);
  assert.deepEqual(drops, ['tcp to 192.168.127.1:80']);

  // gvproxy dials a forwarded port (its SYN reaches the VM unchanged), the guest's SYN-ACK passes.
  const syn = frame('192.168.127.2', 6, 41234, 8080, '192.168.127.1');
  const toVm = receive(vm, 1);
  gv.write(encodeRecord(syn));
  assert.deepEqual(await toVm, [syn]);
  const synAck = frame('192.168.127.1', 6, 8080, 41234, '192.168.127.2', 0x12);
  const back = receive(gv, 1);
  vm.write(encodeRecord(synAck));
  assert.deepEqual(await back, [synAck]);
  assert.deepEqual(relay.stats().droppedBy, { 'to-gateway': 1 });
});

test('relay: the VMM socket stops listening once the VMM connected', async (t) => {
  const { relay, vmPath } = await setup(t);
  await new Promise((r) => setImmediate(r));
  assert.equal(relay.isListening, false);
  assert.equal(fs.existsSync(vmPath), false, 'no socket file left to connect to');
});

test('relay: a slow gvproxy pauses the VM side (backpressure), and nothing is lost', async (t) => {
  const { gv, vm } = await setup(t);
  gv.pause();
  const record = encodeRecord(frame('93.184.216.34', 6, 40000, 443));
  const total = 20_000;
  let written = 0;
  let full = false;
  while (written < total && !full) {
    full = !vm.write(record);
    written++;
  }
  // Keep writing until the VM side's own buffer holds data: the relay stopped reading it.
  await new Promise((r) => setTimeout(r, 200));
  while (written < total) {
    vm.write(record);
    written++;
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(vm.writableLength > 0, 'the relay stopped reading the VM side');
  const got = receive(gv, total);
  gv.resume();
  const frames = await got;
  assert.equal(frames.length, total);
  assert.ok(frames.every((f) => f.equals(record.subarray(4))));
});

test('relay: the VM closing closes gvproxy side, and the other way round', async (t) => {
  const a = await setup(t);
  const gvClosed = new Promise((r) => a.gv.once('close', r));
  a.vm.end();
  await gvClosed;
  assert.equal((await a.relay.ended).by, 'vm');

  const b = await setup(t);
  const vmClosed = new Promise((r) => b.vm.once('close', r));
  b.gv.destroy();
  await vmClosed;
  assert.equal((await b.relay.ended).by, 'gvproxy');
});

test('relay: garbage framing from the VM ends the relay with the reason', async (t) => {
  const { relay, vm } = await setup(t);
  vm.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0]));
  const end = await relay.ended;
  assert.equal(end.by, 'vm');
  assert.match(end.error?.message ?? '', /bad framing from the vm/);
});

test('relay: gvproxy not there is a HostError naming its socket', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-relay-'));
  await assert.rejects(
    GvproxyRelay.start({ listenPath: path.join(dir, 'vm.sock'), gvproxyPath: path.join(dir, 'none.sock') }),
    (err: Error) => err.name === 'HostError' && /none\.sock/.test(err.message),
  );
  assert.equal(fs.existsSync(path.join(dir, 'vm.sock')), false);
  fs.rmSync(dir, { recursive: true });
});

test('relay: a gvproxy socket that is bound but not yet listening (its start-up window) is waited for, not refused', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-relay-'));
  const upstream = path.join(dir, 'gv.sock');
  // bind() now, listen() 400 ms later: what gvproxy's start looks like from outside.
  const late = spawn('python3', [
    '-c',
    'import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\nprint("bound",flush=True)\ntime.sleep(0.4)\ns.listen(1)\nc,_=s.accept()\nc.recv(1)\n',
    upstream,
  ]);
  try {
    await new Promise((r) => late.stdout.once('data', r));
    const relay = await GvproxyRelay.start({ listenPath: path.join(dir, 'vm.sock'), gvproxyPath: upstream });
    await relay.close();
  } finally {
    late.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
