// Hostile guest against gvproxy's forwarder API, which every gvproxy serves inside the virtual
// network at 192.168.127.1:80 (no flag removes it). From guest root it must not be reachable at
// all: not in exec mode (no guard in the guest), not in gateway mode after guest root deletes the
// nftables guard. The frame filter between the VMM and gvproxy drops it on the host.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ForwarderClient } from '../../src/net/forwarder.ts';
import { type CliRun, freePort, sandbox } from '../e2e/harness.ts';
import { mmdebstrapMissing, STAND_IN_BUILD } from '../fixtures/stand-in.ts';

const box = sandbox();
after(() => box.cleanup());
const LIGHT = ['-q', '--vcpus', '1', '--mem', '256'];

function get(port: number, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: '/', agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

/**
 * A guest shell snippet: `api NAME URL [wget options]` prints "NAME: BLOCKED" when the request
 * fails (dropped: wget times out), or "NAME: OPEN <answer>" when gvproxy's API answered.
 */
const API_PROBE = `api() { n=$1; shift; if timeout 10 wget -q -O /tmp/api.out "$@" 2>/dev/null; then echo "$n: OPEN $(head -c 200 /tmp/api.out | tr '\\n' ' ')"; else echo "$n: BLOCKED"; fi; }`;

test('exec mode: guest root cannot list, expose or unexpose through gvproxy API at 192.168.127.1:80; DNS, outbound and host loopback still work', async (t) => {
  const hostServer = http.createServer((_req, res) => res.end('host-says-hi'));
  await new Promise<void>((resolve) => hostServer.listen(0, '127.0.0.1', resolve));
  t.after(() => hostServer.close());
  const hostPort = (hostServer.address() as net.AddressInfo).port;
  const userPort = await freePort();
  const exposePort = await freePort();
  const guest = [
    API_PROBE,
    'api list http://192.168.127.1:80/services/forwarder/all',
    `api expose --post-data '{"local":"0.0.0.0:${exposePort}","remote":"192.168.127.2:8080","protocol":"tcp"}' http://192.168.127.1/services/forwarder/expose`,
    `api unexpose --post-data '{"local":"127.0.0.1:${userPort}","protocol":"tcp"}' http://192.168.127.1/services/forwarder/unexpose`,
    // Raw TCP too (not only HTTP through wget): nc connects or not.
    `if echo | timeout 10 nc 192.168.127.1 80 >/dev/null 2>&1; then echo 'tcp80: OPEN'; else echo 'tcp80: BLOCKED'; fi`,
    // DNS is UDP: under load (TCG on 2 cores) a query may be lost, so up to 3 tries, as resolvers do.
    `for try in 1 2 3; do a=$(nslookup gateway.containers.internal 192.168.127.1 2>/dev/null | grep -A1 '^Name:' | tail -1); [ -n "$a" ] && break; done; echo "dns: $a"`,
    `echo "host: $(timeout 10 wget -q -O- http://192.168.127.254:${hostPort}/)"`,
    'mkdir -p /www; echo served-by-guest > /www/index.html; httpd -p 8080 -h /www; echo served; sleep 300',
  ].join('\n');
  let forwarded: string | undefined;
  let exposedListening: boolean | undefined;
  let polling = false;
  const run: CliRun = await box.run(
    [...LIGHT, '-p', `${userPort}:8080`, 'run', '--', '/bin/sh', '-c', guest],
    {
      timeoutMs: 300_000,
      onEvent: (e, child) => {
        if (polling || e.type !== 'progress' || !/command started/.test(String(e.message))) return;
        polling = true;
        void (async () => {
          // The guest serves on 8080 only after its attempts: the user's forward answering means
          // they are done (and, had unexpose worked, it would never answer).
          const deadline = Date.now() + 150_000;
          while (forwarded === undefined && Date.now() < deadline) {
            forwarded = await get(userPort).catch(() => undefined);
            if (forwarded === undefined) await new Promise((r) => setTimeout(r, 250));
          }
          exposedListening = await isListening(exposePort);
          child.kill('SIGTERM');
        })();
      },
    },
  );
  const out = run.stdout.toString();
  const line = (name: string) =>
    out.split('\n').find((l) => l.startsWith(`${name}:`)) ?? `${name}: (no output)`;
  assert.equal(line('list'), 'list: BLOCKED', `${out}\n${run.stderr}`);
  assert.equal(line('expose'), 'expose: BLOCKED', out);
  assert.equal(line('unexpose'), 'unexpose: BLOCKED', out);
  assert.equal(line('tcp80'), 'tcp80: BLOCKED', out);
  assert.equal(exposedListening, false, `the guest's expose opened host port ${exposePort}`);
  assert.equal(forwarded?.trim(), 'served-by-guest', "the user's forward still works (not unexposed)");
  assert.equal(line('dns'), 'dns: Address: 192.168.127.1', 'DNS through gvproxy still works');
  assert.equal(line('host'), 'host: host-says-hi', "the host's loopback is still reachable");
  assert.match(run.stderr, /warning: the guest sent tcp to 192\.168\.127\.1:80; dropped/);
  await box.assertClean(run);
});

/** Finds the running gateway's gvproxy API socket (in its run or socket directory). */
function apiSocket(): string | undefined {
  for (const dir of [box.dataDir, box.runtimeDir]) {
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (e.name === 'gv-api.sock' && !e.parentPath.includes(`${path.sep}rootfs`))
        return path.join(e.parentPath, e.name);
    }
  }
  return undefined;
}

/** A raw HTTP request with busybox nc (Debian's static busybox wget crashes): "NAME: OPEN|BLOCKED". */
function rawApi(name: string, method: string, urlPath: string, body = ''): string {
  const request = `${method} ${urlPath} HTTP/1.0\\r\\nContent-Type: application/json\\r\\nContent-Length: ${body.length}\\r\\n\\r\\n${body}`;
  return `if printf '${request}' | timeout 10 busybox nc -w 5 192.168.127.1 80 2>/dev/null | grep -q '^HTTP/1'; then echo '${name}: OPEN'; else echo '${name}: BLOCKED'; fi`;
}

describe('gateway mode', { skip: mmdebstrapMissing }, () => {
  before(async () => {
    const build = await box.run(['prepare-rootfs', '--name', 'gw', '-q', ...STAND_IN_BUILD], {
      timeoutMs: 900_000,
    });
    assert.equal(build.code, 0, build.stderr);
  });

  test('gateway mode: guest root deletes the nftables guard, still cannot reach gvproxy API; the host forwards are unchanged', {
    timeout: 900_000,
  }, async () => {
    const exposePort = await freePort();
    let checked = false;
    let resolveReady!: (e: Record<string, unknown> & { kill: (s: NodeJS.Signals) => void }) => void;
    const ready = new Promise<Record<string, unknown> & { kill: (s: NodeJS.Signals) => void }>(
      (r) => (resolveReady = r),
    );
    const running = box.run(['--name', 'gw', '--json', '--ready-timeout', '600'], {
      timeoutMs: 900_000,
      onEvent: (e, child) => {
        if (e.type === 'ready') resolveReady({ ...e, kill: child.kill });
      },
    });
    const first = await Promise.race([ready, running]);
    if ('code' in first) assert.fail(`the gateway ended before Ready (exit ${first.code}):\n${first.stderr}`);
    try {
      const socket = apiSocket();
      assert.ok(socket, "the gateway's gvproxy API socket");
      const client = new ForwarderClient(socket);
      const forwardsBefore = await client.list();
      assert.ok(forwardsBefore.length > 0, 'the gateway has forwards');
      const victim = forwardsBefore[0]?.local ?? '';
      const script = [
        'nft flush ruleset',
        'nft delete table inet ovm_guard 2>/dev/null',
        'echo "tables: $(nft list tables | wc -l)"',
        rawApi('list', 'GET', '/services/forwarder/all'),
        rawApi(
          'expose',
          'POST',
          '/services/forwarder/expose',
          JSON.stringify({ local: `0.0.0.0:${exposePort}`, remote: '192.168.127.2:22', protocol: 'tcp' }),
        ),
        rawApi(
          'unexpose',
          'POST',
          '/services/forwarder/unexpose',
          JSON.stringify({ local: victim, protocol: 'tcp' }),
        ),
        `if busybox nslookup gateway.containers.internal 192.168.127.1 >/tmp/dns.out 2>&1; then echo 'dns: ok'; else echo "dns: failed $(tr '\\n' ' ' </tmp/dns.out)"; fi`,
      ].join('\n');
      const exec = await box.run(['exec', 'gw', '--', 'sh', '-c', script], { timeoutMs: 120_000 });
      const out = exec.stdout.toString();
      assert.match(out, /^tables: 0$/m, `guest root removed every table:\n${out}\n${exec.stderr}`);
      assert.match(out, /^list: BLOCKED$/m, out);
      assert.match(out, /^expose: BLOCKED$/m, out);
      assert.match(out, /^unexpose: BLOCKED$/m, out);
      assert.match(out, /^dns: ok$/m, `DNS through gvproxy still works:\n${out}`);
      assert.deepEqual(await client.list(), forwardsBefore, "the host's forwards are unchanged");
      assert.equal(await isListening(exposePort), false, `the guest's expose opened host port ${exposePort}`);
      checked = true;
    } finally {
      first.kill('SIGINT');
    }
    const result = await running;
    assert.ok(checked);
    assert.equal(result.code, 0, result.stderr);
    await box.assertClean(result, 'gw');
  });
});
