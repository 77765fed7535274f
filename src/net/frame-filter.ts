/**
 * The guard between the VMM and gvproxy (pure: frames in, verdicts out; the relay in
 * frame-relay.ts does the I/O).
 *
 * Every gvproxy (0.8.x included) serves its forwarder API, unauthenticated, on
 * 192.168.127.1:80 *inside* the virtual network (cmd/gvproxy/main.go: `vn.Listen("tcp",
 * GatewayIP:80)`, unconditional, whatever -listen/-services say). A guest that reaches it can open
 * host listeners and remove the user's forwards. A rule inside the guest is undone by guest root,
 * so the host drops such frames before gvproxy sees them.
 *
 * What gvproxy's own stack (gvisor: IPv4 and ARP only, spoofing and promiscuous on) may receive
 * from the guest:
 * - ARP: always (the guest resolves the gateway's MAC).
 * - IPv4 to the gateway: DHCP (UDP 67), DNS (UDP/TCP 53), ICMP, and TCP/UDP replies to a flow the
 *   gateway opened (gvproxy dials forwarded ports from 192.168.127.1:<ephemeral>, learned from
 *   the frames gvproxy sends: see FlowTable). Nothing else, and no fragments (a fragment's ports
 *   are not in it, and reassembly would be gvproxy's).
 * - IPv4 to broadcast, multicast, 0.0.0.0, the subnet's network/broadcast address or 127/8 (all
 *   handled by gvproxy's stack, never a forward): DHCP only.
 * - IPv4 with options: never (Linux sends them only for IGMP; source routing must not reach gvisor).
 * - Any other ethertype (IPv6, VLAN tags, QinQ, 802.3 length frames, ...): never. gvproxy has no
 *   receiver for them, and one VM per gvproxy means no other port on its switch needs them.
 * Everything else (the guest's outbound traffic and the host's loopback at 192.168.127.254) passes.
 */

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
const ETH_HEADER_BYTES = 14;
const IPV4_HEADER_BYTES = 20;
const PROTO_ICMP = 1;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PORT_DHCP_SERVER = 67;
const PORT_DNS = 53;
/** Below this, a gateway port is a service, not a flow gvproxy opened (gvisor dials from 16000 up). */
const FIRST_FLOW_PORT = 1024;

export type DropReason =
  /** Shorter than an Ethernet header. */
  | 'short'
  /** Not IPv4 or ARP. */
  | 'ethertype'
  /** Not a well-formed IPv4 header, or a transport header cut short. */
  | 'malformed'
  /** IPv4 options. */
  | 'ip-options'
  /** A fragment for gvproxy's own stack. */
  | 'fragment'
  /** To the gateway address, not DHCP, DNS, ICMP or a reply to a flow it opened (its API is here). */
  | 'to-gateway'
  /** To broadcast/multicast/network/loopback addresses, not DHCP. */
  | 'to-stack';

export type Verdict =
  | { readonly pass: true }
  | { readonly pass: false; readonly reason: DropReason; readonly detail: string };

const PASS: Verdict = Object.freeze({ pass: true });

export interface GuardAddresses {
  /** gvproxy's own address (DHCP, DNS, its in-network API). */
  readonly gateway: string;
  /** The virtual network, as a.b.c.d/len. */
  readonly subnet: string;
}

/** An IPv4 dotted quad as an unsigned 32-bit number. */
export function ipv4ToNumber(address: string): number {
  const parts = address.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255))
    throw new Error(`not an IPv4 address: '${address}'`);
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function numberToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * Flows gvproxy opened towards the guest (a forwarded port: gateway:<ephemeral> -> guest:<port>),
 * learned from gvproxy's frames only, so the guest's replies to them pass. Bounded: the oldest
 * entry goes when full (a forgotten flow's replies are dropped; gvisor then retransmits nothing
 * useful, so the cap is generous).
 */
export class FlowTable {
  readonly #max: number;
  readonly #flows = new Set<number>();

  constructor(max = 16_384) {
    this.#max = max;
  }

  static key(protocol: number, gatewayPort: number, guestPort: number): number {
    return (protocol === PROTO_TCP ? 0 : 2 ** 32) + gatewayPort * 65_536 + guestPort;
  }

  add(protocol: number, gatewayPort: number, guestPort: number): void {
    const key = FlowTable.key(protocol, gatewayPort, guestPort);
    if (this.#flows.has(key)) return;
    if (this.#flows.size >= this.#max) {
      const oldest = this.#flows.values().next().value;
      if (oldest !== undefined) this.#flows.delete(oldest);
    }
    this.#flows.add(key);
  }

  has(protocol: number, gatewayPort: number, guestPort: number): boolean {
    return this.#flows.has(FlowTable.key(protocol, gatewayPort, guestPort));
  }

  get size(): number {
    return this.#flows.size;
  }
}

export interface FrameGuard {
  /** The verdict on one Ethernet frame the guest sent towards gvproxy. */
  classifyGuestFrame(frame: Uint8Array): Verdict;
  /** Looks at one frame gvproxy sent the guest (it always passes) and learns the flows it opens. */
  learnFromGatewayFrame(frame: Uint8Array): void;
  readonly flows: FlowTable;
}

export function createFrameGuard(addresses: GuardAddresses, flows = new FlowTable()): FrameGuard {
  const gateway = ipv4ToNumber(addresses.gateway);
  const [base = '', lenText = ''] = addresses.subnet.split('/');
  const prefix = Number(lenText);
  if (!Number.isInteger(prefix) || prefix < 8 || prefix > 30)
    throw new Error(`not an IPv4 subnet: '${addresses.subnet}'`);
  const hostBits = 2 ** (32 - prefix);
  const network = ipv4ToNumber(base) - (ipv4ToNumber(base) % hostBits);
  const subnetBroadcast = network + hostBits - 1;

  const isStackAddress = (dst: number): boolean =>
    dst === gateway ||
    dst === 0xffffffff ||
    dst === subnetBroadcast ||
    dst === network ||
    dst === 0 ||
    dst >>> 28 === 0xe ||
    dst >>> 24 === 127;

  const drop = (reason: DropReason, detail: string): Verdict => ({ pass: false, reason, detail });

  return {
    flows,
    classifyGuestFrame(frame) {
      if (frame.length < ETH_HEADER_BYTES) return drop('short', `${frame.length}-byte frame`);
      const type = u16(frame, 12);
      if (type === ETHERTYPE_ARP) return PASS;
      if (type !== ETHERTYPE_IPV4)
        return drop('ethertype', `ethertype 0x${type.toString(16).padStart(4, '0')}`);
      if (frame.length < ETH_HEADER_BYTES + IPV4_HEADER_BYTES)
        return drop('malformed', 'IPv4 header cut short');
      const versionIhl = frame[ETH_HEADER_BYTES] as number;
      if (versionIhl >> 4 !== 4) return drop('malformed', `IP version ${versionIhl >> 4} in an IPv4 frame`);
      if ((versionIhl & 15) !== 5) return drop('ip-options', `IPv4 header of ${(versionIhl & 15) * 4} bytes`);
      const totalLength = u16(frame, ETH_HEADER_BYTES + 2);
      if (totalLength < IPV4_HEADER_BYTES || ETH_HEADER_BYTES + totalLength > frame.length)
        return drop('malformed', `IPv4 total length ${totalLength} in a ${frame.length}-byte frame`);
      const dst = u32(frame, ETH_HEADER_BYTES + 16);
      if (!isStackAddress(dst)) return PASS;

      const to = numberToIpv4(dst);
      const protocol = frame[ETH_HEADER_BYTES + 9] as number;
      // More-fragments flag or a fragment offset: part of a datagram for gvproxy's own stack.
      if (u16(frame, ETH_HEADER_BYTES + 6) & 0x3fff) return drop('fragment', `IPv4 fragment to ${to}`);
      const reason: DropReason = dst === gateway ? 'to-gateway' : 'to-stack';
      if (protocol === PROTO_ICMP) return dst === gateway ? PASS : drop(reason, `ICMP to ${to}`);
      if (protocol !== PROTO_TCP && protocol !== PROTO_UDP)
        return drop(reason, `IP protocol ${protocol} to ${to}`);
      const l4 = ETH_HEADER_BYTES + IPV4_HEADER_BYTES;
      const name = protocol === PROTO_TCP ? 'tcp' : 'udp';
      if (totalLength - IPV4_HEADER_BYTES < (protocol === PROTO_TCP ? 20 : 8))
        return drop('malformed', `${name} header cut short`);
      const srcPort = u16(frame, l4);
      const dstPort = u16(frame, l4 + 2);
      if (protocol === PROTO_UDP && dstPort === PORT_DHCP_SERVER) return PASS;
      if (dst === gateway) {
        if (dstPort === PORT_DNS) return PASS;
        if (flows.has(protocol, dstPort, srcPort)) return PASS;
      }
      return drop(reason, `${name} to ${to}:${dstPort}`);
    },
    learnFromGatewayFrame(frame) {
      if (frame.length < ETH_HEADER_BYTES + IPV4_HEADER_BYTES || u16(frame, 12) !== ETHERTYPE_IPV4) return;
      const versionIhl = frame[ETH_HEADER_BYTES] as number;
      if (versionIhl >> 4 !== 4 || u32(frame, ETH_HEADER_BYTES + 12) !== gateway) return;
      if (u16(frame, ETH_HEADER_BYTES + 6) & 0x1fff) return; // a non-first fragment has no ports
      const l4 = ETH_HEADER_BYTES + (versionIhl & 15) * 4;
      const protocol = frame[ETH_HEADER_BYTES + 9] as number;
      if (frame.length < l4 + (protocol === PROTO_TCP ? 14 : 4)) return;
      const srcPort = u16(frame, l4);
      if (srcPort < FIRST_FLOW_PORT) return;
      if (protocol === PROTO_TCP) {
        const flags = frame[l4 + 13] as number;
        const isSyn = (flags & 0x02) !== 0 && (flags & 0x10) === 0;
        if (isSyn) flows.add(PROTO_TCP, srcPort, u16(frame, l4 + 2));
      } else if (protocol === PROTO_UDP) {
        flows.add(PROTO_UDP, srcPort, u16(frame, l4 + 2));
      }
    },
  };
}

function u16(b: Uint8Array, at: number): number {
  return ((b[at] as number) << 8) | (b[at + 1] as number);
}

function u32(b: Uint8Array, at: number): number {
  return (
    (((b[at] as number) << 24) |
      ((b[at + 1] as number) << 16) |
      ((b[at + 2] as number) << 8) |
      (b[at + 3] as number)) >>>
    0
  );
}
