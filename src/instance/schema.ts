import * as v from 'valibot';
import { terminalSafeLine } from '../host/terminal-text.ts';
import type { PidRecord } from '../supervisor/process.ts';

/**
 * Schemas of the records openshell-vm keeps on disk (state.json, a run's owner.json and pid files,
 * the instance lock), in valibot (~5 ms and ~5 MB to load, against zod's ~50 ms and ~20 MB: every
 * command that reads an instance loads these). Unknown fields are errors; a record that does not
 * match is reported as broken, by path, and never acted on.
 */

/** A schema that reads `unknown` (JSON) and gives a `T`. */
export type RecordSchema<T> = v.GenericSchema<unknown, T>;

export const pid = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(2 ** 31 - 1));
export const startTime = v.optional(v.pipe(v.string(), v.maxLength(64)));
export const filePath = v.pipe(v.string(), v.minLength(1), v.maxLength(4096));
/** A string of at most `maxChars` characters. */
export const boundedString = (maxChars: number) => v.pipe(v.string(), v.maxLength(maxChars));

/**
 * valibot's object and record schemas take an array for an object (and give back an object): a
 * JSON array is refused before them, here.
 */
const notArray = v.pipe(
  v.unknown(),
  v.check<unknown, string>((value) => !Array.isArray(value), 'expected an object, not an array'),
);

/** An object with exactly these fields: unknown ones are errors, and so is an array. */
export function exactObject<const E extends v.ObjectEntries>(entries: E) {
  return v.pipe(notArray, v.strictObject(entries));
}

/** A map from keys matching `key` to values matching `value` (never an array). */
export function recordOf<
  const K extends v.GenericSchema<string, string>,
  const V extends v.GenericSchema<unknown, unknown>,
>(key: K, value: V) {
  return v.pipe(notArray, v.record(key, value));
}

/** JSON drops an undefined startTime: the parsed record has the key again (undefined). */
function withStartTime<T extends { startTime?: string | undefined }>(
  r: T,
): T & { startTime: string | undefined } {
  return { ...r, startTime: r.startTime };
}

export const processIdentity = v.pipe(
  exactObject({ name: boundedString(64), pid, startTime }),
  v.transform(withStartTime),
);

/** owner.json: the CLI process that owns a run, and the paths outside the run directory it made. */
export interface OwnerRecord {
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly extraPaths: readonly string[];
}

export const ownerRecordSchema: RecordSchema<OwnerRecord> = v.pipe(
  exactObject({ pid, startTime, extraPaths: v.pipe(v.array(filePath), v.maxLength(16)) }),
  v.transform(withStartTime),
);

export const pidRecordSchema: RecordSchema<PidRecord> = v.pipe(
  exactObject({ name: boundedString(64), pid, startTime, argv: v.array(v.string()) }),
  v.transform(withStartTime),
);

export interface LockRecord {
  readonly pid: number;
  readonly startTime: string | undefined;
  readonly purpose: string;
}

export const lockRecordSchema: RecordSchema<LockRecord> = v.pipe(
  exactObject({ pid, startTime, purpose: boundedString(256) }),
  v.transform(withStartTime),
);

/** A field's dotted path in a reason is cut here (its keys are the file's: a planted key may be long). */
const PATH_MAX_CHARS = 200;

/**
 * The first issue as one line, `where: what` (`where` is the field's dotted path, or "the record"),
 * built from the issue's kind and its expectation only: never from the value received, which is
 * the file's (a planted record's) content. The path's keys are the file's too (an unknown field is
 * named): made terminal-safe and cut.
 */
export function describeIssues(issues: readonly [v.BaseIssue<unknown>, ...v.BaseIssue<unknown>[]]): string {
  const issue = issues[0];
  const where = v.getDotPath(issue);
  return `${where === null ? 'the record' : terminalSafeLine(where, { maxChars: PATH_MAX_CHARS })}: ${describeIssue(issue)}`;
}

function describeIssue(issue: v.BaseIssue<unknown>): string {
  const expected = issue.expected ?? undefined;
  if (issue.type === 'strict_object' || issue.type === 'object') {
    if (expected === 'never') return 'unknown field';
    if (issue.received === 'undefined' && issue.path?.length) return 'missing';
    return 'expected an object';
  }
  if (issue.kind === 'schema') {
    if (expected === 'Array') return 'expected an array';
    return `expected ${expected ?? issue.type}`;
  }
  switch (issue.type) {
    case 'integer':
      return 'expected an integer';
    case 'min_value':
    case 'max_value':
      return `expected a number ${expected}`;
    case 'min_length':
    case 'max_length':
      return `expected a length ${expected}`;
    case 'regex':
      return `expected a match of ${expected}`;
    case 'check':
      // Our own checks' messages: they say what is wrong, not what was there.
      return issue.message;
    default:
      return `invalid (${issue.type})`;
  }
}

/**
 * Parses `text` as JSON matching `schema`; the error is one line saying what is wrong, without
 * the file's content (JSON.parse's own message quotes it: only its size is said).
 */
export function parseRecord<T>(
  text: string,
  schema: RecordSchema<T>,
): { ok: true; value: T } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { ok: false, reason: `is not JSON (${Buffer.byteLength(text)} bytes)` };
  }
  const result = v.safeParse(schema, json);
  if (result.success) return { ok: true, value: result.output };
  return { ok: false, reason: `does not match its schema (${describeIssues(result.issues)})` };
}
