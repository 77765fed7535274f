import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { checkDuplicates, checkHostPortsFree, parsePortSpec } from './ports.ts';

test('port specs: PORT, HOST:GUEST, ADDR:HOST:GUEST, [IPv6]:HOST:GUEST; loopback by default', () => {
  assert.deepEqual(parsePortSpec('8080'), { hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 8080 });
  assert.deepEqual(parsePortSpec('30051:8080'), {
    hostAddress: '127.0.0.1',
    hostPort: 30051,
    guestPort: 8080,
  });
  assert.deepEqual(parsePortSpec('0.0.0.0:80:8080'), {
    hostAddress: '0.0.0.0',
    hostPort: 80,
    guestPort: 8080,
  });
  assert.deepEqual(parsePortSpec('[::1]:8443:443'), { hostAddress: '::1', hostPort: 8443, guestPort: 443 });
});

test('bad port specs name the spec and the problem', () => {
  const cases: [string, RegExp][] = [
    ['', /malformed/],
    ['80:', /malformed/],
    ['a:80', /'a' is not a port number/],
    ['0:80', /port 0 is outside 1-65535/],
    ['80:70000', /port 70000 is outside 1-65535/],
    ['1:2:3:4', /malformed/],
    ['localhost:80:80', /'localhost' is not an IPv4 address/],
    ['[nope]:80:80', /'nope' is not an IPv6 address/],
  ];
  for (const [spec, re] of cases) {
    assert.throws(
      () => parsePortSpec(spec),
      (e: unknown) =>
        e instanceof UsageError &&
        e.message.startsWith(`-p ${spec}:`) &&
        re.test(e.message) &&
        /HOST:GUEST/.test(e.hint ?? ''),
      spec,
    );
  }
});

test('duplicate host ports are rejected, also across a wildcard address', () => {
  assert.throws(
    () => checkDuplicates([parsePortSpec('8080:80'), parsePortSpec('8080:81')]),
    /host port 8080 is forwarded twice/,
  );
  assert.throws(
    () => checkDuplicates([parsePortSpec('0.0.0.0:8080:80'), parsePortSpec('8080:81')]),
    /forwarded twice/,
  );
  checkDuplicates([parsePortSpec('8080:80'), parsePortSpec('8081:80')]);
});

test('a host port already in use is rejected before anything starts', async (t) => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  await assert.rejects(
    checkHostPortsFree([parsePortSpec(`${port}:80`)]),
    (e: unknown) =>
      e instanceof UsageError && new RegExp(`127.0.0.1:${port} is already in use`).test(e.message),
  );
  await assert.rejects(
    checkHostPortsFree([parsePortSpec('192.0.2.1:8080:80')]),
    /not an address of this host/,
  );
});
