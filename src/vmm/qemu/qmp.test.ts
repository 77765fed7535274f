import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { VmError } from '../../errors.ts';
import { cancelMigration, parseMigrationStatus, Qmp, shellQuote, waitMigration } from './qmp.ts';

/**
 * A stand-in QMP server: greets, then answers each command line with `answer(command)`; an answer
 * (a line with return or error) gets the command's id, as QEMU echoes it. `later(line)` sends a line
 * whenever the test wants.
 */
async function fakeQemu(
  answer: (cmd: { execute: string; arguments?: Record<string, unknown> }) => string[],
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
        const cmd = JSON.parse(line);
        for (const out of answer(cmd)) {
          let msg: unknown;
          try {
            msg = JSON.parse(out);
          } catch {
            msg = undefined;
          }
          const reply =
            msg && typeof msg === 'object' && ('return' in msg || 'error' in msg)
              ? JSON.stringify({ ...msg, id: cmd.id })
              : out;
          s.write(`${reply}\r\n`);
        }
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
  const qmp = await Qmp.connect(qemu.path, { connectTimeoutMs: 2_000, hint: 'see qemu.log' });
  assert.deepEqual(await qmp.execute('stop'), {});
  await assert.rejects(qmp.execute('bad'), (err: VmError) => {
    assert.match(err.message, /QEMU refused the QMP command bad: no such thing/);
    assert.match(err.hint ?? '', /error class GenericError; see qemu\.log/);
    return true;
  });
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
  await assert.rejects(q2.execute('stop'), /not JSON \(while waiting for the QMP command stop\)/);
  await assert.rejects(q2.execute('cont'), /the QMP command cont was not sent/);
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

test('a command QEMU does not answer in time fails naming it; the connection goes on', async () => {
  const qemu = await fakeQemu((cmd) => {
    // stop is never answered.
    if (cmd.execute === 'stop') return [];
    if (cmd.execute === 'query-status') return ['{"return": {"status": "paused"}}'];
    return ['{"return": {}}'];
  });
  const qmp = await Qmp.connect(qemu.path, { connectTimeoutMs: 2_000, commandTimeoutMs: 150 });
  const t0 = performance.now();
  await assert.rejects(qmp.execute('stop'), /QEMU did not answer the QMP command stop within 0.15 s/);
  assert.ok(performance.now() - t0 < 1_000);
  assert.deepEqual(await qmp.execute('query-status'), { status: 'paused' });
  // A deadline of its own for one command.
  await assert.rejects(qmp.execute('stop', undefined, { timeoutMs: 50 }), /stop within 0.05 s/);
  qmp.close();
  qemu.close();
});

test('a late answer with the id of a command that timed out is dropped', async () => {
  let stopId: unknown;
  let sock: net.Socket | undefined;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-qmp-'));
  const file = path.join(dir, 'qmp.sock');
  const server = net.createServer((s) => {
    sock = s;
    s.write('{"QMP": {}}\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const cmd = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (cmd.execute === 'stop') stopId = cmd.id;
        else if (cmd.execute === 'cont') {
          // The stale answer first, then cont's own.
          s.write(`${JSON.stringify({ return: { stale: true }, id: stopId })}\n`);
          s.write(`${JSON.stringify({ return: { cont: true }, id: cmd.id })}\n`);
        } else s.write(`${JSON.stringify({ return: {}, id: cmd.id })}\n`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(file, r));
  const qmp = await Qmp.connect(file, { connectTimeoutMs: 2_000, commandTimeoutMs: 100 });
  await assert.rejects(qmp.execute('stop'), /stop within/);
  assert.deepEqual(await qmp.execute('cont'), { cont: true });
  qmp.close();
  sock?.destroy();
  server.close();
  await fs.rm(dir, { recursive: true, force: true });
});

test('cancelMigration sends migrate_cancel and waits until QEMU says the migration is over', async () => {
  const sent: string[] = [];
  let polls = 0;
  const qemu = await fakeQemu((cmd) => {
    sent.push(cmd.execute);
    if (cmd.execute === 'query-migrate') {
      polls++;
      return [polls < 3 ? '{"return": {"status": "cancelling"}}' : '{"return": {"status": "cancelled"}}'];
    }
    return ['{"return": {}}'];
  });
  const qmp = await Qmp.connect(qemu.path, 2_000);
  assert.equal(await cancelMigration(qmp, 5_000), 'cancelled');
  assert.deepEqual(sent, [
    'qmp_capabilities',
    'migrate_cancel',
    'query-migrate',
    'query-migrate',
    'query-migrate',
  ]);
  qmp.close();
  qemu.close();

  const stuck = await fakeQemu((cmd) =>
    cmd.execute === 'query-migrate' ? ['{"return": {"status": "cancelling"}}'] : ['{"return": {}}'],
  );
  const q2 = await Qmp.connect(stuck.path, 2_000);
  await assert.rejects(cancelMigration(q2, 200), /not over 0.2 s after migrate_cancel \(status cancelling\)/);
  q2.close();
  stuck.close();
});
