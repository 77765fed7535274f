import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { parseMigrationStatus, Qmp, shellQuote, waitMigration } from './qmp.ts';

/** A stand-in QMP server: greets, then answers each command line with `answer(command)`. */
async function fakeQemu(
  answer: (cmd: { execute: string }) => string[],
): Promise<{ path: string; close(): void }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  const server = net.createServer((s) => {
    s.write('{"QMP": {"version": {}, "capabilities": []}}\r\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        for (const out of answer(JSON.parse(line))) s.write(`${out}\r\n`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return {
    path: sock,
    close: () => {
      server.close();
      void fs.rm(dir, { recursive: true, force: true });
    },
  };
}

test('commands get their return; events between are skipped; a refusal is an error with QEMU words', async () => {
  let migrations = 0;
  const qemu = await fakeQemu((cmd) => {
    if (cmd.execute === 'query-migrate') {
      migrations++;
      return [
        '{"event": "MIGRATION", "data": {"status": "active"}}',
        migrations < 3
          ? '{"return": {"status": "active"}}'
          : '{"return": {"status": "completed", "ram": {"transferred": 42}}}',
      ];
    }
    if (cmd.execute === 'bad') return ['{"error": {"class": "GenericError", "desc": "no such thing"}}'];
    return ['{"return": {}}'];
  });
  const qmp = await Qmp.connect(qemu.path, 2_000);
  assert.deepEqual(await qmp.execute('stop'), {});
  await assert.rejects(qmp.execute('bad'), /QEMU refused the command: no such thing/);
  assert.deepEqual(await waitMigration(qmp, 5_000), {
    status: 'completed',
    transferredBytes: 42,
    error: undefined,
  });
  qmp.close();
  qemu.close();
});

test('a failed migration says why; a QEMU that closes the socket or sends garbage ends the wait', async () => {
  const failing = await fakeQemu((cmd) =>
    cmd.execute === 'query-migrate'
      ? ['{"return": {"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}}']
      : ['{"return": {}}'],
  );
  const qmp = await Qmp.connect(failing.path, 2_000);
  await assert.rejects(waitMigration(qmp, 5_000), /migration failed: Unable to write to command/);
  qmp.close();
  failing.close();

  const garbage = await fakeQemu((cmd) =>
    cmd.execute === 'qmp_capabilities' ? ['{"return": {}}'] : ['not json'],
  );
  const q2 = await Qmp.connect(garbage.path, 2_000);
  await assert.rejects(q2.execute('stop'), /not JSON/);
  garbage.close();

  await assert.rejects(Qmp.connect('/nonexistent/qmp.sock', 200), /did not answer within 0.2 s/);
});

test('status parsing tolerates anything; exec: paths are one shell word', () => {
  assert.deepEqual(parseMigrationStatus(null), { status: 'none', transferredBytes: 0, error: undefined });
  assert.deepEqual(parseMigrationStatus({ status: 5, ram: 'x' }), {
    status: 'none',
    transferredBytes: 0,
    error: undefined,
  });
  assert.equal(shellQuote("a b'$(rm -rf /)"), `'a b'\\''$(rm -rf /)'`);
});
