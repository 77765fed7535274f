import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { explainHostCondition, HostError, VmError } from './errors.ts';

/** A system error as Node.js makes them (fs calls set code, syscall and, when they have one, path). */
function sysError(code: string, syscall: string, path?: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${syscall}${path ? ` '${path}'` : ''}`) as NodeJS.ErrnoException;
  e.code = code;
  e.syscall = syscall;
  if (path) e.path = path;
  return e;
}

test('ENOSPC with a path: a HostError naming it, with df -h PATH as the fix', () => {
  const err = sysError('ENOSPC', 'mkdir', '/var/lib/ovm/instances/a');
  const host = explainHostCondition(err);
  assert.ok(host instanceof HostError);
  assert.equal(host.message, 'no space left on the device: /var/lib/ovm/instances/a (ENOSPC, mkdir)');
  assert.match(host.hint ?? '', /df -h \/var\/lib\/ovm\/instances\/a/);
  assert.equal(host.cause, err);
});

test('ENOSPC deep in a cause chain, without a path (a write on an fd): still explained', () => {
  const inner = sysError('ENOSPC', 'write');
  const outer = new Error('writing the state file', { cause: new VmError('wrapped', { cause: inner }) });
  const host = explainHostCondition(outer);
  assert.equal(host?.message, 'no space left on the device (ENOSPC, write)');
  assert.match(host?.hint ?? '', /df -h/);
  assert.equal(host?.cause, outer, 'the whole chain is kept for --debug');
});

test('EDQUOT and EROFS are explained; EACCES only with a path', () => {
  assert.match(
    explainHostCondition(sysError('EDQUOT', 'write', '/home/u/x'))?.message ?? '',
    /quota exceeded: \/home\/u\/x/,
  );
  const rofs = explainHostCondition(sysError('EROFS', 'open', '/ro/cache'));
  assert.match(rofs?.message ?? '', /read-only file system: \/ro\/cache/);
  assert.match(rofs?.hint ?? '', /OPENSHELL_VM_DATA_DIR/);
  assert.match(explainHostCondition(sysError('EACCES', 'open', '/d/f'))?.hint ?? '', /ls -ld \/d\/f/);
  assert.equal(explainHostCondition(sysError('EACCES', 'connect')), undefined);
});

test('anything else is not explained (it stays an internal error or its own OvmError)', () => {
  assert.equal(explainHostCondition(sysError('ENOENT', 'open', '/x')), undefined);
  assert.equal(explainHostCondition(new Error('plain')), undefined);
  assert.equal(explainHostCondition('a string'), undefined);
  const loop: Error & { cause?: unknown } = new Error('loop');
  loop.cause = loop;
  assert.equal(explainHostCondition(loop), undefined, 'a cyclic cause chain ends');
});

test('a real ENOSPC from fs (/dev/full) is explained', () => {
  let caught: unknown;
  try {
    fs.writeFileSync('/dev/full', 'x');
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, '/dev/full refuses writes');
  assert.match(explainHostCondition(caught)?.message ?? '', /^no space left on the device.*\(ENOSPC/);
});
