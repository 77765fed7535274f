import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { CommandError, explainHostCondition, HostError, isErrno } from '../errors.ts';
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
 * into place, so a half-unpacked tree is never used), reused by every later build.
 */
export async function ensureSourceTree(
  env: HostEnvironment,
  source: KernelSource,
  tar: string,
  options: { readonly signal?: AbortSignal | undefined; readonly onUnpack?: (() => void) | undefined } = {},
): Promise<SourceTree & { unpacked: boolean }> {
  const { signal } = options;
  const parent = path.join(env.cacheDir, 'kernels', 'source');
  const dir = path.join(parent, source.sha256.slice(0, 24));
  if (await pathExists(path.join(dir, COMPLETE))) return { ...(await readTree(dir)), unpacked: false };
  options.onUnpack?.();
  await fs.mkdir(parent, { recursive: true, mode: 0o755 });
  await fs.rm(dir, { recursive: true, force: true });
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await fs.mkdir(tmp, { mode: 0o755 });
  try {
    await run(tar, ['-xf', source.tarball, '-C', tmp, '--no-same-owner', '--no-same-permissions'], signal);
    const top = (await fs.readdir(tmp)).filter((n) => !n.startsWith('.'));
    const root = top.length === 1 ? path.join(tmp, top[0] as string) : tmp;
    if (!(await pathExists(path.join(root, 'Makefile'))) || !(await pathExists(path.join(root, 'Kconfig'))))
      throw new HostError(
        `${source.tarball} is not a Linux source tarball (no top-level Makefile and Kconfig)`,
        {
          hint: 'pass the tarball of a Linux source tree',
        },
      );
    // The tree's root becomes the directory itself.
    if (root !== tmp) {
      const moved = `${tmp}.root`;
      await fs.rename(root, moved);
      await fs.rm(tmp, { recursive: true, force: true });
      await fs.rename(moved, tmp);
    }
    await fs.writeFile(path.join(tmp, COMPLETE), `${source.sha256}\n`);
    try {
      await fs.rename(tmp, dir);
    } catch (err) {
      if (
        !(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST')) ||
        !(await pathExists(path.join(dir, COMPLETE)))
      )
        throw err;
      await fs.rm(tmp, { recursive: true, force: true });
    }
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.rm(`${tmp}.root`, { recursive: true, force: true });
    throw explainHostCondition(err) ?? err;
  }
  return { ...(await readTree(dir)), unpacked: true };
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
