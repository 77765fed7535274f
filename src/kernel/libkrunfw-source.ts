import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import { type DownloadProgress, fetchPinned } from './libkrunfw-fetch.ts';
import type { PinnedDownload } from './libkrunfw-pins.ts';
import { sha256File } from './source.ts';

/** One input of the libkrunfw build: where it is, its identity, and whether it is the pinned one. */
export interface ResolvedInput {
  readonly what: string;
  /** A tarball, or (libkrunfw only) a source directory. */
  readonly path: string;
  readonly kind: 'tarball' | 'directory';
  /** The file's sha256, or for a directory the sha256 of its tree (treeSha256). */
  readonly sha256: string;
  /** True when it is the pinned release (same sha256); a local input may be another one. */
  readonly pinned: boolean;
  readonly downloaded: boolean;
}

/**
 * A build input: a local path when given (a tarball, or a directory where `allowDirectory`),
 * used as given and identified by its sha256 (a warning says when it is not the pinned one), else
 * the pinned download, fetched into `downloads` and verified (fetchPinned).
 */
export async function resolveInput(
  pin: PinnedDownload,
  local: string | undefined,
  downloads: string,
  options: {
    readonly allowDirectory: boolean;
    readonly flag: string;
    readonly warn: (message: string) => void;
    readonly onProgress?: DownloadProgress | undefined;
    readonly signal?: AbortSignal | undefined;
  },
): Promise<ResolvedInput> {
  if (local === undefined) {
    const { file, downloaded } = await fetchPinned(pin, downloads, {
      onProgress: options.onProgress,
      signal: options.signal,
    });
    return {
      what: pin.what,
      path: file,
      kind: 'tarball',
      sha256: pin.sha256 as string,
      pinned: true,
      downloaded,
    };
  }
  const abs = path.resolve(local);
  let stat: import('node:fs').Stats;
  try {
    stat = await fs.stat(abs);
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
    throw new HostError(`${options.flag} ${local} does not exist`, {
      hint: `pass the ${pin.what}: ${options.allowDirectory ? 'a directory or ' : ''}a tarball such as ${pin.fileName}`,
    });
  }
  const kind = stat.isDirectory() ? 'directory' : 'tarball';
  if (kind === 'directory' && !options.allowDirectory) {
    throw new HostError(`${options.flag} ${local} is a directory`, {
      hint: `pass a tarball such as ${pin.fileName}`,
    });
  }
  const sha256 = kind === 'directory' ? await treeSha256(abs) : await sha256File(abs);
  const pinned = kind === 'tarball' && sha256 === pin.sha256;
  if (!pinned) {
    options.warn(
      `${options.flag} ${local} is not the pinned ${pin.what} ${pin.version} (its sha256 is ${sha256}): used as given`,
    );
  }
  return { what: pin.what, path: abs, kind, sha256, pinned, downloaded: false };
}

/**
 * A directory's identity: the sha256 over every entry's relative path, type, executable bit and
 * content (symlinks by target), in sorted order; `.git` is left out.
 */
export async function treeSha256(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const names = (await fs.readdir(path.join(dir, rel))).sort();
    for (const name of names) {
      if (rel === '' && name === '.git') continue;
      const r = rel ? `${rel}/${name}` : name;
      const st = await fs.lstat(path.join(dir, r));
      if (st.isDirectory()) {
        hash.update(`d ${r}\n`);
        await walk(r);
      } else if (st.isSymbolicLink()) {
        hash.update(`l ${r} ${await fs.readlink(path.join(dir, r))}\n`);
      } else if (st.isFile()) {
        hash.update(`f ${r} ${st.mode & 0o111 ? 'x' : '-'} ${await sha256File(path.join(dir, r))}\n`);
      }
    }
  };
  await walk('');
  return hash.digest('hex');
}

/** What libkrunfw's Makefile and tree say about a release (read, never run). */
export interface LibkrunfwTree {
  readonly dir: string;
  /** KERNEL_VERSION's release, e.g. "6.12.91" (from "linux-6.12.91"). */
  readonly kernelVersion: string;
  readonly abiVersion: number;
  /** FULL_VERSION, e.g. "5.5.0"; the library is libkrunfw.so.FULL_VERSION. */
  readonly fullVersion: string;
  /** patches/0*.patch, sorted, as the Makefile applies them (absolute paths). */
  readonly patches: readonly string[];
  /** config-libkrunfw_<arch>, the base configuration. */
  readonly configFile: string;
}

/** The Makefile's facts (pure): a Makefile without them is not libkrunfw's. */
export function parseLibkrunfwMakefile(text: string): {
  kernelVersion: string;
  abiVersion: number;
  fullVersion: string;
} {
  const field = (name: string) => new RegExp(`^${name}\\s*=\\s*(\\S+)`, 'm').exec(text)?.[1];
  const kernel = field('KERNEL_VERSION');
  const abi = field('ABI_VERSION');
  const full = field('FULL_VERSION');
  if (!kernel || !/^linux-\d+\.\d+/.test(kernel) || !abi || !/^\d+$/.test(abi) || !full) {
    throw new HostError(
      'this is not libkrunfw: its Makefile has no KERNEL_VERSION = linux-..., ABI_VERSION and FULL_VERSION',
      {
        hint: 'pass the libkrunfw source (a release tarball or a checkout)',
      },
    );
  }
  return { kernelVersion: kernel.slice('linux-'.length), abiVersion: Number(abi), fullVersion: full };
}

/** The unpacked libkrunfw source in `dir`, read for the build of `arch`. */
export async function readLibkrunfwTree(dir: string, arch: GuestArch): Promise<LibkrunfwTree> {
  let makefile: string;
  try {
    makefile = await fs.readFile(path.join(dir, 'Makefile'), 'utf8');
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
    throw new HostError('this is not libkrunfw: it has no Makefile', {
      hint: 'pass the libkrunfw source (a release tarball or a checkout)',
    });
  }
  const facts = parseLibkrunfwMakefile(makefile);
  const configFile = path.join(dir, `config-libkrunfw_${arch}`);
  try {
    await fs.access(configFile);
  } catch {
    throw new HostError(`libkrunfw ${facts.fullVersion} has no config-libkrunfw_${arch}`, {
      hint: 'this libkrunfw release does not support that architecture',
    });
  }
  const patchDir = path.join(dir, 'patches');
  const names = await fs.readdir(patchDir).catch(() => [] as string[]);
  const patches = names
    .filter((n) => n.startsWith('0') && n.endsWith('.patch'))
    .sort()
    .map((n) => path.join(patchDir, n));
  return { dir, ...facts, patches, configFile };
}
