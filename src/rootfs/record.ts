import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
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
  readonly warnings: readonly string[];
}

export const rebuildCommand = (instance: string) => `openshell-vm prepare-rootfs --name ${instance} --force`;

export async function readRootfsRecord(rootfs: string): Promise<RootfsRecord> {
  const file = path.join(rootfs, ROOTFS_PATHS.record);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      const exists = await fs.stat(rootfs).then(
        () => true,
        () => false,
      );
      throw new HostError(
        exists
          ? `${rootfs} has no build record (${ROOTFS_PATHS.record}): it was not made by openshell-vm prepare-rootfs, or its build did not finish`
          : `there is no rootfs at ${rootfs}`,
        { hint: `build it: ${rebuildCommand(path.basename(path.dirname(rootfs)))}`, cause: err },
      );
    }
    throw err;
  }
  try {
    const record = JSON.parse(text) as RootfsRecord;
    if (record.format !== RECORD_FORMAT)
      throw new Error(`format ${record.format}, expected ${RECORD_FORMAT}`);
    return record;
  } catch (err) {
    throw new HostError(`${file} is not a valid build record: ${(err as Error).message}`, {
      hint: `rebuild it: ${rebuildCommand(path.basename(path.dirname(rootfs)))}`,
      cause: err,
    });
  }
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
    const actual = await fs.readFile(path.join(rootfs, script.dest), 'utf8').catch(() => undefined);
    if (actual !== script.text) {
      throw new HostError(`/${script.dest} in ${rootfs} was changed or removed after the build`, {
        hint: `rebuild it: ${rebuild}`,
      });
    }
  }
  if (options.kernelRelease && !record.kernelRelease) {
    throw new HostError(
      `${rootfs} has no kernel modules for the QEMU backend's kernel (${options.kernelRelease})`,
      {
        hint: `provision the guest kernel (scripts/provision-host.sh), then rebuild: ${rebuild}`,
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
