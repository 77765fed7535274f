import fs from 'node:fs/promises';
import path from 'node:path';
import * as v from 'valibot';
import { isErrno } from '../errors.ts';
import { pid as pidSchema, startTime as startTimeSchema } from '../instance/schema.ts';
import { isSameProcess, processStartTime } from '../supervisor/identity.ts';
import { POOL_FILES } from './layout.ts';

/**
 * The hand-over of a pool's members between the pool supervisor and `run`, through the file
 * system: the supervisor publishes a warmed member as ready/<name> (written aside, renamed into
 * place), a `run` takes it by renaming ready/<name> to claimed/<name> (rename(2) is atomic: of two
 * concurrent runs exactly one succeeds, the other gets ENOENT and tries the next) and then writes
 * its own pid and start time into the claim, so that the supervisor can tell a claimant that died.
 */

async function names(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).filter((n) => !n.startsWith('.'));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

export async function ensureMemberDirs(poolDir: string): Promise<void> {
  await fs.mkdir(path.join(poolDir, POOL_FILES.ready), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.join(poolDir, POOL_FILES.claimed), { recursive: true, mode: 0o700 });
}

/** Publishes a warmed member: ready/<name> appears whole (a dot file renamed into place). */
export async function publishReady(poolDir: string, member: string): Promise<void> {
  const ready = path.join(poolDir, POOL_FILES.ready);
  const tmp = path.join(ready, `.${member}.tmp`);
  await fs.writeFile(tmp, `${member}\n`, { mode: 0o600 });
  await fs.rename(tmp, path.join(ready, member));
}

export function readyMembers(poolDir: string): Promise<string[]> {
  return names(path.join(poolDir, POOL_FILES.ready));
}

export function claimedMembers(poolDir: string): Promise<string[]> {
  return names(path.join(poolDir, POOL_FILES.claimed));
}

/**
 * Takes one ready member (oldest first by its number), or undefined when none is ready. The claim
 * carries the claimant's identity (this process, unless `claimant` says otherwise).
 */
export async function claimMember(
  poolDir: string,
  claimant: { readonly pid: number; readonly startTime: string | undefined } | undefined = undefined,
): Promise<string | undefined> {
  const me = claimant ?? { pid: process.pid, startTime: await processStartTime(process.pid) };
  const ready = await readyMembers(poolDir);
  ready.sort((a, b) => memberNumber(a) - memberNumber(b));
  for (const member of ready) {
    const claimed = path.join(poolDir, POOL_FILES.claimed, member);
    try {
      await fs.rename(path.join(poolDir, POOL_FILES.ready, member), claimed);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) continue; // another run took it first
      throw err;
    }
    await fs.writeFile(claimed, `${JSON.stringify(me)}\n`, { mode: 0o600 });
    return member;
  }
  return undefined;
}

function memberNumber(member: string): number {
  return Number(member.slice(member.lastIndexOf('-') + 1));
}

const claimSchema = v.strictObject({ pid: pidSchema, startTime: startTimeSchema });

/** How long a claim may stay without its claimant's identity before it counts as abandoned. */
export const CLAIM_WRITE_GRACE_MS = 10_000;

/**
 * Whether the run that claimed `member` is still there: its identity names a live process, or the
 * claim is younger than CLAIM_WRITE_GRACE_MS and not yet written. A claim that is gone is false.
 */
export async function isClaimantAlive(poolDir: string, member: string, nowMs = Date.now()): Promise<boolean> {
  const file = path.join(poolDir, POOL_FILES.claimed, member);
  let text: string;
  let mtimeMs: number;
  try {
    [text, mtimeMs] = await Promise.all([fs.readFile(file, 'utf8'), fs.stat(file).then((s) => s.mtimeMs)]);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
  let parsed: v.SafeParseResult<typeof claimSchema>;
  try {
    parsed = v.safeParse(claimSchema, JSON.parse(text));
  } catch {
    return nowMs - mtimeMs < CLAIM_WRITE_GRACE_MS;
  }
  if (!parsed.success) return nowMs - mtimeMs < CLAIM_WRITE_GRACE_MS;
  return isSameProcess(parsed.output.pid, parsed.output.startTime);
}

/** Removes a member's entries (ready and claimed) once it is gone. */
export async function forgetMember(poolDir: string, member: string): Promise<void> {
  await fs.rm(path.join(poolDir, POOL_FILES.ready, member), { force: true });
  await fs.rm(path.join(poolDir, POOL_FILES.claimed, member), { force: true });
}
