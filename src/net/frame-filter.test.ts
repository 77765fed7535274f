import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createFrameGuard, type DropReason, ipv4ToNumber } from './frame-filter.ts';
import { GVPROXY_NET } from './gvproxy.ts';

// Crafted frames, built byte by byte, against the guard of gvproxy's network.
const GUEST_MAC = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
const GATEWAY_MAC = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];
const BROADCAST_MAC = [255, 255, 255, 255, 255, 255];
const TCP = 6;
const UDP = 17;
const ICMP = 1;
const SYN = 0x02;
const ACK = 0x10;

interface Ipv4Options {
  src?: string;
  dst: string;
  protocol: number;
  /** The flags + fragment offset field. */
  fragment?: number;
  options?: number[];
  dstMac?: number[];
  payload: number[];
}

function ipv4(o: Ipv4Options): Buffer {
  const header = 20 + (o.options?.length ?? 0);
  const total = header + o.payload.length;
  const b = Buffer.alloc(14 + total);
  b.set(o.dstMac ?? GATEWAY_MAC, 0);
  b.set(GUEST_MAC, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x40 | (header / 4);
  b.writeUInt16BE(total, 16);
  b.writeUInt16BE(o.fragment ?? 0x4000, 20); // DF
  b[22] = 64;
  b[23] = o.protocol;
  b.writeUInt32BE(ipv4ToNumber(o.src ?? GVPROXY_NET.guest), 26);
  b.writeUInt32BE(ipv4ToNumber(o.dst), 30);
  b.set(o.options ?? [], 34);
  b.set(o.payload, 14 + header);
  return b;
}

function ports(src: number, dst: number): number[] {
  return [src >> 8, src & 255, dst >> 8, dst & 255];
}
const tcpHeader = (src: number, dst: number, flags = SYN) => [
  ...ports(src, dst),
  ...Array(9).fill(0),
  flags,
  0,
  0,
  0,
  0,
  0,
  0,
];
const udpHeader = (src: number, dst: number) => [...ports(src, dst), 0, 8, 0, 0];

const tcpTo = (dst: string, port: number, extra: Partial<Ipv4Options> = {}) =>
  ipv4({ dst, protocol: TCP, payload: tcpHeader(40000, port), ...extra });
const udpTo = (dst: string, port: number, extra: Partial<Ipv4Options> = {}) =>
  ipv4({ dst, protocol: UDP, payload: udpHeader(40000, port), ...extra });

function ethernet(type: number, payload: number[], dstMac = GATEWAY_MAC): Buffer {
  const b = Buffer.alloc(14 + payload.length);
  b.set(dstMac, 0);
  b.set(GUEST_MAC, 6);
  b.writeUInt16BE(type, 12);
  b.set(payload, 14);
  return b;
}

const guard = () => createFrameGuard({ gateway: GVPROXY_NET.gateway, subnet: GVPROXY_NET.subnet });
const GW = GVPROXY_NET.gateway;

function assertDropped(frame: Buffer, reason: DropReason, g = guard()) {
  const v = g.classifyGuestFrame(frame);
  assert.equal(v.pass, false, 'dropped');
  if (!v.pass) assert.equal(v.reason, reason, v.detail);
}
const assertPassed = (frame: Buffer, g = guard()) => {
  const v = g.classifyGuestFrame(frame);
  assert.ok(v.pass, v.pass ? '' : `passed, not dropped (${v.reason}: ${v.detail})`);
};

test('TCP to gvproxy API (192.168.127.1:80) is dropped, by IP whatever the MAC', () => {
  assertDropped(tcpTo(GW, 80), 'to-gateway');
  assertDropped(tcpTo(GW, 80, { dstMac: BROADCAST_MAC }), 'to-gateway');
  assertDropped(tcpTo(GW, 80, { dstMac: GUEST_MAC }), 'to-gateway');
  const v = guard().classifyGuestFrame(tcpTo(GW, 80));
  assert.equal(v.pass ? '' : v.detail, 'tcp to 192.168.127.1:80');
});

test('any other TCP or UDP port on the gateway is dropped too; DNS and DHCP pass', () => {
  for (const port of [22, 443, 8080, 65535]) assertDropped(tcpTo(GW, port), 'to-gateway');
  assertDropped(udpTo(GW, 80), 'to-gateway');
  assertPassed(tcpTo(GW, 53));
  assertPassed(udpTo(GW, 53));
  assertPassed(udpTo(GW, 67));
  // A DHCP discover: 0.0.0.0:68 -> 255.255.255.255:67 in a broadcast frame.
  assertPassed(
    ipv4({
      src: '0.0.0.0',
      dst: '255.255.255.255',
      protocol: UDP,
      payload: udpHeader(68, 67),
      dstMac: BROADCAST_MAC,
    }),
  );
  assertPassed(ipv4({ dst: GW, protocol: ICMP, payload: [8, 0, 0, 0, 0, 1, 0, 1] }));
});

test('broadcast, multicast, network, loopback and 0.0.0.0 destinations: only DHCP', () => {
  for (const dst of [
    '255.255.255.255',
    '192.168.127.255',
    '192.168.127.0',
    '0.0.0.0',
    '224.0.0.251',
    '127.0.0.1',
  ]) {
    assertDropped(tcpTo(dst, 80), 'to-stack');
    assertDropped(udpTo(dst, 53), 'to-stack');
    assertDropped(ipv4({ dst, protocol: ICMP, payload: [8, 0, 0, 0] }), 'to-stack');
  }
});

test("the guest's outbound traffic and the host's loopback address pass", () => {
  assertPassed(tcpTo('93.184.216.34', 80));
  assertPassed(tcpTo(GVPROXY_NET.host, 80));
  assertPassed(udpTo('1.1.1.1', 53));
  // Fragments to elsewhere are the guest's business (gvisor reassembles per destination).
  assertPassed(tcpTo('93.184.216.34', 80, { fragment: 0x2000 }));
});

test('IPv4 fragments to the gateway are dropped, the first and the later ones', () => {
  assertDropped(tcpTo(GW, 80, { fragment: 0x2000 }), 'fragment'); // MF, offset 0
  assertDropped(
    ipv4({ dst: GW, protocol: TCP, fragment: 0x0003, payload: [0, 0, 0, 0, 0, 0, 0, 0] }),
    'fragment',
  );
  assertDropped(udpTo(GW, 53, { fragment: 0x2000 }), 'fragment');
  assertDropped(udpTo('255.255.255.255', 67, { fragment: 0x0001 }), 'fragment');
});

test('IPv4 options (source routing) are dropped everywhere', () => {
  const lsrr = [0x83, 7, 4, 192, 168, 127, 1, 0];
  assertDropped(tcpTo('10.9.9.9', 80, { options: lsrr }), 'ip-options');
  assertDropped(tcpTo(GW, 53, { options: lsrr }), 'ip-options');
});

test('VLAN-tagged, QinQ, IPv6, 802.3-length and unknown ethertypes are dropped; ARP passes', () => {
  const inner = tcpTo(GW, 80).subarray(12);
  assertDropped(ethernet(0x8100, [0, 1, ...inner]), 'ethertype');
  assertDropped(ethernet(0x88a8, [0, 1, 0x81, 0, 0, 1, ...inner]), 'ethertype');
  assertDropped(ethernet(0x86dd, Array(40).fill(0)), 'ethertype');
  assertDropped(ethernet(0x002e, [0xaa, 0xaa, 3, 0, 0, 0, 8, 0, ...inner.subarray(2)]), 'ethertype');
  assertDropped(ethernet(0x88cc, [1, 2, 3]), 'ethertype');
  const arp = [0, 1, 8, 0, 6, 4, 0, 1, ...GUEST_MAC, 192, 168, 127, 2, 0, 0, 0, 0, 0, 0, 192, 168, 127, 1];
  assertPassed(ethernet(0x0806, arp, BROADCAST_MAC));
});

test('short and malformed frames are dropped', () => {
  for (const n of [0, 1, 13]) assertDropped(Buffer.alloc(n), 'short');
  assertDropped(ethernet(0x0800, Array(10).fill(0)), 'malformed');
  const v6in4 = tcpTo(GW, 80);
  v6in4[14] = 0x65;
  assertDropped(v6in4, 'malformed');
  const tooLong = tcpTo(GW, 53);
  tooLong.writeUInt16BE(1500, 16);
  assertDropped(tooLong, 'malformed');
  const tooShort = tcpTo(GW, 53);
  tooShort.writeUInt16BE(19, 16);
  assertDropped(tooShort, 'malformed');
  // A TCP header cut to its ports: cannot be checked, dropped.
  assertDropped(ipv4({ dst: GW, protocol: TCP, payload: ports(40000, 53) }), 'malformed');
  // Other IP protocols to the gateway (IGMP, IP-in-IP).
  assertDropped(ipv4({ dst: GW, protocol: 4, payload: Array(20).fill(0) }), 'to-gateway');
});

/** A frame gvproxy sends the guest: from the gateway. */
function fromGateway(protocol: number, srcPort: number, dstPort: number, flags = SYN): Buffer {
  const f = ipv4({
    src: GW,
    dst: GVPROXY_NET.guest,
    protocol,
    payload: protocol === TCP ? tcpHeader(srcPort, dstPort, flags) : udpHeader(srcPort, dstPort),
    dstMac: GUEST_MAC,
  });
  return f;
}
const reply = (protocol: number, guestPort: number, gatewayPort: number, flags = SYN | ACK) =>
  ipv4({
    dst: GW,
    protocol,
    payload: protocol === TCP ? tcpHeader(guestPort, gatewayPort, flags) : udpHeader(guestPort, gatewayPort),
  });

test("replies to a forwarded connection gvproxy opened pass; the same ports un-learned don't", () => {
  const g = guard();
  assertDropped(reply(TCP, 8080, 40123), 'to-gateway', g);
  g.learnFromGatewayFrame(fromGateway(TCP, 40123, 8080));
  assertPassed(reply(TCP, 8080, 40123), g);
  assertPassed(reply(TCP, 8080, 40123, ACK), g);
  assertDropped(reply(TCP, 8081, 40123), 'to-gateway', g);
  assertDropped(reply(UDP, 8080, 40123), 'to-gateway', g);
  // Only a SYN opens a flow; a SYN-ACK (gvproxy answering) or a low source port does not.
  g.learnFromGatewayFrame(fromGateway(TCP, 40200, 9000, SYN | ACK));
  assertDropped(reply(TCP, 9000, 40200), 'to-gateway', g);
  g.learnFromGatewayFrame(fromGateway(TCP, 80, 9000));
  assertDropped(reply(TCP, 9000, 80), 'to-gateway', g);
  // UDP forwards: learned from gvproxy's datagram.
  g.learnFromGatewayFrame(fromGateway(UDP, 50000, 5353));
  assertPassed(reply(UDP, 5353, 50000), g);
  // Frames not from the gateway's address teach nothing.
  const spoofed = fromGateway(TCP, 41000, 7000);
  spoofed.writeUInt32BE(ipv4ToNumber('10.0.0.1'), 26);
  g.learnFromGatewayFrame(spoofed);
  assertDropped(reply(TCP, 7000, 41000), 'to-gateway', g);
  // Nothing the guest sends teaches the guard: a "SYN from the gateway" coming from the guest is
  // classified (to the guest's own address: passes on to gvproxy's switch) but not learned.
  assertPassed(fromGateway(TCP, 42000, 80), g);
  assertDropped(reply(TCP, 80, 42000), 'to-gateway', g);
});

test('the flow table is bounded, the oldest flow goes first', () => {
  const g = createFrameGuard({ gateway: GW, subnet: GVPROXY_NET.subnet });
  for (let port = 20000; port < 20000 + 16_384 + 5; port++)
    g.learnFromGatewayFrame(fromGateway(TCP, port, 8080));
  assert.equal(g.flows.size, 16_384);
  assertDropped(reply(TCP, 8080, 20000), 'to-gateway', g);
  assertPassed(reply(TCP, 8080, 20000 + 16_384 + 4), g);
});

test('the guard rejects addresses it cannot parse', () => {
  assert.throws(
    () => createFrameGuard({ gateway: '192.168.127', subnet: GVPROXY_NET.subnet }),
    /not an IPv4/,
  );
  assert.throws(() => createFrameGuard({ gateway: GW, subnet: '192.168.127.0' }), /not an IPv4 subnet/);
});
