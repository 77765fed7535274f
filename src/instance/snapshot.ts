import fs from 'node:fs/promises';
import path from 'node:path';
import { randomHex } from '../host/random-hex.ts';

/**
 * An instance's saved VM state (a gateway's, after its first Ready): in the instance directory,
 *
 *   snapshot/disk.raw       the root image exactly as it was when the state was saved (never
 *                           written again: a restore runs on a throwaway overlay of it)
 *   snapshot/state          the VMM's saved state (QEMU migration stream)
 *   snapshot/snapshot.json  what it was saved from (inputs: name → fingerprint), sizes, times
 *
 * A snapshot is made in `snapshot.new-<random>/` and renamed into place whole once its state is
 * written, so `snapshot/` is always complete or absent. A restore runs only when every input
 * fingerprint is unchanged and the image is the one the state was saved with (size and mtime as
 * recorded); anything else is a cold boot with the reason.
 */
export const SNAPSHOT_DIR = 'snapshot';
export const SNAPSHOT_FILES = { disk: 'disk.raw', state: 'state', meta: 'snapshot.json' } as const;
const FORMAT = 1;

/** What a snapshot depends on, in words for the "not restored" message. */
export const SNAPSHOT_INPUTS = {
  format: "openshell-vm's snapshot format",
  rootfs: 'the rootfs (its build record)',
  rootfsFiles: "the rootfs's boot files (HelmChart, TLS Secrets, guest agent)",
  credentials: 'the gateway credentials',
  kernel: 'the guest kernel',
  initramfs: 'the initramfs',
  vmm: 'the VMM (QEMU binary)',
  machine: 'the machine (architecture, accelerator, vCPUs, memory)',
} as const;

export type SnapshotInputName = keyof typeof SNAPSHOT_INPUTS;
export type SnapshotInputs = Readonly<Record<SnapshotInputName, string>>;

export interface SnapshotMeta {
  readonly format: number;
  readonly inputs: SnapshotInputs;
  readonly savedAt: string;
  readonly stateBytes: number;
  readonly diskBytes: number;
  readonly diskMtimeMs: number;
  readonly pausedMs: number;
  /** How long the cold boot took to Ready (the figure a restore is compared with). */
  readonly coldReadyMs: number;
}

export type SnapshotLookup =
  | { readonly kind: 'found'; readonly dir: string; readonly meta: SnapshotMeta }
  | { readonly kind: 'none' }
  | { readonly kind: 'stale'; readonly reason: string };

export function snapshotDir(instanceDir: string): string {
  return path.join(instanceDir, SNAPSHOT_DIR);
}

/** The inputs that differ, in words ('' when none). Pure. */
export function changedInputs(saved: SnapshotInputs, now: SnapshotInputs): string {
  const changed = (Object.keys(SNAPSHOT_INPUTS) as SnapshotInputName[]).filter((k) => saved[k] !== now[k]);
  return changed.map((k) => SNAPSHOT_INPUTS[k]).join(', ');
}

/** Checks a parsed snapshot.json; undefined when it is not one this version wrote. */
export function parseSnapshotMeta(value: unknown): SnapshotMeta | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const v = value as Record<string, unknown>;
  const inputs = v.inputs as Record<string, unknown> | undefined;
  if (v.format !== FORMAT || !inputs || typeof inputs !== 'object') return undefined;
  for (const k of Object.keys(SNAPSHOT_INPUTS)) if (typeof inputs[k] !== 'string') return undefined;
  const nums = ['stateBytes', 'diskBytes', 'diskMtimeMs', 'pausedMs', 'coldReadyMs'] as const;
  for (const k of nums) if (typeof v[k] !== 'number' || !Number.isFinite(v[k])) return undefined;
  if (typeof v.savedAt !== 'string') return undefined;
  return v as unknown as SnapshotMeta;
}

/** The instance's snapshot, if there is one that matches `inputs` and its own files. */
export async function findSnapshot(instanceDir: string, inputs: SnapshotInputs): Promise<SnapshotLookup> {
  const dir = snapshotDir(instanceDir);
  const text = await fs.readFile(path.join(dir, SNAPSHOT_FILES.meta), 'utf8').catch(() => undefined);
  if (text === undefined) {
    const exists = await fs.stat(dir).then(
      () => true,
      () => false,
    );
    return exists ? { kind: 'stale', reason: 'the snapshot has no snapshot.json' } : { kind: 'none' };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const meta = parseSnapshotMeta(parsed);
  if (!meta)
    return { kind: 'stale', reason: 'its snapshot.json is not one this version of openshell-vm reads' };
  const changed = changedInputs(meta.inputs, inputs);
  if (changed) return { kind: 'stale', reason: `changed since it was saved: ${changed}` };
  const disk = await fs.stat(path.join(dir, SNAPSHOT_FILES.disk)).catch(() => undefined);
  if (!disk || disk.size !== meta.diskBytes || Math.round(disk.mtimeMs) !== Math.round(meta.diskMtimeMs)) {
    return { kind: 'stale', reason: 'its disk image is missing or was written after the state was saved' };
  }
  const state = await fs.stat(path.join(dir, SNAPSHOT_FILES.state)).catch(() => undefined);
  if (!state || state.size !== meta.stateBytes)
    return { kind: 'stale', reason: 'its saved state is missing or cut short' };
  return { kind: 'found', dir, meta };
}

/** A fresh directory for a snapshot being made (private: 0700). */
export async function newSnapshotDir(instanceDir: string): Promise<string> {
  const dir = path.join(instanceDir, `${SNAPSHOT_DIR}.new-${randomHex(6)}`);
  await fs.mkdir(dir, { mode: 0o700 });
  return dir;
}

/** fsync of a file or a directory (its entries). */
export async function syncPath(file: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Records `meta` in the new snapshot's directory (the disk's size and mtime as they are now) and
 * puts it in place of the old one. Everything is on disk before the rename that commits it (the
 * image, the state, snapshot.json and the directory fsynced), and the rename itself after it (the
 * instance directory fsynced): a crash leaves the old snapshot or the whole new one, never a
 * snapshot.json that describes files that were not written. `sync` is for tests.
 */
export async function commitSnapshot(
  instanceDir: string,
  newDir: string,
  meta: Omit<SnapshotMeta, 'format' | 'diskBytes' | 'diskMtimeMs' | 'stateBytes'>,
  sync: (file: string) => Promise<void> = syncPath,
): Promise<SnapshotMeta> {
  const diskFile = path.join(newDir, SNAPSHOT_FILES.disk);
  const stateFile = path.join(newDir, SNAPSHOT_FILES.state);
  const metaFile = path.join(newDir, SNAPSHOT_FILES.meta);
  const disk = await fs.stat(diskFile);
  const state = await fs.stat(stateFile);
  const full: SnapshotMeta = {
    format: FORMAT,
    ...meta,
    stateBytes: state.size,
    diskBytes: disk.size,
    diskMtimeMs: disk.mtimeMs,
  };
  await fs.chmod(stateFile, 0o600);
  await sync(diskFile);
  await sync(stateFile);
  await fs.writeFile(metaFile, `${JSON.stringify(full, null, 2)}\n`, { mode: 0o600 });
  await sync(metaFile);
  await sync(newDir);
  await removeSnapshot(instanceDir, { keep: newDir });
  await fs.rename(newDir, snapshotDir(instanceDir));
  await sync(instanceDir);
  return full;
}

/**
 * Removes the instance's snapshot and any half-made one (a crash's, a failed save's), but `keep`;
 * unfinishedOnly: only the half-made ones (`snapshot.new-*`). Returns what it removed. Callers
 * hold the instance lock (a start that is making one holds it too).
 */
export async function removeSnapshot(
  instanceDir: string,
  options: { readonly keep?: string; readonly unfinishedOnly?: boolean } = {},
): Promise<string[]> {
  const removed: string[] = [];
  const names = await fs.readdir(instanceDir).catch(() => [] as string[]);
  for (const name of names) {
    const full = path.join(instanceDir, name);
    if (options.keep && full === path.resolve(options.keep)) continue;
    const unfinished = name.startsWith(`${SNAPSHOT_DIR}.new-`);
    if (unfinished || (name === SNAPSHOT_DIR && !options.unfinishedOnly)) {
      await fs.rm(full, { recursive: true, force: true });
      removed.push(full);
    }
  }
  return removed;
}
