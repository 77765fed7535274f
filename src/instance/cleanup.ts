import path from 'node:path';
import * as v from 'valibot';
import type { HostEnvironment } from '../config/environment.ts';
import { isErrno } from '../errors.ts';
import { writeFileAtomic } from '../host/fs.ts';
import type { GuestRoot } from '../host/guest-root.ts';
import { exactObject, parseRecord } from './schema.ts';
import { readRecordFile } from './trust.ts';

/**
 * What a preset leaves outside the instance directory (the gateway: its kubeconfig, the OpenShell
 * CLI's files, a merged context; inside its rootfs: k3s's cluster state) and how `delete` and
 * `--reset` take it away. The lifecycle (lifecycle.ts) owns the order, the lock and the instance
 * directory; a preset hands in its cleanup (src/presets/index.ts lists them), so nothing in
 * src/instance/ knows what a preset writes.
 */

/** What every hook is told. */
export interface CleanupContext {
  readonly env: HostEnvironment;
  readonly name: string;
  /** The instance directory; still there while hooks run (its records, e.g. a merge record, too). */
  readonly instanceDir: string;
  readonly progress: (message: string) => void;
  readonly warn: (message: string) => void;
}

export interface ResetContext extends CleanupContext {
  /**
   * The guest's root (its rootfs), which the guest owns: remove through it only, so a symlink the
   * guest planted on the way is refused and one at the end of a path unlinked, never followed.
   */
  readonly root: GuestRoot;
}

/** What a hook did, as lines for the user. */
export interface CleanupResult {
  /** Paths removed. */
  readonly removed: readonly string[];
  /** Entries taken out of a file that stays (a context in ~/.kube/config), one line each. */
  readonly takenOut: readonly string[];
}

export interface InstanceCleanup {
  /** The preset's name, as recordPreset writes it. */
  readonly preset: string;
  /** `delete`: the instance is stopped and locked; its directory is removed after every hook. */
  onDelete?(ctx: CleanupContext): Promise<CleanupResult>;
  /** `--reset`: the instance is stopped and locked; its rootfs stays, minus what this removes. */
  onReset?(ctx: ResetContext): Promise<CleanupResult>;
}

/**
 * In the instance directory: the presets that booted it and so may have left something outside it
 * (only presets with a cleanup record themselves). `delete` runs the cleanup of these, and only
 * these: an instance that only `run` used does not lose the user's ~/.kube/NAME.yaml or an
 * OpenShell gateway of the same name.
 */
export const PRESETS_FILE = 'presets.json';

const PRESET_NAME = /^[a-z][a-z0-9-]{0,31}$/;

const presetRecordSchema = exactObject({
  version: v.literal(1),
  presets: v.pipe(v.array(v.pipe(v.string(), v.regex(PRESET_NAME))), v.maxLength(16)),
});

export type PresetRecordRead =
  | { readonly kind: 'none' }
  | { readonly kind: 'ok'; readonly presets: readonly string[] }
  | { readonly kind: 'broken'; readonly path: string; readonly reason: string };

/**
 * The presets record: read only as a regular file of ours that others cannot write (no symlink
 * followed, size-limited), matching its schema; anything else is `broken`, with the reason.
 */
export async function readPresetRecord(instanceDir: string): Promise<PresetRecordRead> {
  const file = path.join(instanceDir, PRESETS_FILE);
  const read = await readRecordFile(file).catch((err: unknown) => {
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return { kind: 'missing' as const };
    throw err;
  });
  if (read.kind === 'missing') return { kind: 'none' };
  if (read.kind === 'untrusted') return { kind: 'broken', path: file, reason: read.reason };
  const parsed = parseRecord(read.text, presetRecordSchema);
  if (!parsed.ok) return { kind: 'broken', path: file, reason: parsed.reason };
  return { kind: 'ok', presets: parsed.value.presets };
}

/**
 * Adds `preset` to the instance's presets record (atomically, 0600), before the preset writes
 * anything outside the instance directory. Call it with the instance lock held. A broken record is
 * replaced: it names nothing we can trust, and this preset is what the instance is now.
 */
export async function recordPreset(instanceDir: string, preset: string): Promise<void> {
  if (!PRESET_NAME.test(preset)) throw new Error(`not a preset name: '${preset}'`);
  const read = await readPresetRecord(instanceDir);
  const presets = read.kind === 'ok' ? read.presets : [];
  if (presets.includes(preset)) return;
  const record = { version: 1, presets: [...presets, preset] };
  await writeFileAtomic(path.join(instanceDir, PRESETS_FILE), `${JSON.stringify(record)}\n`, 0o600);
}

/**
 * The cleanups `delete` runs, in the order given: those of the recorded presets. No record: none
 * (no preset with a cleanup booted it). A broken record: every cleanup (each removes only what
 * exists for this instance's name), with a warning. A recorded preset that no cleanup serves (a
 * newer openshell-vm's) is named in a warning.
 */
export function selectCleanups(
  cleanups: readonly InstanceCleanup[],
  record: PresetRecordRead,
  warn: (message: string) => void,
): InstanceCleanup[] {
  if (record.kind === 'none') return [];
  if (record.kind === 'broken') {
    warn(`${record.path} ${record.reason}: removing what every preset may have left for this instance`);
    return [...cleanups];
  }
  for (const name of record.presets) {
    if (!cleanups.some((c) => c.preset === name)) {
      warn(`${PRESETS_FILE} names preset '${name}', unknown to this openshell-vm: nothing of it removed`);
    }
  }
  return cleanups.filter((c) => record.presets.includes(c.preset));
}
