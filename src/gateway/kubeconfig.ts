import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { HostError, isErrno } from '../errors.ts';
import { writeFileAtomic } from '../host/fs.ts';

/** A named kubeconfig entry (cluster, user or context); its body is kept as it is. */
interface Named {
  name: string;
  [key: string]: unknown;
}

interface Kubeconfig {
  apiVersion?: string;
  kind?: string;
  clusters?: Named[];
  contexts?: Named[];
  users?: Named[];
  'current-context'?: string;
  [key: string]: unknown;
}

function parse(text: string, where: string): Kubeconfig {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (err) {
    throw new HostError(`${where} is not valid YAML: ${(err as Error).message}`, {
      hint: 'fix or move the file; openshell-vm never overwrites a kubeconfig it cannot read',
      cause: err,
    });
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc) || ((doc as Kubeconfig).kind ?? 'Config') !== 'Config') {
    throw new HostError(`${where} is not a kubeconfig (kind: Config)`, {
      hint: 'fix or move the file; openshell-vm never overwrites a kubeconfig it cannot read',
    });
  }
  return doc as Kubeconfig;
}

/**
 * k3s's kubeconfig made usable from the host: its server URL points at the loopback port the
 * Kubernetes API is forwarded to, and its cluster, user and context (k3s calls them all
 * "default") are named NAME, so it can sit beside others.
 */
export function rewriteKubeconfig(
  k3sYaml: string,
  options: { readonly name: string; readonly port: number },
): string {
  const doc = parse(k3sYaml, "k3s's kubeconfig");
  const cluster = doc.clusters?.[0];
  const user = doc.users?.[0];
  if (!cluster?.cluster || !user)
    throw new HostError("k3s's kubeconfig has no cluster or user", { hint: 'k3s may still be writing it' });
  const out: Kubeconfig = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      { name: options.name, cluster: { ...cluster.cluster, server: `https://127.0.0.1:${options.port}` } },
    ],
    users: [{ ...user, name: options.name }],
    contexts: [{ name: options.name, context: { cluster: options.name, user: options.name } }],
    'current-context': options.name,
  };
  return YAML.stringify(out, { lineWidth: 0 });
}

/** Writes `~/.kube/NAME.yaml` (0600). */
export async function writeKubeconfig(kubeDir: string, name: string, text: string): Promise<string> {
  const file = path.join(kubeDir, `${name}.yaml`);
  await writeFileAtomic(file, text);
  return file;
}

/**
 * Adds (or replaces) the cluster, user and context of `entry` in the kubeconfig `target`
 * (normally ~/.kube/config), after copying the old file to TARGET.bak-TIMESTAMP. Other entries
 * and current-context are kept unless `setCurrent`. A target that does not parse is refused and
 * left as it is. Returns the backup's path, if there was a file to back up.
 */
export async function mergeKubeconfig(
  target: string,
  entryText: string,
  options: { readonly setCurrent?: boolean | undefined; readonly now?: Date | undefined } = {},
): Promise<string | undefined> {
  const entry = parse(entryText, 'the gateway kubeconfig');
  let existingText: string | undefined;
  try {
    existingText = await fs.readFile(target, 'utf8');
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const doc = existingText === undefined ? {} : parse(existingText, target);
  const replace = <T extends { name: string }>(list: T[] | undefined, add: T[] | undefined): T[] => {
    const names = new Set((add ?? []).map((x) => x.name));
    return [...(list ?? []).filter((x) => !names.has(x.name)), ...(add ?? [])];
  };
  const merged: Kubeconfig = {
    ...doc,
    apiVersion: doc.apiVersion ?? 'v1',
    kind: 'Config',
    clusters: replace(doc.clusters, entry.clusters),
    users: replace(doc.users, entry.users),
    contexts: replace(doc.contexts, entry.contexts),
  };
  if (options.setCurrent || !doc['current-context'])
    merged['current-context'] = entry['current-context'] ?? '';
  const backup = existingText === undefined ? undefined : await backUp(target, existingText, options.now);
  await writeFileAtomic(target, YAML.stringify(merged, { lineWidth: 0 }));
  return backup;
}

async function backUp(target: string, text: string, now = new Date()): Promise<string> {
  const backup = `${target}.bak-${now.toISOString().replace(/[:.]/g, '-')}`;
  await fs.writeFile(backup, text, { mode: 0o600 });
  return backup;
}

/**
 * What identifies a merged entry as the one openshell-vm wrote: its name and a hash of the
 * cluster's CA and the user's client certificate (the server's port changes every boot, these do
 * not until the instance is reset).
 */
export interface MergedEntry {
  readonly target: string;
  readonly name: string;
  readonly fingerprint: string;
}

function fingerprintOf(cluster: Named | undefined, user: Named | undefined): string | undefined {
  const ca = (cluster?.cluster as Record<string, unknown> | undefined)?.['certificate-authority-data'];
  const cert = (user?.user as Record<string, unknown> | undefined)?.['client-certificate-data'];
  if (typeof ca !== 'string' || typeof cert !== 'string') return undefined;
  return createHash('sha256').update(`${ca}\n${cert}`).digest('hex');
}

/** The record of a merge of the gateway kubeconfig `entryText` into `target`. */
export function mergedEntry(target: string, entryText: string): MergedEntry {
  const entry = parse(entryText, 'the gateway kubeconfig');
  const name = entry.contexts?.[0]?.name;
  const fingerprint = fingerprintOf(entry.clusters?.[0], entry.users?.[0]);
  if (!name || !fingerprint)
    throw new HostError('the gateway kubeconfig has no context, CA or client certificate');
  return { target, name, fingerprint };
}

export interface UnmergeResult {
  /** Which of the cluster, user and context named NAME were removed. */
  readonly removed: readonly ('cluster' | 'user' | 'context')[];
  /** Entries named NAME that were left because they are not the ones openshell-vm merged. */
  readonly kept: readonly ('cluster' | 'user' | 'context')[];
  readonly backup: string | undefined;
}

/**
 * Takes out of `record.target` what mergeKubeconfig put there: the cluster and user named NAME
 * only while they still carry the merged CA and client certificate and no context that stays names
 * them; the context only when it joins those two. An entry of that name that is not ours (the user
 * changed it) is kept and reported. current-context is cleared when it named the removed context.
 * The old file is backed up first; a target that is gone is fine, one that does not parse an error.
 */
export async function unmergeKubeconfig(
  record: MergedEntry,
  options: { readonly now?: Date | undefined } = {},
): Promise<UnmergeResult> {
  let text: string;
  try {
    text = await fs.readFile(record.target, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { removed: [], kept: [], backup: undefined };
    throw err;
  }
  const doc = parse(text, record.target);
  const { name } = record;
  const entries = {
    cluster: doc.clusters?.find((c) => c.name === name),
    user: doc.users?.find((u) => u.name === name),
    context: doc.contexts?.find((c) => c.name === name),
  };
  const ours = fingerprintOf(entries.cluster, entries.user) === record.fingerprint;
  const refs = (c: Named | undefined) => (c?.context ?? {}) as Record<string, unknown>;
  const dropContext = ours && refs(entries.context).cluster === name && refs(entries.context).user === name;
  // A cluster or user that a context left in the file still names stays, so nothing dangles.
  const stillNamed = (key: 'cluster' | 'user') =>
    (doc.contexts ?? []).some((c) => !(dropContext && c === entries.context) && refs(c)[key] === name);
  const drop = {
    cluster: ours && !stillNamed('cluster'),
    user: ours && !stillNamed('user'),
    context: dropContext,
  };
  const kinds = (['cluster', 'user', 'context'] as const).filter((k) => entries[k]);
  const removed = kinds.filter((k) => drop[k]);
  const kept = kinds.filter((k) => !drop[k]);
  if (removed.length === 0) return { removed, kept, backup: undefined };
  const out: Kubeconfig = { ...doc };
  if (drop.cluster) out.clusters = (doc.clusters ?? []).filter((c) => c !== entries.cluster);
  if (drop.user) out.users = (doc.users ?? []).filter((u) => u !== entries.user);
  if (drop.context && entries.context) {
    out.contexts = (doc.contexts ?? []).filter((c) => c !== entries.context);
    if (doc['current-context'] === name) out['current-context'] = '';
  }
  const backup = await backUp(record.target, text, options.now);
  await writeFileAtomic(record.target, YAML.stringify(out, { lineWidth: 0 }));
  return { removed, kept, backup };
}

/** In the instance directory: what `--merge-kubeconfig` added where, for `delete` to take out. */
export const MERGE_RECORD = 'kubeconfig-merge.json';

export async function writeMergeRecord(instanceDir: string, record: MergedEntry): Promise<void> {
  await writeFileAtomic(path.join(instanceDir, MERGE_RECORD), `${JSON.stringify(record)}\n`);
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
