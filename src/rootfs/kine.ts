import fs from 'node:fs/promises';
import { DatabaseSync } from 'node:sqlite';
import { HostError, isErrno } from '../errors.ts';
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

function corrupt(db: string, why: string, cause?: unknown): HostError {
  return new HostError(`the k3s datastore ${db} is corrupt (${why})`, {
    hint: 'start over with --reset (it wipes the cluster state; the rootfs layers are kept)',
    cause,
  });
}

/** The files SQLite opens beside a database (it follows symlinks when it opens them). */
const SQLITE_SIDE_FILES = ['', '-wal', '-shm', '-journal'] as const;

/**
 * cleanKineDatastore on the datastore in a gateway rootfs, which the guest owns: first the
 * directory is walked with GuestRoot (no symlink followed out) and the database and every file
 * SQLite would open beside it must be a regular file or missing, because SQLite follows a symlink
 * there to whatever host file it names. The guest is stopped while this runs (the instance lock),
 * so nothing changes between the check and the cleaning.
 */
export async function cleanRootfsKineDatastore(rootfs: string): Promise<KineReport | undefined> {
  const root = new GuestRoot(rootfs);
  for (const suffix of SQLITE_SIDE_FILES) {
    const rel = `${ROOTFS_PATHS.kineDb}${suffix}`;
    const stat = await root.lstat(rel);
    if (stat && !stat.isFile()) {
      throw new HostError(
        `${root.hostPath(rel)} is not a regular file${stat.isSymbolicLink() ? ' but a symlink' : ''}; the guest may have planted it`,
        { hint: 'start over with --reset (it wipes the cluster state; the rootfs layers are kept)' },
      );
    }
  }
  if (!(await root.exists(ROOTFS_PATHS.kineDb))) return undefined;
  return cleanKineDatastore(root.hostPath(ROOTFS_PATHS.kineDb));
}

/**
 * Cleans the kine datastore of a stopped k3s: deletes the runtime records above, checkpoints the
 * WAL into the database and VACUUMs. Refuses a corrupt database (bad header magic or a failed
 * integrity check) with the --reset hint. Returns undefined when there is no database yet (a
 * rootfs that never booted).
 */
export async function cleanKineDatastore(db: string): Promise<KineReport | undefined> {
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
  if (!header.equals(SQLITE_MAGIC)) throw corrupt(db, 'not an SQLite database: bad header');

  let database: DatabaseSync;
  try {
    database = new DatabaseSync(db);
  } catch (err) {
    throw corrupt(db, 'SQLite cannot open it', err);
  }
  try {
    let check: string;
    try {
      const rows = database.prepare('PRAGMA integrity_check').all() as { integrity_check: string }[];
      check = rows.map((r) => r.integrity_check).join('; ');
    } catch (err) {
      throw corrupt(db, (err as Error).message, err);
    }
    if (check !== 'ok') throw corrupt(db, `integrity check: ${check.slice(0, 200)}`);
    const hasTable = database
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kine'")
      .get();
    if (!hasTable) throw corrupt(db, 'no kine table');

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
