import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { HostError } from '../errors.ts';
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

test('a remembered port file that is not a port is ignored with a warning and rewritten', async (t) => {
  const dir = await tmp(t);
  await fs.mkdir(dir, { recursive: true });
  for (const junk of ['0\n', '70000\n', '-1', 'abc', '80 81', '']) {
    await fs.writeFile(path.join(dir, API_PORT_FILE), junk);
    const warnings: string[] = [];
    const port = await stableApiPort(dir, { warn: (m) => warnings.push(m), pick: async () => 45678 });
    assert.equal(port, 45678, junk);
    assert.equal(warnings.length, 1, junk);
    assert.match(warnings[0] ?? '', /api-port: it holds no port number; a new port is picked/);
    assert.equal(await fs.readFile(path.join(dir, API_PORT_FILE), 'utf8'), '45678\n');
  }
});

test('a FIFO, a symlink or a file others can write in its place is not read (no hang), only replaced', async (t) => {
  const dir = await tmp(t);
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, API_PORT_FILE);
  const target = path.join(path.dirname(dir), 'elsewhere');
  await fs.writeFile(target, '45000\n');
  const plant: Record<string, () => Promise<void>> = {
    fifo: async () => {
      const r = spawnSync('mkfifo', [file]);
      assert.equal(r.status, 0, String(r.stderr));
    },
    symlink: () => fs.symlink(target, file),
    'group-writable': async () => {
      await fs.writeFile(file, '45000\n');
      await fs.chmod(file, 0o664);
    },
  };
  for (const [kind, make] of Object.entries(plant)) {
    await make();
    const warnings: string[] = [];
    const port = await stableApiPort(dir, { warn: (m) => warnings.push(m), pick: async () => 45678 });
    assert.equal(port, 45678, kind);
    assert.match(
      warnings[0] ?? '',
      /ignoring .*api-port: it (is not a regular file|is a symlink|is writable by its group)/,
      kind,
    );
    const st = await fs.lstat(file);
    assert.ok(st.isFile(), kind);
    assert.equal(st.mode & 0o777, 0o600, kind);
    assert.equal(await fs.readFile(file, 'utf8'), '45678\n', kind);
    await fs.rm(file);
  }
  assert.equal(await fs.readFile(target, 'utf8'), '45000\n', 'the symlink was not written through');
});

test('a directory in its place is an error naming it and the fix', async (t) => {
  const dir = await tmp(t);
  await fs.mkdir(path.join(dir, API_PORT_FILE, 'x'), { recursive: true });
  const warnings: string[] = [];
  await assert.rejects(
    stableApiPort(dir, { warn: (m) => warnings.push(m), pick: async () => 45678 }),
    (err: unknown) => {
      assert.ok(err instanceof HostError, String(err));
      assert.match(err.message, /api-port: a directory is in its place/);
      assert.match(err.hint ?? '', /rm -r .*api-port/);
      return true;
    },
  );
  assert.match(warnings[0] ?? '', /it is a directory/);
});
