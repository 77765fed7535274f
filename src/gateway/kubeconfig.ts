import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { HostError, isErrno } from '../errors.ts';
import { lexists, writeFileAtomic } from '../host/fs.ts';
import {
  clusterBody,
  type GatewayCredentials,
  kubeconfigRoot,
  readGatewayKubeconfig,
  userBody,
} from './kubeconfig-entry.ts';

export {
  buildKubeconfig,
  type GatewayCredentials,
  readGatewayKubeconfig,
  readK3sCredentials,
  rewriteKubeconfig,
} from './kubeconfig-entry.ts';

/** The gateway's own kubeconfig: `~/.kube/NAME.yaml`. */
export function kubeconfigPath(kubeDir: string, name: string): string {
  return path.join(kubeDir, `${name}.yaml`);
}

/** Writes `~/.kube/NAME.yaml` (0600). */
export async function writeKubeconfig(kubeDir: string, name: string, text: string): Promise<string> {
  const file = kubeconfigPath(kubeDir, name);
  await writeFileAtomic(file, text);
  return file;
}

/** Removes `~/.kube/NAME.yaml` (a symlink there is unlinked, not followed); returns it when it was there. */
export async function removeKubeconfig(kubeDir: string, name: string): Promise<string | undefined> {
  const file = kubeconfigPath(kubeDir, name);
  if (!(await lexists(file))) return undefined;
  await fs.rm(file, { recursive: true, force: true });
  return file;
}

/** The name of the cluster, user and context `--merge-kubeconfig` adds for instance NAME. */
export function mergedName(instance: string): string {
  return `openshell-${instance}`;
}

/** The one backup a merge or unmerge keeps of the kubeconfig it changed: TARGET.openshell-vm.bak. */
export function backupPath(target: string): string {
  return `${target}.openshell-vm.bak`;
}

/**
 * What identifies a merged entry as the one openshell-vm wrote: its name and a hash of the
 * cluster's CA and the user's client certificate (these do not change until the instance is reset).
 */
export interface MergedEntry {
  readonly target: string;
  readonly name: string;
  readonly fingerprint: string;
}

const KINDS = ['cluster', 'user', 'context'] as const;
type Kind = (typeof KINDS)[number];
const LIST: Record<Kind, string> = { cluster: 'clusters', user: 'users', context: 'contexts' };
type Plain = Record<string, unknown>;

function fingerprint(caData: unknown, certData: unknown): string | undefined {
  if (typeof caData !== 'string' || typeof certData !== 'string') return undefined;
  return createHash('sha256').update(`${caData}\n${certData}`).digest('hex');
}

/** A kubeconfig on disk, as a YAML document (comments kept), and where and how to write it back. */
interface Target {
  readonly target: string;
  /** The file written: the target, or the file its symlink resolves to. */
  readonly file: string;
  readonly mode: number;
  readonly text: string | undefined;
  readonly doc: YAML.Document;
}

async function openTarget(target: string): Promise<Target> {
  let file = target;
  let mode = 0o600;
  let text: string | undefined;
  try {
    const link = await fs.lstat(target);
    if (link.isSymbolicLink()) {
      file = await fs.realpath(target).catch((err: unknown) => {
        throw new HostError(`${target} is a symlink to a file that does not exist`, {
          hint: 'create the file it points to, or remove the symlink',
          cause: err,
        });
      });
    }
    const stat = await fs.stat(file);
    if (!stat.isFile())
      throw new HostError(`${target} is not a regular file`, { hint: 'move it aside and try again' });
    mode = stat.mode & 0o7777;
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const doc = YAML.parseDocument(text ?? '', { uniqueKeys: false, prettyErrors: false });
  const error = doc.errors[0];
  if (error) {
    throw new HostError(`${target} is not valid YAML: ${error.message}`, {
      hint: 'fix or move the file; openshell-vm never overwrites a kubeconfig it cannot read',
      cause: error,
    });
  }
  if (doc.contents === null) doc.contents = doc.createNode({}) as never;
  kubeconfigRoot(YAML.isMap(doc.contents) ? { kind: doc.get('kind') } : [], target);
  return { target, file, mode, text, doc };
}

/** The sequence under `key`, made when absent, null or `{}`; any other shape is refused. */
function listNode(t: Target, key: string): YAML.YAMLSeq {
  const node = t.doc.get(key, true);
  if (YAML.isSeq(node)) return node;
  const empty =
    node === undefined ||
    (YAML.isScalar(node) && (node.value === null || node.value === '')) ||
    (YAML.isMap(node) && node.items.length === 0);
  if (!empty) {
    throw new HostError(`${t.target}: '${key}' is not a list`, {
      hint: `fix the file (kubectl expects '${key}:' to be a list), or move it aside`,
    });
  }
  const seq = t.doc.createNode([]) as YAML.YAMLSeq;
  t.doc.set(key, seq);
  return seq;
}

function nameOf(item: unknown): unknown {
  return YAML.isMap(item) ? item.get('name') : undefined;
}

function plain(t: Target, node: unknown): Plain {
  let value: unknown;
  try {
    value = YAML.isNode(node) ? node.toJS(t.doc, { maxAliasCount: 100 }) : undefined;
  } catch (err) {
    throw new HostError(`${t.target}: ${(err as Error).message}`, {
      hint: 'fix or move the file; openshell-vm never overwrites a kubeconfig it cannot read',
      cause: err,
    });
  }
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Plain) : {};
}

/** The entries named `name` in each list, with their bodies as plain data. */
function findEntries(t: Target, name: string) {
  const found = {} as Record<Kind, { seq: YAML.YAMLSeq; index: number; body: Plain } | undefined>;
  for (const kind of KINDS) {
    const seq = listNode(t, LIST[kind]);
    const index = seq.items.findIndex((item) => nameOf(item) === name);
    const body = plain(t, (seq.items[index] as YAML.YAMLMap | undefined)?.get(kind, true));
    found[kind] = index < 0 ? undefined : { seq, index, body };
  }
  return found;
}

/** A temporary sibling of `file` holding `text`, created exclusively with `mode`. */
async function writeTemp(file: string, text: string, mode: number): Promise<string> {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const handle = await fs.open(tmp, 'wx', mode);
    try {
      await handle.chmod(mode); // the umask does not narrow (or widen) the kept mode
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
    return tmp;
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Writes the edited document back: the old text to the one backup, the new one in place of the
 * file (through a symlink, keeping the file's mode), both by temporary file and rename, so a
 * failure (ENOSPC) leaves the kubeconfig and its backup as they were and no file behind.
 */
async function commit(t: Target): Promise<string | undefined> {
  const temps: string[] = [];
  try {
    await fs.mkdir(path.dirname(t.file), { recursive: true, mode: 0o700 });
    const backup = t.text === undefined ? undefined : backupPath(t.target);
    const backupTmp = backup && (await writeTemp(backup, t.text as string, 0o600));
    if (backupTmp) temps.push(backupTmp);
    const next = await writeTemp(t.file, t.doc.toString({ lineWidth: 0 }), t.mode);
    temps.push(next);
    if (backup && backupTmp) await fs.rename(backupTmp, backup);
    await fs.rename(next, t.file);
    return backup;
  } catch (err) {
    throw new HostError(`cannot write ${t.target}: ${(err as Error).message}`, {
      hint: isErrno(err, 'ENOSPC')
        ? `free space on the file system of ${t.file}; the kubeconfig was left as it was`
        : `the kubeconfig was left as it was`,
      cause: err,
    });
  } finally {
    await Promise.all(temps.map((tmp) => fs.rm(tmp, { force: true })));
  }
}

export interface MergeResult {
  /** The backup of the old file, if there was one. */
  readonly backup: string | undefined;
  /** What was merged, for the merge record. */
  readonly record: MergedEntry;
}

/**
 * Adds the gateway kubeconfig `entryText` to the kubeconfig `target` (normally ~/.kube/config) as
 * cluster, user and context `openshell-NAME`, editing the document so comments, order and other
 * entries stay. Entries of that name are replaced only when openshell-vm wrote them (they carry the
 * CA and client certificate of `previous`, the last merge's record, or of this entry); otherwise
 * the merge is refused. current-context is set when `setCurrent` or when there is none. A symlink
 * is written through; the old file goes to the one backup (TARGET.openshell-vm.bak).
 */
export async function mergeKubeconfig(
  target: string,
  entryText: string,
  options: { readonly setCurrent?: boolean | undefined; readonly previous?: MergedEntry | undefined } = {},
): Promise<MergeResult> {
  const entry = readGatewayKubeconfig(entryText, 'the gateway kubeconfig');
  const name = mergedName(entry.name);
  const t = await openTarget(target);
  const found = findEntries(t, name);
  const record: MergedEntry = { target, name, fingerprint: fingerprintOf(entry.credentials) };
  const existing = KINDS.filter((k) => found[k]);
  if (existing.length) {
    const theirs = fingerprint(
      found.cluster?.body['certificate-authority-data'],
      found.user?.body['client-certificate-data'],
    );
    const prev = options.previous;
    const ours =
      theirs !== undefined &&
      (theirs === record.fingerprint ||
        (prev?.target === target && prev.name === name && prev.fingerprint === theirs));
    if (!ours) {
      throw new HostError(
        `${target} already has ${existing.join(', ')} '${name}' that openshell-vm did not write`,
        {
          hint: `rename or remove them (kubectl config delete-context ${name}; delete-cluster ${name}; delete-user ${name}), or use another --name`,
        },
      );
    }
  }
  const bodies: Record<Kind, Plain> = {
    cluster: clusterBody(entry.server, entry.credentials),
    user: userBody(entry.credentials),
    context: { cluster: name, user: name },
  };
  for (const kind of KINDS) {
    const node = t.doc.createNode({ name, [kind]: bodies[kind] });
    const at = found[kind];
    if (at) at.seq.items[at.index] = node;
    else listNode(t, LIST[kind]).items.push(node);
  }
  if (!t.doc.has('apiVersion')) t.doc.set('apiVersion', 'v1');
  if (!t.doc.has('kind')) t.doc.set('kind', 'Config');
  if (options.setCurrent || !t.doc.get('current-context')) t.doc.set('current-context', name);
  return { backup: await commit(t), record };
}

function fingerprintOf(c: GatewayCredentials): string {
  return fingerprint(c.caData, c.certData) as string;
}

/**
 * `--merge-kubeconfig` for instance directory `instanceDir`: merges (see mergeKubeconfig, with the
 * instance's last record deciding what is ours) and records what was merged, for delete and reset.
 * Returns the backup's path, if any.
 */
export async function mergeGatewayKubeconfig(
  instanceDir: string,
  target: string,
  entryText: string,
  options: { readonly setCurrent?: boolean | undefined } = {},
): Promise<string | undefined> {
  const previous = await readMergeRecord(instanceDir);
  const { backup, record } = await mergeKubeconfig(target, entryText, { ...options, previous });
  // A merge under another name or into another file (before 0.2 the entries were named NAME, not
  // openshell-NAME) is taken out, as delete would, so it is not left behind unrecorded.
  if (previous && (previous.name !== record.name || previous.target !== record.target)) {
    await unmergeKubeconfig(previous);
  }
  await writeMergeRecord(instanceDir, record);
  return backup;
}

/** The record of a merge of the gateway kubeconfig `entryText` into `target`. */
export function mergedEntry(target: string, entryText: string): MergedEntry {
  const entry = readGatewayKubeconfig(entryText, 'the gateway kubeconfig');
  return { target, name: mergedName(entry.name), fingerprint: fingerprintOf(entry.credentials) };
}

export interface UnmergeResult {
  /** Which of the cluster, user and context named NAME were removed. */
  readonly removed: readonly Kind[];
  /** Entries named NAME that were left because they are not the ones openshell-vm merged. */
  readonly kept: readonly Kind[];
  readonly backup: string | undefined;
}

/**
 * Takes out of `record.target` what mergeKubeconfig put there: the cluster and user named NAME
 * only while they still carry the merged CA and client certificate and no context that stays names
 * them; the context only when it joins those two. An entry of that name that is not ours (the user
 * changed it) is kept and reported. current-context is cleared when it named the removed context.
 * Comments and other entries stay; the old file goes to the one backup. A target that is gone is
 * fine, one that does not parse an error.
 */
export async function unmergeKubeconfig(record: MergedEntry): Promise<UnmergeResult> {
  const t = await openTarget(record.target);
  if (t.text === undefined) return { removed: [], kept: [], backup: undefined };
  const { name } = record;
  const found = findEntries(t, name);
  const ours =
    fingerprint(
      found.cluster?.body['certificate-authority-data'],
      found.user?.body['client-certificate-data'],
    ) === record.fingerprint;
  const refs = found.context?.body ?? {};
  const dropContext = ours && refs.cluster === name && refs.user === name;
  // A cluster or user that a context left in the file still names stays, so nothing dangles.
  const contexts = listNode(t, 'contexts').items;
  const stillNamed = (key: 'cluster' | 'user') =>
    contexts.some(
      (c, i) =>
        !(dropContext && i === found.context?.index) &&
        plain(t, YAML.isMap(c) ? c.get('context', true) : undefined)[key] === name,
    );
  const drop: Record<Kind, boolean> = {
    cluster: ours && !stillNamed('cluster'),
    user: ours && !stillNamed('user'),
    context: dropContext,
  };
  const kinds = KINDS.filter((k) => found[k]);
  const removed = kinds.filter((k) => drop[k]);
  const kept = kinds.filter((k) => !drop[k]);
  if (removed.length === 0) return { removed, kept, backup: undefined };
  for (const kind of removed) {
    const at = found[kind];
    if (at) at.seq.items.splice(at.index, 1);
  }
  if (drop.context && t.doc.get('current-context') === name) t.doc.set('current-context', '');
  return { removed, kept, backup: await commit(t) };
}

/** In the instance directory: what `--merge-kubeconfig` added where, for `delete` to take out. */
export const MERGE_RECORD = 'kubeconfig-merge.json';

export async function writeMergeRecord(instanceDir: string, record: MergedEntry): Promise<void> {
  await writeFileAtomic(path.join(instanceDir, MERGE_RECORD), `${JSON.stringify(record)}\n`);
}

/**
 * Takes what `--merge-kubeconfig` added out of the kubeconfig it went into (while it is still
 * ours) and forgets the record. Returns what was taken out, as lines for the user. A kubeconfig
 * that no longer parses, or entries changed since, are left as they are, and `warn` says so.
 */
export async function forgetMergedKubeconfig(
  instanceDir: string,
  warn: (message: string) => void,
): Promise<string[]> {
  const merged = await readMergeRecord(instanceDir);
  if (!merged) return [];
  const takenOut: string[] = [];
  try {
    const out = await unmergeKubeconfig(merged);
    if (out.removed.length) {
      takenOut.push(`${merged.target}: ${out.removed.join(', ')} '${merged.name}' (backup ${out.backup})`);
    }
    if (out.kept.length) {
      warn(
        `kept ${out.kept.join(', ')} '${merged.name}' in ${merged.target}: not the ones openshell-vm merged (changed since)`,
      );
    }
  } catch (err) {
    warn(`left ${merged.target} alone: ${(err as Error).message}`);
  }
  await fs.rm(path.join(instanceDir, MERGE_RECORD), { force: true });
  return takenOut;
}

/** The merge record, or undefined when there is none (or it is unreadable: nothing is removed then). */
export async function readMergeRecord(instanceDir: string): Promise<MergedEntry | undefined> {
  try {
    const r = JSON.parse(await fs.readFile(path.join(instanceDir, MERGE_RECORD), 'utf8')) as MergedEntry;
    return typeof r.target === 'string' && typeof r.name === 'string' && typeof r.fingerprint === 'string'
      ? r
      : undefined;
  } catch {
    return undefined;
  }
}
