import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { HostError, isErrno } from '../errors.ts';
import { provisionCommand } from '../host/provision.ts';

/**
 * The kernel modules the initramfs loads: virtio transport, virtio-fs root, serial ports, overlay,
 * NIC, and the disk root of a VM whose state is saved (virtio-blk, ext4: built in on Debian's
 * cloud kernels and openshell-vm's own, then skipped).
 */
export const INITRAMFS_MODULES = [
  'virtio_mmio',
  'virtiofs',
  'virtio_console',
  'overlay',
  'virtio_net',
  'virtio_blk',
  'ext4',
] as const;

export interface ModuleFile {
  /** Module name with '-' folded to '_' (as the kernel names it). */
  readonly name: string;
  /** Path relative to /lib/modules/<release>/, as modules.dep writes it. */
  readonly relPath: string;
}

/** modules.dep parsed: module name → its file and its dependencies' names. */
export interface ModuleIndex {
  readonly modules: ReadonlyMap<string, { readonly relPath: string; readonly deps: readonly string[] }>;
  readonly builtin: ReadonlySet<string>;
}

export function moduleName(relPath: string): string {
  return path
    .basename(relPath)
    .replace(/\.ko(\.(xz|gz|zst))?$/, '')
    .replaceAll('-', '_');
}

export function parseModulesDep(modulesDep: string, modulesBuiltin = ''): ModuleIndex {
  const modules = new Map<string, { relPath: string; deps: string[] }>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const relPath = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(moduleName);
    modules.set(moduleName(relPath), { relPath, deps });
  }
  const builtin = new Set(
    modulesBuiltin
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .map(moduleName),
  );
  return { modules, builtin };
}

/**
 * The modules to load, dependencies first, for the requested names. Built-in modules are skipped;
 * a name that is neither a module nor built in is an error naming the kernel.
 */
export function resolveLoadOrder(
  index: ModuleIndex,
  wanted: readonly string[],
  release: string,
): ModuleFile[] {
  const order: ModuleFile[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string, requestedBy?: string) => {
    const name = raw.replaceAll('-', '_');
    if (done.has(name) || index.builtin.has(name)) return;
    const entry = index.modules.get(name);
    if (!entry) {
      const via = requestedBy ? ` (needed by ${requestedBy})` : '';
      throw new HostError(`kernel ${release} has no module '${name}'${via}, neither loadable nor built in`, {
        hint: 'the guest kernel lacks a driver openshell-vm needs; use a Debian cloud kernel',
      });
    }
    if (visiting.has(name))
      throw new HostError(`modules.dep of ${release} has a dependency cycle at ${name}`);
    visiting.add(name);
    for (const dep of entry.deps) visit(dep, name);
    visiting.delete(name);
    done.add(name);
    order.push({ name, relPath: entry.relPath });
  };
  for (const name of wanted) visit(name);
  return order;
}

export async function readModuleIndex(modulesDir: string): Promise<ModuleIndex> {
  const dep = await fs.readFile(path.join(modulesDir, 'modules.dep'), 'utf8');
  const builtin = await fs.readFile(path.join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  return parseModulesDep(dep, builtin);
}

const execFileAsync = promisify(execFile);

/** The largest module we decompress: the biggest Debian cloud kernel module is a few MiB. */
const MAX_MODULE_BYTES = 64 << 20;

export interface ReadModuleOptions {
  /** The xz executable (default: `xz` on PATH). */
  readonly xz?: string | undefined;
}

/**
 * A module's bytes, decompressed (busybox insmod loads plain .ko files). Debian 12's cloud kernel
 * ships plain .ko, Debian 13's .ko.xz (xz-utils, which provisioning installs); .ko.gz and .ko.zst
 * are decompressed with Node's zlib.
 */
export async function readModule(
  modulesDir: string,
  relPath: string,
  options: ReadModuleOptions = {},
): Promise<Buffer> {
  const file = path.join(modulesDir, relPath);
  const limit = { maxOutputLength: MAX_MODULE_BYTES };
  if (relPath.endsWith('.ko')) return fs.readFile(file);
  const inflate = relPath.endsWith('.ko.gz')
    ? zlib.gunzipSync
    : relPath.endsWith('.ko.zst')
      ? zlib.zstdDecompressSync
      : undefined;
  if (inflate) {
    const compressed = await fs.readFile(file);
    try {
      return inflate(compressed, limit);
    } catch (err) {
      throw damaged(file, err);
    }
  }
  if (relPath.endsWith('.ko.xz')) {
    const xz = options.xz ?? 'xz';
    try {
      const { stdout } = await execFileAsync(xz, ['-dc', '--', file], {
        encoding: 'buffer',
        maxBuffer: MAX_MODULE_BYTES,
      });
      return stdout;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        throw new HostError(`cannot decompress ${file}: ${xz} is not installed`, {
          hint: `apt-get install xz-utils (${provisionCommand()} installs it)`,
          cause: err,
        });
      }
      throw damaged(file, err);
    }
  }
  throw new HostError(`unknown kernel module format: ${file}`, {
    hint: 'openshell-vm reads .ko, .ko.xz, .ko.gz and .ko.zst modules; use a Debian cloud kernel',
  });
}

function damaged(file: string, cause: unknown): HostError {
  const stderr =
    cause && typeof cause === 'object' && 'stderr' in cause && Buffer.isBuffer(cause.stderr)
      ? `: ${cause.stderr.toString('utf8').trim().split('\n').slice(-3).join('; ')}`
      : cause instanceof Error
        ? `: ${cause.message}`
        : '';
  return new HostError(`cannot decompress ${file}${stderr}`, {
    hint: `the cached guest kernel is damaged: run ${provisionCommand('--refresh')}`,
    cause,
  });
}

/** The name a module has once decompressed into the initramfs. */
export function plainModulePath(relPath: string): string {
  return relPath.replace(/\.ko\.(xz|gz|zst)$/, '.ko');
}
