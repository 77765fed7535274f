import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GVPROXY_TRANSPORT, gvproxyCheck, gvproxyFlags, gvproxyVersion } from './doctor-gvproxy.ts';

/** `gvproxy -help` of Debian 13's gvproxy 0.8.1 (captured on this machine). */
const USAGE_0_8_1 = `Usage of /root/.cache/openshell-vm/host/gvproxy/root/usr/bin/gvproxy:
  -debug
    	Print debug info
  -forward-dest value
    	Forwards a unix socket to the guest virtual machine over SSH
  -forward-identity value
    	Path to SSH identity key for forwarding
  -forward-sock value
    	Forwards a unix socket to the guest virtual machine over SSH
  -forward-user value
    	SSH user to use for unix socket forward
  -listen value
    	control endpoint
  -listen-bess string
    	unixpacket socket to be used by Bess-compatible applications
  -listen-qemu string
    	Socket to be used by Qemu
  -listen-stdio string
    	accept stdio pipe
  -listen-vfkit string
    	unixgram socket to be used by vfkit-compatible applications
  -listen-vpnkit string
    	VPNKit socket to be used by Hyperkit
  -log-file string
    	Output log messages (logrus) to a given file path
  -mtu int
    	Set the MTU (default 1500)
  -pid-file string
    	Generate a file with the PID in it
  -ssh-port int
    	Port to access the guest virtual machine. Must be between 1024 and 65535 (default 2222)
  -version
    	Print version information`;

/** 0.8.2 and later add -services (the API without /connect). */
const USAGE_WITH_SERVICES = USAGE_0_8_1.replace(
  '  -ssh-port int',
  '  -services string\n    \tExposes the same HTTP API as the -listen flag, without the /connect endpoint\n  -ssh-port int',
);

/** A gvproxy from before -listen-qemu (the vpnkit and stdio transports only). */
const USAGE_OLD = `Usage of gvproxy:
  -debug
    \tPrint debug info
  -listen value
    \tcontrol endpoint
  -listen-vpnkit string
    \tVPNKit socket to be used by Hyperkit
  -ssh-port int
    \tPort to access the guest virtual machine. Must be between 1024 and 65535 (default 2222)
`;

const FIX = 'run provision';

test('the flags and version gvproxy reports of itself', () => {
  const flags = gvproxyFlags(USAGE_0_8_1);
  assert.ok(flags.includes('listen-qemu') && flags.includes('listen-vfkit') && flags.includes('version'));
  assert.ok(!flags.includes('services'));
  assert.equal(gvproxyVersion('gvproxy version v0.8.1\n'), '0.8.1');
  assert.equal(gvproxyVersion(undefined), undefined);
});

test('gvproxy 0.8.1: fine, the stream transport said, and the API on -listen', () => {
  const c = gvproxyCheck(
    { binary: '/usr/bin/gvproxy', usage: USAGE_0_8_1, version: 'gvproxy version v0.8.1' },
    FIX,
  );
  assert.equal(c.ok, true);
  assert.equal(c.status, 'ok');
  assert.ok(
    c.detail.startsWith('/usr/bin/gvproxy (gvproxy 0.8.1), -listen-qemu: a unix stream socket'),
    c.detail,
  );
  assert.ok(c.detail.includes(GVPROXY_TRANSPORT));
  assert.match(
    c.detail,
    /never the vfkit unixgram one, -listen-vfkit: the host-side frame filter, src\/net\/frame-relay\.ts, relays streams only/,
  );
  assert.match(c.detail, /no -services \(0\.8\.2\+\): API on -listen/);
  const newer = gvproxyCheck(
    { binary: '/g', usage: USAGE_WITH_SERVICES, version: 'gvproxy version v0.8.7' },
    FIX,
  );
  assert.equal(newer.ok, true);
  assert.match(newer.detail, /API on -services/);
});

test('a gvproxy without -listen-qemu, or a program that is not gvproxy, is missing with the fix', () => {
  const old = gvproxyCheck({ binary: '/old/gvproxy', usage: USAGE_OLD, version: undefined }, FIX);
  assert.deepEqual(
    { ok: old.ok, status: old.status, fix: old.fix },
    { ok: false, status: 'missing', fix: FIX },
  );
  assert.match(
    old.detail,
    /^\/old\/gvproxy \(gvproxy of unknown version\) has no -listen-qemu; openshell-vm needs -listen-qemu:/,
  );
  const other = gvproxyCheck({ binary: '/bin/true', usage: '', version: '' }, FIX);
  assert.equal(other.status, 'missing');
  assert.match(other.detail, /printed no usage for -help/);
});
