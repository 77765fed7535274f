import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { randomHex } from '../host/random-hex.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';
import { ensureInstanceDirAt } from './runs.ts';
import type { LockRecord } from './schema.ts';
import { readRecordFile } from './trust.ts';

/** Who holds an instance's lock, and for what. */
export type LockHolder = LockRecord;

export const INSTANCE_LOCK = 'instance.lock';

/**
 * Takes the exclusive lock of an instance directory (`instance.lock`: the holder's pid, start time
 * and purpose), so that a build and a running gateway, or two gateways, never share a rootfs. The
 * lock file appears complete or not at all: it is written under a temporary name and linked into
 * place (a full disk leaves nothing behind). A lock of ours whose holder is gone (or whose pid now
 * belongs to another process), or that is unreadable, is taken over; another live holder is an
 * error naming it; a lock file that is not ours alone is refused, never removed. Returns the
 * release function.
 */
export async function takeInstanceLock(
  dir: string,
  instance: string,
  purpose: string,
): Promise<() => Promise<void>> {
  await ensureInstanceDirAt(dir);
  const file = path.join(dir, INSTANCE_LOCK);
  const me: LockHolder = { pid: process.pid, startTime: await processStartTime(process.pid), purpose };
  const tmp = `${file}.tmp-${process.pid}-${randomHex(4)}`;
  try {
    await fs.writeFile(tmp, `${JSON.stringify(me)}\n`, { flag: 'wx', mode: 0o600 });
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.link(tmp, file);
        return async () => {
          const holder = await readLockHolder(dir);
          if (holder?.pid === me.pid && holder.startTime === me.startTime) await fs.rm(file, { force: true });
        };
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
      const read = await readLock(dir);
      if (read.kind === 'untrusted') {
        throw new HostError(`refusing the lock ${file}: it ${read.reason}`, {
          hint: `check who made it, then remove it (rm ${file})`,
        });
      }
      const holder = read.kind === 'ok' ? read.holder : undefined;
      if (holder && (await isSameProcess(holder.pid, holder.startTime))) {
        throw new HostError(
          `instance '${instance}' is in use: openshell-vm (pid ${holder.pid}) is ${holder.purpose}`,
          { hint: `wait for it, stop it (kill ${holder.pid}), or use another instance with --name` },
        );
      }
      await fs.rm(file, { force: true });
    }
  } catch (err) {
    if (isErrno(err, 'ENOSPC') || isErrno(err, 'EDQUOT')) {
      throw new HostError(`cannot take the lock ${file}: no space left on the device`, {
        hint: `free some space on the file system of ${dir}`,
        cause: err,
      });
    }
    throw err;
  } finally {
    await fs.rm(tmp, { force: true });
  }
  throw new HostError(`cannot take the lock ${file}`, { hint: 'another openshell-vm keeps taking it' });
}

type LockRead =
  | { readonly kind: 'none' }
  | { readonly kind: 'untrusted'; readonly reason: string }
  | { readonly kind: 'ok'; readonly holder: LockHolder | undefined };

/** The lock file: absent, not ours alone, or ours (holder undefined when it does not parse: stale). */
async function readLock(dir: string): Promise<LockRead> {
  let read: Awaited<ReturnType<typeof readRecordFile>>;
  try {
    read = await readRecordFile(path.join(dir, INSTANCE_LOCK));
  } catch (err) {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return { kind: 'none' };
    throw err;
  }
  if (read.kind === 'missing') return { kind: 'none' };
  if (read.kind === 'untrusted') return { kind: 'untrusted', reason: read.reason };
  // Loaded when a lock is read, not with this module (a supervisor takes its lock without reading one).
  const { lockRecordSchema, parseRecord } = await import('./schema.ts');
  const parsed = parseRecord(read.text, lockRecordSchema);
  return { kind: 'ok', holder: parsed.ok ? parsed.value : undefined };
}

/** The lock's holder, when the lock is ours alone and valid (an untrusted lock names nobody). */
export async function readLockHolder(dir: string): Promise<LockHolder | undefined> {
  const read = await readLock(dir);
  return read.kind === 'ok' ? read.holder : undefined;
}
