// End-to-end networking: gvproxy and QEMU user networking, forwarded ports, DHCP, DNS, host services.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readEnvironment } from '../../src/config/environment.ts';
import { findGvproxy } from '../../src/net/gvproxy.ts';
import { isAlive } from '../../src/supervisor/identity.ts';
import { type CliRun, freePort, sandbox } from './harness.ts';

const box = sandbox();
after(() => box.cleanup());
const LIGHT = ['-q', '--vcpus', '1', '--mem', '256'];

function get(port: number, urlPath = '/'): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Serves `text` from busybox httpd on guest port 8080, forwarded from `port`; fetches it, then stops the CLI. */
async function serveAndFetch(
  extra: string[],
  port: number,
  text: string,
): Promise<{ run: CliRun; body: string }> {
  let body: string | undefined;
  let fetching = false;
  const run = await box.run(
    [
      ...LIGHT,
      ...extra,
      '-p',
      `${port}:8080`,
      'run',
      '--',
      '/bin/sh',
      '-c',
      `mkdir -p /www; echo ${text} > /www/index.html; httpd -p 8080 -h /www; sleep 120`,
    ],
    {
      onEvent: (e, child) => {
        if (fetching || e.type !== 'progress' || !/command started/.test(String(e.message))) return;
        fetching = true;
        void (async () => {
          for (let i = 0; i < 200 && body === undefined; i++) {
            body = await get(port).catch(() => undefined);
            if (body === undefined) await new Promise((r) => setTimeout(r, 100));
          }
          child.kill('SIGTERM');
        })();
      },
    },
  );
  return { run, body: body ?? '' };
}

test('--net gvproxy: a guest TCP service answers on the forwarded host port; the port is free after stop', async () => {
  const port = await freePort();
  const { run, body } = await serveAndFetch([], port, 'hello-through-gvproxy');
  assert.equal(body.trim(), 'hello-through-gvproxy', run.stderr);
  assert.equal(run.code, 143, run.stderr);
  assert.deepEqual(run.processes.map((p) => p.name).sort(), ['gvproxy', 'qemu', 'virtiofsd']);
  await box.assertClean(run);
  assert.equal(await portIsFree(port), true, 'the forwarded port is free again');
});

test('--net user: the same through QEMU user networking', async () => {
  const port = await freePort();
  const { run, body } = await serveAndFetch(['--net', 'user'], port, 'hello-through-slirp');
  assert.equal(body.trim(), 'hello-through-slirp', run.stderr);
  assert.deepEqual(run.processes.map((p) => p.name).sort(), ['qemu', 'virtiofsd']);
  await box.assertClean(run);
  assert.equal(await portIsFree(port), true);
});

test('the guest gets 192.168.127.2 by DHCP, resolves a name through the gateway, reaches a host loopback server', async (t) => {
  const server = http.createServer((_req, res) => res.end('host-says-hi'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const hostPort = (server.address() as net.AddressInfo).port;
  const r = await box.run([
    ...LIGHT,
    'run',
    '--',
    '/bin/sh',
    '-c',
    `ip -4 -o addr show dev eth0 | awk '{print $4}'; for i in 1 2 3; do a=$(nslookup gateway.containers.internal 2>/dev/null | grep -A1 '^Name:' | tail -1); [ -n "$a" ] && break; sleep 1; done; echo "$a"; wget -q -O- http://192.168.127.254:${hostPort}/`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.toString().trim().split('\n'), [
    '192.168.127.2/24',
    'Address: 192.168.127.1',
    'host-says-hi',
  ]);
  await box.assertClean(r);
});

test('two instances with different forwarded ports run at the same time without interfering', async () => {
  const [a, b] = [await freePort(), await freePort()];
  const [ra, rb] = await Promise.all([
    serveAndFetch(['--name', 'one'], a, 'instance-one'),
    serveAndFetch(['--name', 'two'], b, 'instance-two'),
  ]);
  assert.equal(ra.body.trim(), 'instance-one', ra.run.stderr);
  assert.equal(rb.body.trim(), 'instance-two', rb.run.stderr);
  await box.assertClean(ra.run);
  await box.assertClean(rb.run);
});

test('a gvproxy the tool did not start survives its start, stop and crash recovery', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-foreign-'));
  const foreign = spawn(
    await findGvproxy(readEnvironment()),
    ['-listen', `unix://${dir}/api.sock`, '-listen-qemu', `unix://${dir}/q.sock`, '-ssh-port', '-1'],
    { stdio: 'ignore' },
  );
  t.after(() => {
    foreign.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(isAlive(foreign.pid as number));
  // A normal run, then a run whose CLI is killed, then a run that sweeps the orphan.
  assert.equal((await box.run([...LIGHT, '--exec', '/bin/true'])).code, 0);
  let killed = false;
  const dead = await box.run([...LIGHT, '--exec', '/bin/sleep', '--args', '60'], {
    onEvent: (e, child) => {
      if (!killed && e.type === 'progress' && /command started/.test(String(e.message))) {
        killed = true;
        child.kill('SIGKILL');
      }
    },
  });
  const sweep = await box.run([...LIGHT, '--exec', '/bin/true']);
  assert.match(sweep.stderr, /cleaned up 1 run\(s\)/);
  // The run's gvproxy ends with the killed CLI: its one client was the frame filter in the CLI.
  const orphan = dead.processes.find((p) => p.name === 'gvproxy');
  assert.ok(orphan, 'the killed run started a gvproxy');
  assert.equal(isAlive(orphan.pid), false, 'the killed run left no gvproxy running');
  assert.equal(isAlive(foreign.pid as number), true, 'the foreign gvproxy is still running');
  assert.equal(foreign.exitCode, null);
});

const badPorts: [string[], RegExp, RegExp][] = [
  [['-p', '80:'], /-p 80:: malformed/, /HOST:GUEST/],
  [['-p', '70000'], /-p 70000: port 70000 is outside 1-65535/, /1 to 65535/],
  [['-p', 'x:80'], /-p x:80: 'x' is not a port number/, /HOST:GUEST/],
  [['-p', '8080:80', '-p', '8080:81'], /host port 8080 is forwarded twice/, /its own host port/],
  [['--net', 'none', '-p', '8080:80'], /-p needs a network, but --net none has none/, /--net gvproxy/],
  [['--net', 'bridge'], /--net: unknown network 'bridge'/, /gvproxy, user, tsi, none/],
];
for (const [args, message, hint] of badPorts) {
  test(`bad input: ${args.join(' ')}`, async () => {
    const r = await box.run([...args, '--exec', '/bin/true']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.match(r.stderr, hint);
    assert.deepEqual(r.processes, []);
  });
}

test('bad input: a host port already in use', async (t) => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const r = await box.run(['-p', `${port}:80`, '--exec', '/bin/true']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`error: -p: host port 127.0.0.1:${port} is already in use`));
  assert.match(r.stderr, /hint: stop what listens there/);
  assert.deepEqual(r.processes, []);
});

test('if gvproxy dies while the VM runs, the run says it is degraded, and still stops cleanly', async () => {
  let gvPid = 0;
  let stage = 0;
  const r = await box.run([...LIGHT, '--exec', '/bin/sleep', '--args', '60'], {
    onEvent: (e, child) => {
      if (
        e.type === 'process' &&
        e.action === 'started' &&
        (e.process as { name: string }).name === 'gvproxy'
      ) {
        gvPid = (e.process as { pid: number }).pid;
      }
      if (stage === 0 && e.type === 'progress' && /command started/.test(String(e.message))) {
        stage = 1;
        process.kill(gvPid, 'SIGKILL');
      }
      if (stage === 1 && e.type === 'warning') {
        stage = 2;
        child.kill('SIGTERM');
      }
    },
  });
  assert.equal(stage, 2, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `warning: gvproxy \\(pid ${gvPid}\\) exited by SIGKILL: the guest's network and port forwards are down \\(degraded\\)`,
    ),
  );
  assert.equal(r.code, 143);
  await box.assertClean(r);
});
