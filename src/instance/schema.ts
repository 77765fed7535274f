import { z } from 'zod';
import type { PidRecord } from '../supervisor/process.ts';

/**
 * Schemas of the records openshell-vm keeps on disk (state.json, a run's owner.json and pid files,
 * the instance lock). Unknown fields are errors; a record that does not match is reported as
 * broken, by path, and never acted on.
 */

export const pid = z
  .number()
  .int()
  .min(1)
  .max(2 ** 31 - 1);
export const startTime = z.string().max(64).optional();
export const filePath = z.string().min(1).max(4096);

/** JSON drops an undefined startTime: the parsed record has the key again (undefined). */
function withStartTime<T extends { startTime?: string | undefined }>(
  r: T,
): T & { startTime: string | undefined } {
  return { ...r, startTime: r.startTime };
}

export const processIdentity = z
  .strictObject({ name: z.string().max(64), pid, startTime })
  .transform(withStartTime);

/** owner.json: the CLI process that owns a run, and the paths outside the run directory it made. */
export interface OwnerRecord {
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly extraPaths: readonly string[];
}

export const ownerRecordSchema: z.ZodType<OwnerRecord, unknown> = z
  .strictObject({
    pid,
    startTime,
    extraPaths: z.array(filePath).max(16),
  })
  .transform(withStartTime);

export const pidRecordSchema: z.ZodType<PidRecord, unknown> = z
  .strictObject({
    name: z.string().max(64),
    pid,
    startTime,
    argv: z.array(z.string()),
  })
  .transform(withStartTime);

export interface LockRecord {
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly purpose: string;
}

export const lockRecordSchema: z.ZodType<LockRecord, unknown> = z
  .strictObject({
    pid,
    startTime,
    purpose: z.string().max(256),
  })
  .transform(withStartTime);

/** Parses `text` as JSON matching `schema`; the error is one line saying what is wrong. */
export function parseRecord<T>(
  text: string,
  schema: z.ZodType<T, unknown>,
): { ok: true; value: T } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, reason: `is not JSON (${(err as Error).message})` };
  }
  const result = schema.safeParse(json);
  if (result.success) return { ok: true, value: result.data };
  const issue = result.error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : 'the record';
  return { ok: false, reason: `does not match its schema (${where}: ${issue?.message ?? 'invalid'})` };
}
