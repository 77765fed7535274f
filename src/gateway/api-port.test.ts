import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { API_PORT_FILE, isLoopbackPortFree, stableApiPort } from './api-port.ts';

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-apiport-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return path.join(dir, 'instance');
}

test('the API port chosen on the first boot is remembered and reused while it is free', async (t) => {
  const dir = await tmp(t);
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  const first = await stableApiPort(dir, { warn });
  assert.equal(await fs.readFile(path.join(dir, API_PORT_FILE), 'utf8'), `${first}\n`);
  assert.equal((await fs.stat(dir)).mode & 0o777, 0o700);
  assert.equal(await stableApiPort(dir, { warn }), first);
  assert.deepEqual(warnings, []);
});

test('a remembered port that is taken is replaced by a new one, with a warning', async (t) => {
  const dir = await tmp(t);
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  t.after(async () => void busy.close());
  const taken = (busy.address() as net.AddressInfo).port;
  assert.equal(await isLoopbackPortFree(taken), false);
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, API_PORT_FILE), `${taken}\n`);
  const warnings: string[] = [];
  const port = await stableApiPort(dir, { warn: (m) => warnings.push(m) });
  assert.notEqual(port, taken);
  assert.match(
    warnings[0] ?? '',
    new RegExp(`127\\.0\\.0\\.1:${taken} of this instance is taken: using ${port}`),
  );
  assert.equal(await fs.readFile(path.join(dir, API_PORT_FILE), 'utf8'), `${port}\n`);
});

test('a remembered port file that is not a port is ignored and rewritten', async (t) => {
  const dir = await tmp(t);
  await fs.mkdir(dir, { recursive: true });
  for (const junk of ['0\n', '70000\n', '-1', 'abc', '80 81', '']) {
    await fs.writeFile(path.join(dir, API_PORT_FILE), junk);
    const warnings: string[] = [];
    const port = await stableApiPort(dir, { warn: (m) => warnings.push(m), pick: async () => 45678 });
    assert.equal(port, 45678, junk);
    assert.deepEqual(warnings, []);
  }
});
