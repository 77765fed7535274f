import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';

/** Who holds an instance's lock, and for what. */
export interface LockHolder {
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly purpose: string;
}

export const INSTANCE_LOCK = 'instance.lock';

/**
 * Takes the exclusive lock of an instance directory (`instance.lock`: the holder's pid, start time
 * and purpose), so that a build and a running gateway, or two gateways, never share a rootfs. A
 * lock whose holder is gone (or whose pid now belongs to another process) is taken over. Another
 * live holder is an error naming it. Returns the release function.
 */
export async function takeInstanceLock(
  dir: string,
  instance: string,
  purpose: string,
): Promise<() => Promise<void>> {
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, INSTANCE_LOCK);
  const me: LockHolder = { pid: process.pid, startTime: await processStartTime(process.pid), purpose };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await fs.writeFile(file, `${JSON.stringify(me)}\n`, { flag: 'wx' });
      return async () => {
        const holder = await readLockHolder(dir);
        if (holder?.pid === me.pid && holder.startTime === me.startTime) await fs.rm(file, { force: true });
      };
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
    }
    const holder = await readLockHolder(dir);
    if (holder && (await isSameProcess(holder.pid, holder.startTime))) {
      throw new HostError(
        `instance '${instance}' is in use: openshell-vm (pid ${holder.pid}) is ${holder.purpose}`,
        { hint: `wait for it, stop it (kill ${holder.pid}), or use another instance with --name` },
      );
    }
    await fs.rm(file, { force: true });
  }
  throw new HostError(`cannot take the lock ${file}`, { hint: 'another openshell-vm keeps taking it' });
}

export async function readLockHolder(dir: string): Promise<LockHolder | undefined> {
  try {
    const parsed = JSON.parse(await fs.readFile(path.join(dir, INSTANCE_LOCK), 'utf8')) as LockHolder;
    return typeof parsed.pid === 'number' ? parsed : undefined;
  } catch {
    return undefined;
  }
}
