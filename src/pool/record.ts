import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import * as v from 'valibot';
import { HostError, isErrno } from '../errors.ts';
import {
  boundedString,
  exactObject,
  parseRecord,
  pid,
  type RecordSchema,
  startTime,
} from '../instance/schema.ts';
import { readRecordFile } from '../instance/trust.ts';
import { isSameProcess } from '../supervisor/identity.ts';
import { POOL_FILES, type PoolKey } from './layout.ts';

/**
 * pool.json: the pool supervisor's identity (pid and start time: a reused pid is never taken for
 * it), what the pool was started with (its key, size and the raw VM options, to boot replacements
 * with) and when. It is also the pool's lock: created with link(2), so two `pool start`s of one key
 * cannot both own it; a record whose supervisor is gone is stale and is recovered (manage.ts).
 */
export interface PoolRecord {
  readonly version: 1;
  readonly id: string;
  readonly size: number;
  readonly key: PoolKey;
  /** The raw VM options the members are booted with (the CLI's spelling, validated again at boot). */
  readonly options: Readonly<Record<string, string>>;
  readonly supervisor: { readonly pid: number; readonly startTime: string | undefined };
  readonly startedAt: string;
}

const nullableString = v.nullable(boundedString(4096));

export const poolRecordSchema: RecordSchema<PoolRecord> = v.pipe(
  exactObject({
    version: v.literal(1),
    id: v.pipe(v.string(), v.regex(/^[0-9a-f]{10}$/)),
    size: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(64)),
    key: exactObject({
      arch: boundedString(16),
      vcpus: v.number(),
      memMib: v.number(),
      network: boundedString(16),
      backend: nullableString,
      accel: nullableString,
      rootfs: nullableString,
      kernel: nullableString,
    }),
    options: v.record(boundedString(32), boundedString(4096)),
    supervisor: exactObject({ pid, startTime }),
    startedAt: boundedString(64),
  }),
  v.transform((r) => ({ ...r, supervisor: { pid: r.supervisor.pid, startTime: r.supervisor.startTime } })),
);

export type PoolRead =
  | { readonly kind: 'none' }
  | { readonly kind: 'ok'; readonly record: PoolRecord; readonly alive: boolean }
  | { readonly kind: 'broken'; readonly path: string; readonly reason: string };

/** The pool's record and whether its supervisor is the very process it names. */
export async function readPool(dir: string): Promise<PoolRead> {
  const file = path.join(dir, POOL_FILES.record);
  const read = await readRecordFile(file);
  if (read.kind === 'missing') return { kind: 'none' };
  if (read.kind === 'untrusted') return { kind: 'broken', path: file, reason: read.reason };
  const parsed = parseRecord(read.text, poolRecordSchema);
  if (!parsed.ok) return { kind: 'broken', path: file, reason: parsed.reason };
  const { pid: p, startTime: t } = parsed.value.supervisor;
  return { kind: 'ok', record: parsed.value, alive: await isSameProcess(p, t) };
}

/**
 * Creates pool.json exclusively (written under a temporary name, then linked into place: it
 * appears whole or not at all). EEXIST is a HostError the caller decides on (recover or refuse).
 */
export async function createPoolRecord(dir: string, record: PoolRecord): Promise<void> {
  const file = path.join(dir, POOL_FILES.record);
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { flag: 'wx', mode: 0o600 });
  try {
    await fs.link(tmp, file);
  } catch (err) {
    if (isErrno(err, 'EEXIST')) {
      throw new HostError(`a pool with these options already has a record (${file})`, {
        hint: 'see: openshell-vm pool status; stop it: openshell-vm pool stop',
        cause: err,
      });
    }
    throw err;
  } finally {
    await fs.rm(tmp, { force: true });
  }
}
