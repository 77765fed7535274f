import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { CommandError, explainHostCondition, HostError, isErrno } from '../errors.ts';
import {
  ensureTrustedCacheDir,
  requireTrustedEntry,
  untrustedEntryIn,
  untrustedError,
} from '../host/dir-trust.ts';
import { pathExists } from '../host/fs.ts';

/** A kernel source tarball and what is known about it. */
export interface KernelSource {
  /** The Debian package it came from (linux-source-6.12), or 'local' for --source PATH. */
  readonly package: string;
  /** The package's version (6.12.118-1~deb12u1); for a local tarball, its file name. */
  readonly version: string;
  readonly tarball: string;
  /** The sha256 the tarball must have (recorded at provisioning), or its own for a local one. */
  readonly sha256: string;
  /** Where the expected sha256 came from, for messages. */
  readonly recordedIn: string | undefined;
}

/** Written by scripts/lib/fetch-linux-source.sh. */
interface SourceManifest {
  readonly package: string;
  readonly version: string;
  readonly release?: string;
  readonly tarball: string;
  readonly tarballSha256: string;
}

export const SOURCE_MANIFEST = ['host', 'linux-source', 'manifest.json'] as const;

const provisionHint =
  'run scripts/provision-host.sh (it fetches linux-source-6.12), or pass --source TARBALL';

/** The source provisioning fetched (Debian's linux-source-6.12). */
export async function provisionedSource(env: HostEnvironment): Promise<KernelSource> {
  const file = path.join(env.cacheDir, ...SOURCE_MANIFEST);
  let manifest: Partial<SourceManifest>;
  try {
    manifest = JSON.parse(await fs.readFile(file, 'utf8')) as Partial<SourceManifest>;
  } catch (err) {
    if (isErrno(err, 'ENOENT'))
      throw new HostError(`no kernel source: ${file} does not exist`, { hint: provisionHint, cause: err });
    throw new HostError(`${file} is not a valid manifest`, {
      hint: `${provisionHint} --refresh`,
      cause: err,
    });
  }
  for (const key of ['package', 'version', 'tarball', 'tarballSha256'] as const) {
    if (typeof manifest[key] !== 'string' || !manifest[key])
      throw new HostError(`${file} has no ${key}`, { hint: 'run scripts/provision-host.sh --refresh' });
  }
  if (!/^[0-9a-f]{64}$/.test(manifest.tarballSha256 as string))
    throw new HostError(`${file}: tarballSha256 is not a sha256`, {
      hint: 'run scripts/provision-host.sh --refresh',
    });
  return {
    package: manifest.package as string,
    version: manifest.version as string,
    tarball: manifest.tarball as string,
    sha256: manifest.tarballSha256 as string,
    recordedIn: file,
  };
}

/** A tarball given on the command line: trusted as given, identified by its own sha256. */
export async function localSource(tarball: string): Promise<KernelSource> {
  const abs = path.resolve(tarball);
  if (!(await pathExists(abs)))
    throw new HostError(`--source ${tarball} does not exist`, {
      hint: 'pass a kernel source tarball (.tar.xz, .tar.gz)',
    });
  return {
    package: 'local',
    version: path.basename(abs),
    tarball: abs,
    sha256: await sha256File(abs),
    recordedIn: undefined,
  };
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Checks the tarball against its recorded sha256 (a mismatch: changed or damaged since provisioning). */
export async function verifySource(source: KernelSource): Promise<void> {
  let actual: string;
  try {
    actual = await sha256File(source.tarball);
  } catch (err) {
    if (isErrno(err, 'ENOENT'))
      throw new HostError(`the kernel source ${source.tarball} does not exist`, {
        hint: `${provisionHint} --refresh`,
        cause: err,
      });
    throw err;
  }
  if (actual !== source.sha256) {
    throw new HostError(
      `checksum mismatch: ${source.tarball} has sha256 ${actual}, but ${source.recordedIn ?? 'its record'} says ${source.sha256}`,
      {
        hint: 'the tarball changed or is damaged: run scripts/provision-host.sh --refresh (nothing was built)',
      },
    );
  }
}

/** The unpacked tree of one tarball (shared, read-only by convention: builds go to O=). */
export interface SourceTree {
  readonly dir: string;
  /** From the top Makefile: 6.12.118. */
  readonly kernelVersion: string;
}

const COMPLETE = '.openshell-vm-complete';

/**
 * The tarball unpacked once into <cache>/kernels/source/<sha256>/ (unpacked beside it and renamed
 * into place, so a half-unpacked tree is never used), reused by every later build. The build runs
 * that tree's Makefile, so a tree is used only when every directory from <cache>/kernels down to
 * it, and everything in it, is ours and not writable by group or others: a tree another user
 * planted or could change is a HostError naming it (src/host/dir-trust.ts), and nothing in it runs.
 * A tree is never removed from under another build: one that is there without its marker (left by
 * an interrupted older version) is renamed aside before ours takes its place.
 */
export async function ensureSourceTree(
  env: HostEnvironment,
  source: KernelSource,
  tar: string,
  options: { readonly signal?: AbortSignal | undefined; readonly onUnpack?: (() => void) | undefined } = {},
): Promise<SourceTree & { unpacked: boolean }> {
  const { signal } = options;
  // <cache>/kernels, the root of trust (kernelCacheRoot in cache.ts, which imports this module).
  const root = path.join(env.cacheDir, 'kernels');
  const parent = path.join(root, 'source');
  const dir = path.join(parent, source.sha256.slice(0, 24));
  await ensureTrustedCacheDir(root, parent);
  if (await isCompleteTree(dir)) return { ...(await readTrustedTree(dir)), unpacked: false };
  options.onUnpack?.();
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.mkdir(tmp, { mode: 0o700 });
  try {
    await unpack(tar, source.tarball, tmp, signal);
    const top = (await fs.readdir(tmp)).filter((n) => !n.startsWith('.'));
    const treeRoot = top.length === 1 ? path.join(tmp, top[0] as string) : tmp;
    if (
      !(await pathExists(path.join(treeRoot, 'Makefile'))) ||
      !(await pathExists(path.join(treeRoot, 'Kconfig')))
    )
      throw new HostError(
        `${source.tarball} is not a Linux source tarball (no top-level Makefile and Kconfig)`,
        {
          hint: 'pass the tarball of a Linux source tree',
        },
      );
    // The tree's root becomes the directory itself.
    if (treeRoot !== tmp) {
      const moved = `${tmp}.root`;
      await fs.rename(treeRoot, moved);
      await fs.rm(tmp, { recursive: true, force: true });
      await fs.rename(moved, tmp);
    }
    await fs.chmod(tmp, 0o700);
    await fs.writeFile(path.join(tmp, COMPLETE), `${source.sha256}\n`, { mode: 0o644 });
    if (!(await placeTree(tmp, dir))) {
      // Another build put the same tree in place first: use it (checked like any other).
      await fs.rm(tmp, { recursive: true, force: true });
      return { ...(await readTrustedTree(dir)), unpacked: false };
    }
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.rm(`${tmp}.root`, { recursive: true, force: true });
    throw explainHostCondition(err) ?? err;
  }
  return { ...(await readTree(dir)), unpacked: true };
}

/** Whether `dir` is there with its marker; a `dir` or marker that is not ours alone is a HostError. */
async function isCompleteTree(dir: string): Promise<boolean> {
  if ((await requireTrustedEntry(dir, 'directory')) === 'missing') return false;
  return (await requireTrustedEntry(path.join(dir, COMPLETE), 'file')) === 'trusted';
}

/** A tree already in place, used only when nothing in it is another user's or writable by others. */
async function readTrustedTree(dir: string): Promise<SourceTree> {
  const bad = await untrustedEntryIn(dir);
  if (bad) throw untrustedError(bad.path, bad.st, bad.reason);
  return readTree(dir);
}

/**
 * Renames the complete tree `tmp` to `dir`. False when a complete tree is already there (another
 * build's). One there without the marker is renamed aside (never removed in place: a build may
 * still be reading a tree that was renamed in a moment ago) and the rename tried again once; the
 * one aside is removed unless it turns out to have the marker after all.
 */
async function placeTree(tmp: string, dir: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fs.rename(tmp, dir);
      return true;
    } catch (err) {
      if (!(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST'))) throw err;
    }
    if (await isCompleteTree(dir)) return false;
    if (attempt > 0) break;
    const aside = `${dir}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await fs.rename(dir, aside);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
      continue;
    }
    if (!(await pathExists(path.join(aside, COMPLETE)))) await fs.rm(aside, { recursive: true, force: true });
  }
  throw new HostError(`cannot put the unpacked kernel source in place: ${dir} keeps coming back incomplete`, {
    hint: `stop other kernel builds, remove ${dir} and build again`,
  });
}

/**
 * tar -xf into `into`, under umask 022 (so nothing in the tree is writable by group or others
 * whatever this process's umask; --no-same-permissions applies it).
 */
function unpack(tar: string, tarball: string, into: string, signal?: AbortSignal): Promise<void> {
  return run(
    '/bin/sh',
    [
      '-c',
      'umask 022 && exec "$0" "$@"',
      tar,
      '-xf',
      tarball,
      '-C',
      into,
      '--no-same-owner',
      '--no-same-permissions',
    ],
    signal,
  );
}

async function readTree(dir: string): Promise<SourceTree> {
  const makefile = await fs.readFile(path.join(dir, 'Makefile'), 'utf8');
  const field = (name: string) => new RegExp(`^${name} = *(\\S*)`, 'm').exec(makefile)?.[1] ?? '';
  const kernelVersion = [field('VERSION'), field('PATCHLEVEL'), field('SUBLEVEL')].filter(Boolean).join('.');
  return { dir, kernelVersion };
}

function run(command: string, args: readonly string[], signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], signal });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString('utf8')).slice(-4000);
    });
    child.on('error', reject);
    child.on('close', (code, sig) => {
      if (code === 0) resolve();
      else
        reject(
          new CommandError('unpacking the kernel source failed', {
            argv: [command, ...args],
            exitCode: code,
            signal: sig,
            stderrTail: stderr,
          }),
        );
    });
  });
}
