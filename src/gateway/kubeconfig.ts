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
  let backup: string | undefined;
  if (existingText !== undefined) {
    const stamp = (options.now ?? new Date()).toISOString().replace(/[:.]/g, '-');
    backup = `${target}.bak-${stamp}`;
    await fs.writeFile(backup, existingText, { mode: 0o600 });
  }
  await writeFileAtomic(target, YAML.stringify(merged, { lineWidth: 0 }));
  return backup;
}
