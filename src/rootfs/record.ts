import fs from 'node:fs/promises';
import path from 'node:path';
import * as v from 'valibot';
import { HostError } from '../errors.ts';
import { GUEST_ARCHES, type GuestArch } from '../host/arch.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { provisionCommand } from '../host/provision.ts';
import { isTerminalSafe, terminalSafeLine } from '../host/terminal-text.ts';
import { INSTANCE_NAME } from '../instance/runs.ts';
import { describeIssues, exactObject, type RecordSchema, recordOf } from '../instance/schema.ts';
import { readGatewayGuestScripts } from './guest-scripts.ts';
import { ROOTFS_PATHS } from './layout.ts';

export const RECORD_FORMAT = 1;

/** One thing that went into a rootfs. */
export interface RootfsInput {
  readonly kind: 'base' | 'k3s' | 'chart' | 'image' | 'manifest' | 'guest-script' | 'kernel-modules';
  /** Where it came from: a path, a URL, an image reference. */
  readonly source: string;
  readonly version: string;
  /** SHA-256 (hex) of what was installed: a file, a tarball, an image manifest. */
  readonly sha256: string;
  /** Where it is in the rootfs. */
  readonly path?: string | undefined;
  readonly verification?: string | undefined;
}

/** What of the gateway runs an image (default-images.ts resolves them). */
export const IMAGE_ROLES = ['gateway', 'supervisor', 'sandbox', 'agent-sandbox'] as const;
export type ImageRole = (typeof IMAGE_ROLES)[number];

/** One image in k3s's airgap directory, as k3s will import it. */
export interface PreloadedImage {
  /** The name it is imported under (canonical); absent for an archive that names none. */
  readonly reference?: string | undefined;
  /** Its manifest's digest (sha256:...), which every blob was verified against. */
  readonly digest: string;
  /** default: pre-loaded because the gateway runs it; given: --image (or a --gateway-image/--sandbox-image pulled by default). */
  readonly source: 'default' | 'given';
  /** What of the gateway runs it; absent for an extra --image. */
  readonly for?: ImageRole | undefined;
  /** The archive in the rootfs (its input in `inputs` has the same path). */
  readonly path: string;
}

/** `/opt/openshell/rootfs.json`: every input of a build and when it was made. */
export interface RootfsRecord {
  readonly format: number;
  readonly tool: { readonly name: 'openshell-vm'; readonly version: string };
  readonly builtAt: string;
  readonly buildMs: number;
  readonly arch: GuestArch;
  readonly instance: string;
  readonly base: { readonly kind: 'debian' | 'oci' | 'archive'; readonly source: string };
  readonly owners: 'preserved' | 'current-user';
  /** Kernel release of the modules installed for the QEMU backend's kernel. */
  readonly kernelRelease: string | undefined;
  readonly inputs: readonly RootfsInput[];
  /** Debian packages and versions in the base (from dpkg's status), if any. */
  readonly packages: Readonly<Record<string, string>>;
  /** The packages asked for beyond the gateway's own (--package), sorted; absent when none were. */
  readonly extraPackages?: readonly string[] | undefined;
  /** The pre-loaded images (absent in records of builds before openshell-vm pre-loaded by default). */
  readonly images?: readonly PreloadedImage[] | undefined;
  /** What `prepare-rootfs --preinit` did (absent when the rootfs was not pre-initialized). */
  readonly preinit?: PreinitRecord | undefined;
  readonly warnings: readonly string[];
}

/** The build-time boot of `prepare-rootfs --preinit` (src/api/preinit.ts). */
export interface PreinitRecord {
  readonly at: string;
  /** From the start of the boot to Ready (Health HEALTHY). */
  readonly readyMs: number;
  /** The whole step: PKI, boot, Ready, ordered stop, kine cleanup. */
  readonly totalMs: number;
  /** The version the gateway's Health answered with. */
  readonly gatewayVersion: string;
  /** sha256 of the baked CA certificate (DER): `openssl x509 -noout -fingerprint -sha256` shows it. */
  readonly caSha256: string;
  /** The kine cleanup after the stop; null when k3s kept no kine database. */
  readonly kine: {
    readonly rowsBefore: number;
    readonly rowsAfter: number;
    readonly bytesAfter: number;
  } | null;
}

export const rebuildCommand = (instance: string) => `openshell-vm prepare-rootfs --name ${instance} --force`;

/**
 * The instance whose rootfs `rootfs` is, when it sits where prepare-rootfs builds one
 * (<data>/instances/NAME/rootfs); undefined for any other directory (a `--rootfs` elsewhere).
 */
export function instanceOfRootfs(rootfs: string): string | undefined {
  const resolved = path.resolve(rootfs);
  const instance = path.basename(path.dirname(resolved));
  const isInstanceRootfs =
    path.basename(resolved) === 'rootfs' &&
    path.basename(path.dirname(path.dirname(resolved))) === 'instances' &&
    INSTANCE_NAME.test(instance);
  return isInstanceRootfs ? instance : undefined;
}

/**
 * How to (re)build `rootfs`: prepare-rootfs for its instance when it is an instance's; for a
 * directory prepare-rootfs does not build into, where it builds one instead (never a command
 * with a made-up or empty instance name).
 */
export function rebuildHint(rootfs: string, verb: 'build' | 'rebuild'): string {
  const instance = instanceOfRootfs(rootfs);
  if (instance) return `${verb} it: ${rebuildCommand(instance)}`;
  return `it is not an instance's rootfs; build one with openshell-vm prepare-rootfs (into <data dir>/instances/default/rootfs; --name picks another instance) and give that directory to --rootfs, or leave --rootfs out`;
}

/** The record is written by this tool and a few KiB long; anything larger is not one. */
export const RECORD_MAX_BYTES = 1024 * 1024;

/** A string the record may hold: bounded, and nothing a terminal would act on when printed. */
const text = (maxChars: number) =>
  v.pipe(v.string(), v.maxLength(maxChars), v.check(isTerminalSafe, 'has control characters'));

const sha256Hex = v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/));

/** A UTC date and time as Date#toISOString writes it (seconds and fraction optional), a real date. */
const ISO_UTC = /^(\d{4})-(\d{2})-(\d{2})T([01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?Z$/;
function isIsoUtcDateTime(s: string): boolean {
  const m = ISO_UTC.exec(s);
  if (!m) return false;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
}

const rootfsInputSchema: RecordSchema<RootfsInput> = exactObject({
  kind: v.picklist(['base', 'k3s', 'chart', 'image', 'manifest', 'guest-script', 'kernel-modules']),
  source: text(4096),
  version: text(256),
  sha256: sha256Hex,
  path: v.optional(text(4096)),
  verification: v.optional(text(1024)),
});

const preloadedImageSchema: RecordSchema<PreloadedImage> = exactObject({
  reference: v.optional(text(1024)),
  digest: v.pipe(v.string(), v.regex(/^sha256:[0-9a-f]{64}$/)),
  source: v.picklist(['default', 'given']),
  for: v.optional(v.picklist(IMAGE_ROLES)),
  path: text(4096),
});

const count = v.pipe(v.number(), v.integer(), v.minValue(0));
const preinitSchema: RecordSchema<PreinitRecord> = exactObject({
  at: v.pipe(v.string(), v.check(isIsoUtcDateTime, 'expected an ISO 8601 UTC date and time')),
  readyMs: count,
  totalMs: count,
  gatewayVersion: text(256),
  caSha256: sha256Hex,
  kine: v.nullable(exactObject({ rowsBefore: count, rowsAfter: count, bytesAfter: count })),
});

/** The build record's schema: unknown fields are errors, every string bounded and printable. */
export const rootfsRecordSchema: RecordSchema<RootfsRecord> = v.pipe(
  exactObject({
    format: v.literal(RECORD_FORMAT),
    tool: exactObject({ name: v.literal('openshell-vm'), version: text(64) }),
    builtAt: v.pipe(v.string(), v.check(isIsoUtcDateTime, 'expected an ISO 8601 UTC date and time')),
    buildMs: v.pipe(v.number(), v.integer(), v.minValue(0)),
    arch: v.picklist(GUEST_ARCHES),
    instance: v.pipe(v.string(), v.regex(INSTANCE_NAME)),
    base: exactObject({ kind: v.picklist(['debian', 'oci', 'archive']), source: text(4096) }),
    owners: v.picklist(['preserved', 'current-user']),
    kernelRelease: v.optional(text(256)),
    inputs: v.pipe(v.array(rootfsInputSchema), v.maxLength(10_000)),
    packages: v.pipe(
      recordOf(text(256), text(256)),
      v.check((p) => Object.keys(p).length <= 100_000, 'too many packages'),
    ),
    extraPackages: v.optional(v.pipe(v.array(text(256)), v.maxLength(10_000))),
    images: v.optional(v.pipe(v.array(preloadedImageSchema), v.maxLength(1000))),
    preinit: v.optional(preinitSchema),
    warnings: v.pipe(v.array(text(4096)), v.maxLength(1000)),
  }),
  // JSON drops an undefined kernelRelease: the parsed record has the key again.
  v.transform((r) => ({ ...r, kernelRelease: r.kernelRelease })),
);

/**
 * The build record of `rootfs`, read through GuestRoot (the guest owns the rootfs: a symlink, a
 * FIFO, a device or a file over RECORD_MAX_BYTES is refused, never followed or waited on) and
 * checked against rootfsRecordSchema. Errors name the file and the rebuild command and never
 * quote the file's content.
 */
export async function readRootfsRecord(rootfs: string): Promise<RootfsRecord> {
  const file = path.join(rootfs, ROOTFS_PATHS.record);
  const rebuild = rebuildHint(rootfs, 'rebuild');
  const root = new GuestRoot(rootfs, { hint: rebuild });
  let bytes: Buffer | undefined;
  try {
    bytes = await root.readFile(ROOTFS_PATHS.record, { maxBytes: RECORD_MAX_BYTES });
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    throw new HostError(`the build record cannot be read: ${err.message}`, { hint: rebuild, cause: err });
  }
  if (!bytes) {
    const exists = await fs.stat(rootfs).then(
      () => true,
      () => false,
    );
    throw new HostError(
      exists
        ? `${rootfs} has no build record (${ROOTFS_PATHS.record}): it was not made by openshell-vm prepare-rootfs, or its build did not finish`
        : `there is no rootfs at ${rootfs}`,
      { hint: rebuildHint(rootfs, 'build') },
    );
  }
  const why = checkRecord(bytes);
  if (typeof why === 'string')
    throw new HostError(`${file} is not a valid build record: ${why}`, { hint: rebuild });
  return why.record;
}

/**
 * Why `bytes` is not a build record (one short line, sanitized, no excerpt of the content), or
 * the record. No cause is kept: JSON.parse's messages quote the input.
 */
function checkRecord(bytes: Buffer): string | { record: RootfsRecord } {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    return `it is not JSON (${bytes.length} bytes)`;
  }
  const format = (json as { format?: unknown } | null)?.format;
  if (typeof format === 'number' && format !== RECORD_FORMAT) {
    return `format ${format}, expected ${RECORD_FORMAT}`;
  }
  const result = v.safeParse(rootfsRecordSchema, json);
  if (result.success) return { record: result.output };
  // The path may hold a planted key: sanitized and bounded.
  return terminalSafeLine(`does not match its schema (${describeIssues(result.issues)})`, {
    maxChars: 200,
  });
}

/**
 * The check before a boot: the rootfs has a build record, its guest scripts are byte for byte
 * this tool's, and (for the QEMU backend) its kernel modules are for the kernel about to boot.
 * Anything else is refused with the command that rebuilds it.
 */
export async function verifyRootfsForBoot(
  rootfs: string,
  options: { readonly kernelRelease?: string | undefined } = {},
): Promise<RootfsRecord> {
  const record = await readRootfsRecord(rootfs);
  const rebuild = rebuildCommand(record.instance);
  const root = new GuestRoot(rootfs, { hint: `rebuild it: ${rebuild}` });
  const recorded = new Map(
    record.inputs.filter((i) => i.kind === 'guest-script').map((i) => [i.path, i.sha256]),
  );
  for (const script of await readGatewayGuestScripts()) {
    const want = recorded.get(script.dest);
    if (want !== script.sha256) {
      const built = `built ${record.builtAt} by openshell-vm ${record.tool.version}`;
      throw new HostError(
        want
          ? `${rootfs} has a different /${script.dest} from the one this openshell-vm installs (${built})`
          : `${rootfs} lacks /${script.dest}, which this openshell-vm needs (${built})`,
        { hint: `rebuild it for this version: ${rebuild}` },
      );
    }
    // Guest-owned: read confined, and no more than the script's own size (a FIFO or a symlink to
    // /dev/zero is refused, not waited on or read without end).
    const expected = Buffer.from(script.text);
    let actual: Buffer | undefined;
    try {
      // A regular file of another size is not the script (an edit made it longer): not read.
      const stat = await root.lstat(script.dest);
      if (!stat?.isFile() || stat.size === expected.length) {
        actual = await root.readFile(script.dest, { maxBytes: expected.length });
      }
    } catch (err) {
      if (!(err instanceof HostError)) throw err;
      throw new HostError(`/${script.dest} in ${rootfs} cannot be checked: ${err.message}`, {
        hint: `rebuild it: ${rebuild}`,
        cause: err,
      });
    }
    if (!actual?.equals(expected)) {
      throw new HostError(`/${script.dest} in ${rootfs} was changed or removed after the build`, {
        hint: `rebuild it: ${rebuild}`,
      });
    }
  }
  if (options.kernelRelease && !record.kernelRelease) {
    throw new HostError(
      `${rootfs} has no kernel modules for the QEMU backend's kernel (${options.kernelRelease})`,
      {
        hint: `provision the guest kernel (${provisionCommand()}), then rebuild: ${rebuild}`,
      },
    );
  }
  if (options.kernelRelease && record.kernelRelease && record.kernelRelease !== options.kernelRelease) {
    throw new HostError(
      `${rootfs} has kernel modules for ${record.kernelRelease}, but the guest kernel is ${options.kernelRelease}`,
      { hint: `rebuild it for this kernel: ${rebuild}` },
    );
  }
  return record;
}
