import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { DEB_ARCH, type GuestArch } from './arch.ts';
import { isExecutableFile as isExecutable, pathExists } from './fs.ts';
import { provisionCommand } from './provision.ts';

/** What scripts/provision-host.sh recorded for one guest architecture. */
export interface GuestInputs {
  readonly arch: GuestArch;
  readonly manifestPath: string;
  readonly kernel: {
    readonly package: string;
    readonly version: string;
    readonly release: string;
    readonly vmlinuz: string;
    readonly vmlinuzSha256: string;
    readonly modulesDir: string;
    readonly modulesDepSha256: string;
  };
  readonly busybox: {
    readonly version: string;
    readonly binary: string;
    readonly binarySha256: string;
  };
}

const provisionHint = (arch: GuestArch) => `run ${provisionCommand(`--arch ${arch}`)} to fetch it`;

export async function loadGuestInputs(env: HostEnvironment, arch: GuestArch): Promise<GuestInputs> {
  const manifestPath = path.join(env.cacheDir, 'host', DEB_ARCH[arch], 'manifest.json');
  let raw: string;
  try {
    raw = await fs.readFile(manifestPath, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw new HostError(`no guest kernel for ${arch}: ${manifestPath} does not exist`, {
        hint: provisionHint(arch),
        cause: err,
      });
    }
    throw err;
  }
  let parsed: GuestInputs;
  try {
    parsed = { ...(JSON.parse(raw) as Omit<GuestInputs, 'arch' | 'manifestPath'>), arch, manifestPath };
  } catch (err) {
    throw new HostError(`${manifestPath} is not valid JSON`, { hint: provisionHint(arch), cause: err });
  }
  for (const file of [parsed.kernel?.vmlinuz, parsed.busybox?.binary, parsed.kernel?.modulesDir]) {
    if (typeof file !== 'string' || !(await pathExists(file))) {
      throw new HostError(`the guest kernel cache for ${arch} is incomplete (missing ${file})`, {
        hint: `${provisionHint(arch)} --refresh`,
      });
    }
  }
  return parsed;
}

const QEMU_BINARY: Readonly<Record<GuestArch, string>> = {
  x86_64: 'qemu-system-x86_64',
  aarch64: 'qemu-system-aarch64',
};
const QEMU_PACKAGE: Readonly<Record<GuestArch, string>> = {
  x86_64: 'qemu-system-x86',
  aarch64: 'qemu-system-arm',
};

export async function findQemu(env: HostEnvironment, arch: GuestArch): Promise<string> {
  const override = env.toolOverrides[`qemu-${arch}`];
  if (override) return requireExecutable(override, `OPENSHELL_VM_QEMU_${arch.toUpperCase()}`);
  const found = await findOnPath(QEMU_BINARY[arch], env.searchPath);
  if (!found) {
    throw new HostError(`${QEMU_BINARY[arch]} not found on PATH`, {
      hint:
        process.platform === 'darwin'
          ? 'brew install qemu'
          : `apt-get install ${QEMU_PACKAGE[arch]} (or run ${provisionCommand()})`,
    });
  }
  return found;
}

/** Debian 13+ ships virtiofsd on its own; Debian 12 inside qemu-system-common. */
const VIRTIOFSD_LOCATIONS = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd'];

export async function findVirtiofsd(env: HostEnvironment): Promise<string> {
  const override = env.toolOverrides.virtiofsd;
  if (override) return requireExecutable(override, 'OPENSHELL_VM_VIRTIOFSD');
  const onPath = await findOnPath('virtiofsd', env.searchPath);
  if (onPath) return onPath;
  for (const candidate of VIRTIOFSD_LOCATIONS) {
    if (await isExecutable(candidate)) return candidate;
  }
  throw new HostError(`virtiofsd not found (looked on PATH and in ${VIRTIOFSD_LOCATIONS.join(', ')})`, {
    hint: 'apt-get install virtiofsd (Debian 13+) or qemu-system-common (Debian 12)',
  });
}

export async function findOnPath(name: string, searchPath: string): Promise<string | undefined> {
  for (const dir of searchPath.split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}

async function requireExecutable(file: string, variable: string): Promise<string> {
  if (await isExecutable(file)) return file;
  throw new HostError(`${variable} points at ${file}, which is not an executable file`, {
    hint: `fix or unset ${variable}`,
  });
}
