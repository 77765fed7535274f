import { randomBytes } from 'node:crypto';
import { createWriteStream, constants as fsConstants } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pipeline } from 'node:stream/promises';
import { HostError, isErrno } from '../errors.ts';
import { lstatOrUndefined, unlinkIfThere } from '../host/fs.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { ROOTFS_PATHS } from './layout.ts';

/** Where k3s keeps its kine (SQLite) datastore, relative to a rootfs. */
export const KINE_DB = 'var/lib/rancher/k3s/server/db/state.db';

/**
 * Runtime records a rebooted gateway must not inherit (the seed deletes them after its pre-init):
 * pods whose sandboxes no longer exist (kubelet would fight them: SandboxChanged), their events,
 * leases and endpoint slices; plus kine's /bootstrap/ lock, which a k3s killed mid-start leaves
 * behind and which blocks the next start.
 */
export const KINE_RUNTIME_PREFIXES = [
  '/registry/pods/',
  '/registry/events/',
  '/registry/leases/',
  '/registry/endpointslices/',
  '/registry/masterleases/',
  '/bootstrap/',
] as const;

const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

export interface KineReport {
  readonly database: string;
  /** Rows removed per prefix. */
  readonly deleted: Readonly<Record<string, number>>;
  readonly rowsBefore: number;
  readonly rowsAfter: number;
  readonly bytesBefore: number;
  readonly bytesAfter: number;
}

const RESET_HINT = 'start over with --reset (it wipes the cluster state; the rootfs layers are kept)';

function corrupt(db: string, why: string, cause?: unknown): HostError {
  return new HostError(`the k3s datastore ${db} is corrupt (${why})`, { hint: RESET_HINT, cause });
}

/** The files SQLite opens beside a database (it follows symlinks when it opens them). */
const SQLITE_SIDE_FILES = ['', '-wal', '-shm', '-journal'] as const;
/** What holds the database's content: the file, and a WAL or hot journal not yet folded in. */
const SQLITE_CONTENT_FILES = ['', '-wal', '-journal'] as const;

/**
 * cleanKineDatastore on the datastore in a gateway rootfs, which the guest owns. SQLite never
 * opens anything in the guest's tree: it resolves every path it is given by name again (a
 * /proc/self/fd path too: it reads the link and walks the host path it names) and creates its
 * side files by name. So the database's directory is opened once through GuestRoot (no symlink
 * followed out) and everything happens through that open directory: the database and every
 * side file must be a regular file or missing; the database (with its WAL or journal) is copied
 * into a private directory, cleaned there, and written back under a random O_EXCL name renamed
 * over the old one, the old side files unlinked first (never followed).
 */
export async function cleanRootfsKineDatastore(rootfs: string): Promise<KineReport | undefined> {
  const root = new GuestRoot(rootfs, { hint: RESET_HINT });
  const dbDir = path.posix.dirname(ROOTFS_PATHS.kineDb);
  const name = path.posix.basename(ROOTFS_PATHS.kineDb);
  return root.withDirectory(dbDir, undefined, (dirPath, hostDir) => cleanPinned(dirPath, hostDir, name));
}

/** See cleanRootfsKineDatastore: `dirPath` names the open database directory (/proc/self/fd/N). */
async function cleanPinned(dirPath: string, hostDir: string, name: string): Promise<KineReport | undefined> {
  const at = (suffix: string) => `${dirPath}/${name}${suffix}`;
  const shown = (suffix: string) => path.join(hostDir, `${name}${suffix}`);
  for (const suffix of SQLITE_SIDE_FILES) {
    const stat = await lstatOrUndefined(at(suffix));
    if (stat && !stat.isFile()) throw planted(shown(suffix), stat.isSymbolicLink());
  }
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-kine-'));
  try {
    let mode: number | undefined;
    for (const suffix of SQLITE_CONTENT_FILES) {
      const copied = await copyOut(at(suffix), path.join(work, `${name}${suffix}`), shown(suffix));
      if (suffix === '') {
        if (copied === undefined) return undefined;
        mode = copied;
      }
    }
    const report = await cleanKineDatastore(path.join(work, name), shown(''));
    if (!report) return undefined;
    // Side files first: the old WAL must never be replayed onto the new database.
    for (const suffix of SQLITE_SIDE_FILES.slice(1)) await unlinkIfThere(at(suffix));
    const tmpName = `.${name}.ovm-${randomBytes(6).toString('hex')}`;
    // COPYFILE_EXCL: created O_CREAT|O_EXCL, so a name planted there (a symlink too) fails it.
    await fs.copyFile(path.join(work, name), `${dirPath}/${tmpName}`, fsConstants.COPYFILE_EXCL);
    try {
      const handle = await fs.open(`${dirPath}/${tmpName}`, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
      try {
        await handle.chmod((mode ?? 0o600) & 0o777);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fs.rename(`${dirPath}/${tmpName}`, at(''));
    } catch (err) {
      await unlinkIfThere(`${dirPath}/${tmpName}`).catch(() => undefined);
      throw err;
    }
    return { ...report, database: shown('') };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * Copies guest file `from` (not followed, not waited on: O_NOFOLLOW|O_NONBLOCK; a regular file
 * or nothing) to private file `to`. Returns its mode, or undefined when it is missing.
 */
async function copyOut(from: string, to: string, shownAs: string): Promise<number | undefined> {
  let handle: FileHandle;
  try {
    handle = await fs.open(
      from,
      fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY,
    );
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    if (isErrno(err, 'ELOOP')) throw planted(shownAs, true);
    if (isErrno(err, 'ENXIO')) throw planted(shownAs, false);
    throw err;
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw planted(shownAs, false);
    await pipeline(
      handle.createReadStream({ autoClose: false }),
      createWriteStream(to, { flags: 'wx', mode: 0o600 }),
    );
    return stat.mode;
  } finally {
    await handle.close();
  }
}

function planted(file: string, isSymlink: boolean): HostError {
  return new HostError(
    `${file} is not a regular file${isSymlink ? ' but a symlink' : ''}; the guest may have planted it`,
    { hint: RESET_HINT },
  );
}

/**
 * Cleans the kine datastore of a stopped k3s: deletes the runtime records above, checkpoints the
 * WAL into the database and VACUUMs. Refuses a corrupt database (bad header magic or a failed
 * integrity check) with the --reset hint. Returns undefined when there is no database yet (a
 * rootfs that never booted).
 */
export async function cleanKineDatastore(db: string, shownAs = db): Promise<KineReport | undefined> {
  let header: Buffer;
  let bytesBefore: number;
  try {
    const handle = await fs.open(db, 'r');
    try {
      header = Buffer.alloc(16);
      await handle.read(header, 0, 16, 0);
      bytesBefore = (await handle.stat()).size;
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  if (!header.equals(SQLITE_MAGIC)) throw corrupt(shownAs, 'not an SQLite database: bad header');

  let database: DatabaseSync;
  try {
    database = new DatabaseSync(db);
  } catch (err) {
    throw corrupt(shownAs, 'SQLite cannot open it', err);
  }
  try {
    let check: string;
    try {
      const rows = database.prepare('PRAGMA integrity_check').all() as { integrity_check: string }[];
      check = rows.map((r) => r.integrity_check).join('; ');
    } catch (err) {
      throw corrupt(shownAs, (err as Error).message, err);
    }
    if (check !== 'ok') throw corrupt(shownAs, `integrity check: ${check.slice(0, 200)}`);
    const hasTable = database
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kine'")
      .get();
    if (!hasTable) throw corrupt(shownAs, 'no kine table');

    const count = () => Number((database.prepare('SELECT count(*) AS n FROM kine').get() as { n: number }).n);
    const rowsBefore = count();
    const deleted: Record<string, number> = {};
    // A prefix comparison, not LIKE: key names may contain LIKE's wildcards (_ and %).
    const remove = database.prepare('DELETE FROM kine WHERE substr(name, 1, ?) = ?');
    database.exec('BEGIN');
    for (const prefix of KINE_RUNTIME_PREFIXES) {
      deleted[prefix] = Number(remove.run(prefix.length, prefix).changes);
    }
    database.exec('COMMIT');
    const rowsAfter = count();
    database.exec('PRAGMA wal_checkpoint(TRUNCATE)');
    database.exec('VACUUM');
    database.close();
    return {
      database: db,
      deleted,
      rowsBefore,
      rowsAfter,
      bytesBefore,
      bytesAfter: (await fs.stat(db)).size,
    };
  } catch (err) {
    if (database.isOpen) database.close();
    throw err;
  }
}
