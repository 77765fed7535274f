import { randomBytes } from 'node:crypto';
import { constants, existsSync, type Stats } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { HostError, isErrno } from '../errors.ts';
import { lstatOrUndefined, unlinkIfThere } from './fs.ts';

/** The most bytes read from one guest-written file unless the caller says otherwise. */
export const GUEST_READ_LIMIT_BYTES = 1024 * 1024;
/** Symlinks followed while resolving one path, as Linux's MAXSYMLINKS. */
const MAX_LINKS = 40;
const DEFAULT_HINT = 'start over with --reset, or rebuild the rootfs: openshell-vm prepare-rootfs --force';

/** Linux's openat() through /proc: a child named relative to an open directory, never re-resolved. */
const HAS_PROC_FD = existsSync('/proc/self/fd');

interface Dir {
  readonly handle: FileHandle;
  /** The host path, for messages (and for naming children where /proc/self/fd is missing). */
  readonly hostPath: string;
}

export interface GuestRootOptions {
  /** The hint of every refusal (what the user can do about a tree the guest damaged). */
  readonly hint?: string | undefined;
  /** false: the lstat-walk fallback used where /proc/self/fd is missing (macOS); for tests. */
  readonly procFd?: boolean | undefined;
}

/**
 * Host access to a tree a guest owns (the gateway's rootfs, shared read-write over virtio-fs,
 * possibly while the guest runs). Every operation walks its path one component at a time from an
 * open directory (O_DIRECTORY|O_NOFOLLOW, children named through /proc/self/fd/N, so a guest
 * that swaps a directory for a symlink mid-walk cannot redirect it), and:
 *  - follows a symlink met on the way as the guest would, inside the root as in a chroot: an
 *    absolute target starts again at the root (an image's sbin -> /usr/sbin), `..` of the root is
 *    the root, so no link leads out of it;
 *  - never follows the last component: reads and writes refuse a symlink there, removal unlinks
 *    the link itself;
 *  - reads only regular files (a FIFO does not block: O_NONBLOCK), up to a size limit;
 *  - writes through a random O_CREAT|O_EXCL|O_NOFOLLOW temporary name, then renames.
 * Refusals are HostErrors naming the host path. Where /proc/self/fd is missing, children are named
 * by path after the same checks (not race-free against a running guest).
 */
export class GuestRoot {
  readonly root: string;
  readonly #hint: string;
  readonly #procFd: boolean;

  constructor(root: string, options: GuestRootOptions = {}) {
    this.root = root;
    this.#hint = options.hint ?? DEFAULT_HINT;
    this.#procFd = (options.procFd ?? true) && HAS_PROC_FD;
  }

  /** The host path of `rel` (for messages; never open it directly). */
  hostPath(rel: string): string {
    return path.join(this.root, rel);
  }

  /** The bytes of regular file `rel`, or undefined when it (or a directory on its way) is missing. */
  async readFile(rel: string, options: { readonly maxBytes?: number } = {}): Promise<Buffer | undefined> {
    const maxBytes = options.maxBytes ?? GUEST_READ_LIMIT_BYTES;
    const { dirs, name } = split(rel);
    return this.#inDir(dirs, undefined, async (dir) => {
      const child = this.#at(dir, name);
      const shown = path.join(dir.hostPath, name);
      const before = await lstatOrUndefined(child);
      if (!before) return undefined;
      this.#expectFile(before, shown);
      let handle: FileHandle;
      try {
        handle = await fs.open(
          child,
          constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
        );
      } catch (err) {
        if (isErrno(err, 'ENOENT')) return undefined;
        throw this.#refusal(err, shown);
      }
      try {
        const stat = await handle.stat();
        this.#expectFile(stat, shown);
        if (stat.size > maxBytes) throw this.#tooBig(shown, stat.size, maxBytes);
        const buf = Buffer.alloc(Math.min(stat.size, maxBytes) + 1);
        let length = 0;
        for (;;) {
          const { bytesRead } = await handle.read(buf, length, buf.length - length, length);
          if (bytesRead === 0) break;
          length += bytesRead;
          if (length > maxBytes) throw this.#tooBig(shown, length, maxBytes);
          if (length === buf.length) break;
        }
        return buf.subarray(0, length);
      } finally {
        await handle.close();
      }
    });
  }

  /** As readFile, as UTF-8 text. */
  async readText(rel: string, options: { readonly maxBytes?: number } = {}): Promise<string | undefined> {
    return (await this.readFile(rel, options))?.toString('utf8');
  }

  /**
   * Replaces file `rel` with `data` (mode `mode`) through a temporary sibling with a random name,
   * created O_EXCL|O_NOFOLLOW, then renamed; missing directories are made with `dirMode`.
   * Refuses when `rel` is a symlink or not a regular file.
   */
  async writeFileAtomic(
    rel: string,
    data: string | Uint8Array,
    options: { readonly mode?: number; readonly dirMode?: number } = {},
  ): Promise<void> {
    const mode = options.mode ?? 0o644;
    const { dirs, name } = split(rel);
    await this.#inDir(dirs, options.dirMode ?? 0o755, async (dir) => {
      const shown = path.join(dir.hostPath, name);
      const current = await lstatOrUndefined(this.#at(dir, name));
      if (current) this.#expectFile(current, shown);
      const tmpName = `.${name}.ovm-${randomBytes(6).toString('hex')}`;
      const tmp = this.#at(dir, tmpName);
      const handle = await fs.open(
        tmp,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        mode,
      );
      let renamed = false;
      try {
        try {
          await handle.writeFile(data);
          await handle.chmod(mode);
        } finally {
          await handle.close();
        }
        await fs.rename(tmp, this.#at(dir, name));
        renamed = true;
      } finally {
        if (!renamed) await fs.unlink(tmp).catch(() => undefined);
      }
    });
  }

  /**
   * Writes `data` to `rel` (see writeFileAtomic) unless the file already holds exactly that, so an
   * unchanged file keeps its bytes and mtime. Returns true when it wrote.
   */
  async writeFileIfChanged(rel: string, data: string | Uint8Array, mode = 0o644): Promise<boolean> {
    const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data);
    const stat = await this.lstat(rel);
    if (stat?.isFile() && stat.size === bytes.length) {
      const current = await this.readFile(rel, { maxBytes: bytes.length });
      if (current?.equals(bytes)) return false;
    }
    await this.writeFileAtomic(rel, bytes, { mode });
    return true;
  }

  /** Makes directory `rel` and any missing parent (mode `mode`); refuses a non-directory on the way. */
  async mkdirp(rel: string, mode = 0o755): Promise<void> {
    await this.#inDir(components(rel), mode, async () => undefined);
  }

  /**
   * Removes `rel` and everything under it without following any symlink (a symlink at `rel` or
   * inside it is unlinked, never its target). Returns true when something was there.
   */
  async remove(rel: string): Promise<boolean> {
    const { dirs, name } = split(rel);
    const removed = await this.#inDir(dirs, undefined, (dir) => this.#removeEntry(dir, name));
    return removed ?? false;
  }

  /** The names in directory `rel`, or undefined when it is missing. */
  async readdir(rel: string): Promise<string[] | undefined> {
    return this.#inDir(components(rel), undefined, (dir) => fs.readdir(this.#dirSelf(dir)));
  }

  /** lstat of `rel` (the last component not followed), or undefined when it is missing. */
  async lstat(rel: string): Promise<Stats | undefined> {
    const { dirs, name } = split(rel);
    return this.#inDir(dirs, undefined, (dir) => lstatOrUndefined(this.#at(dir, name)));
  }

  /** True when `rel` exists as anything (a symlink at the end included). */
  async exists(rel: string): Promise<boolean> {
    return (await this.lstat(rel)) !== undefined;
  }

  /**
   * Runs `fn` with directory `rel` open (created with `mode` when given). `fn` gets a path that
   * names the directory itself while it runs (/proc/self/fd/N on Linux), for APIs that need a
   * path; undefined when the directory is missing and no mode was given.
   */
  async withDirectory<T>(
    rel: string,
    mode: number | undefined,
    fn: (dirPath: string, hostPath: string) => Promise<T>,
  ): Promise<T | undefined> {
    return this.#inDir(components(rel), mode, (dir) => fn(this.#dirSelf(dir), dir.hostPath));
  }

  async #removeEntry(dir: Dir, name: string): Promise<boolean> {
    const child = this.#at(dir, name);
    const stat = await lstatOrUndefined(child);
    if (!stat) return false;
    if (!stat.isDirectory()) {
      await unlinkIfThere(child);
      return true;
    }
    let handle: FileHandle;
    try {
      handle = await fs.open(child, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return true;
      if (isErrno(err, 'ENOTDIR') || isErrno(err, 'ELOOP')) {
        await unlinkIfThere(child); // swapped for something else since the lstat: unlink that
        return true;
      }
      throw err;
    }
    const sub: Dir = { handle, hostPath: path.join(dir.hostPath, name) };
    try {
      for (const entry of await fs.readdir(this.#dirSelf(sub))) await this.#removeEntry(sub, entry);
    } finally {
      await handle.close();
    }
    await fs.rmdir(child).catch((err: unknown) => {
      if (!isErrno(err, 'ENOENT')) throw err;
    });
    return true;
  }

  /**
   * Walks `parts` from the root (see the class comment), creating missing directories with
   * `createMode` when given, and runs `fn` on the directory reached. Undefined when a directory
   * is missing and none may be made.
   */
  async #inDir<T>(
    parts: readonly string[],
    createMode: number | undefined,
    fn: (dir: Dir) => Promise<T>,
  ): Promise<T | undefined> {
    const stack: Dir[] = [];
    try {
      let rootHandle: FileHandle;
      try {
        rootHandle = await fs.open(this.root, constants.O_RDONLY | constants.O_DIRECTORY);
      } catch (err) {
        if (isErrno(err, 'ENOENT') && createMode === undefined) return undefined;
        throw new HostError(`cannot open the rootfs ${this.root}`, { cause: err });
      }
      stack.push({ handle: rootHandle, hostPath: this.root });
      const pending = [...parts];
      let links = 0;
      while (pending.length) {
        const part = pending.shift() as string;
        const top = stack[stack.length - 1] as Dir;
        if (part === '' || part === '.') continue;
        if (part === '..') {
          // As in the guest (a chroot): `..` of the root is the root.
          if (stack.length > 1) await (stack.pop() as Dir).handle.close();
          continue;
        }
        const child = this.#at(top, part);
        const shown = path.join(top.hostPath, part);
        const opened = await this.#openDir(child, shown, createMode);
        if (opened === 'missing') return undefined;
        if (opened === 'symlink') {
          if (++links > MAX_LINKS) throw this.#refuse(`${shown}: too many levels of symbolic links`);
          const target = await fs.readlink(child);
          // As the guest resolves it: an absolute target starts again at the rootfs's root (never
          // the host's), and every component is again opened through its parent's descriptor.
          if (target.startsWith('/')) {
            while (stack.length > 1) await (stack.pop() as Dir).handle.close();
          }
          pending.unshift(...target.split('/'));
          continue;
        }
        stack.push({ handle: opened, hostPath: shown });
      }
      return await fn(stack[stack.length - 1] as Dir);
    } finally {
      for (const dir of stack.reverse()) await dir.handle.close();
    }
  }

  async #openDir(
    child: string,
    shown: string,
    createMode: number | undefined,
  ): Promise<FileHandle | 'missing' | 'symlink'> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fs.open(child, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) {
          if (createMode === undefined) return 'missing';
          if (attempt > 2) throw err;
          await fs.mkdir(child, { mode: createMode }).catch((e: unknown) => {
            if (!isErrno(e, 'EEXIST')) throw e;
          });
          continue;
        }
        if (!isErrno(err, 'ENOTDIR') && !isErrno(err, 'ELOOP')) throw err;
        const stat = await lstatOrUndefined(child);
        if (stat?.isSymbolicLink()) return 'symlink';
        if (!stat) {
          if (attempt > 2) throw err;
          continue;
        }
        throw this.#refuse(`${shown} is not a directory (${kindOf(stat)}); the guest may have planted it`);
      }
    }
  }

  #at(dir: Dir, name: string): string {
    return this.#procFd ? `/proc/self/fd/${dir.handle.fd}/${name}` : path.join(dir.hostPath, name);
  }

  #dirSelf(dir: Dir): string {
    return this.#procFd ? `/proc/self/fd/${dir.handle.fd}` : dir.hostPath;
  }

  #expectFile(stat: Stats, shown: string): void {
    if (stat.isSymbolicLink()) throw this.#refuse(`${shown} is a symlink; the guest may have planted it`);
    if (!stat.isFile()) {
      throw this.#refuse(`${shown} is not a regular file (${kindOf(stat)}); the guest may have planted it`);
    }
  }

  #refusal(err: unknown, shown: string): unknown {
    if (isErrno(err, 'ELOOP'))
      return this.#refuse(`${shown} is a symlink; the guest may have planted it`, err);
    if (isErrno(err, 'ENXIO')) {
      return this.#refuse(`${shown} is not a regular file (a socket); the guest may have planted it`, err);
    }
    return err;
  }

  #tooBig(shown: string, size: number, maxBytes: number): HostError {
    return this.#refuse(
      `${shown} is larger than ${formatBytes(maxBytes)} (${size} bytes or more): refusing to read it`,
    );
  }

  #refuse(message: string, cause?: unknown): HostError {
    return new HostError(message, { hint: this.#hint, cause });
  }
}

function components(rel: string): string[] {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new Error(`GuestRoot: '${rel}' has '..' (a bug in openshell-vm)`);
  return parts;
}

function split(rel: string): { dirs: string[]; name: string } {
  const parts = components(rel);
  const name = parts.pop();
  if (!name) throw new Error(`GuestRoot: '${rel}' names the root itself (a bug in openshell-vm)`);
  return { dirs: parts, name };
}

function kindOf(stat: Stats): string {
  if (stat.isSymbolicLink()) return 'a symlink';
  if (stat.isDirectory()) return 'a directory';
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isSocket()) return 'a socket';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  return 'a regular file';
}

function formatBytes(n: number): string {
  return n % (1024 * 1024) === 0 ? `${n / (1024 * 1024)} MiB` : `${n} bytes`;
}
