import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.ts';

/** One `deb` source: where, which suites and components, and the key that signs it. */
export interface AptSource {
  readonly uri: string;
  readonly suites: readonly string[];
  readonly components: readonly string[];
  readonly signedBy: string | undefined;
}

/** Parses one-line sources.list text (`deb [opts] URI SUITE COMP...`); deb-src lines are skipped. */
export function parseOneLineSources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const opts = m[1] ?? '';
    const signedBy = /signed-by=(\S+)/.exec(opts)?.[1];
    out.push({
      uri: m[2] as string,
      suites: [m[3] as string],
      components: (m[4] ?? '').split(/\s+/).filter(Boolean),
      signedBy,
    });
  }
  return out;
}

/** Parses deb822 `.sources` text (stanzas of `Types:`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`). */
export function parseDeb822Sources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue;
      if (/^\s/.test(line) && last) {
        fields.set(last, `${fields.get(last)}\n${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      last = line.slice(0, colon).trim().toLowerCase();
      fields.set(last, line.slice(colon + 1).trim());
    }
    if (fields.get('enabled') === 'no') continue;
    const types = (fields.get('types') ?? '').split(/\s+/);
    if (!types.includes('deb')) continue;
    const signed = fields.get('signed-by');
    const signedBy = signed && !signed.includes('\n') ? signed : undefined;
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) {
      out.push({
        uri,
        suites: (fields.get('suites') ?? '').split(/\s+/).filter(Boolean),
        components: (fields.get('components') ?? '').split(/\s+/).filter(Boolean),
        signedBy,
      });
    }
  }
  return out;
}

/** Every enabled `deb` source of the host's apt configuration (`/etc/apt` by default). */
export async function readHostAptSources(etcApt = '/etc/apt'): Promise<AptSource[]> {
  const read = async (file: string) => {
    try {
      return await fs.readFile(file, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return '';
      throw err;
    }
  };
  const out = parseOneLineSources(await read(path.join(etcApt, 'sources.list')));
  let names: string[] = [];
  try {
    names = (await fs.readdir(path.join(etcApt, 'sources.list.d'))).sort();
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  for (const name of names) {
    const text = await read(path.join(etcApt, 'sources.list.d', name));
    if (name.endsWith('.list')) out.push(...parseOneLineSources(text));
    else if (name.endsWith('.sources')) out.push(...parseDeb822Sources(text));
  }
  return out;
}

/**
 * The host's Debian sources re-aimed at `release`: sources whose suites are the host's release
 * (and its -updates / -security) become the same for `release`. Other sources (third-party
 * repositories) are left out: the guest is built from Debian alone.
 */
export function debianSourcesFor(
  sources: readonly AptSource[],
  hostRelease: string,
  release: string,
): string[] {
  const lines: string[] = [];
  for (const s of sources) {
    for (const suite of s.suites) {
      const m = new RegExp(`^${hostRelease}(-updates|-security|/updates)?$`).exec(suite);
      if (!m) continue;
      const comps = s.components.includes('main') ? ['main'] : [];
      if (!comps.length) continue;
      const opts = s.signedBy ? `[signed-by=${s.signedBy}] ` : '';
      lines.push(`deb ${opts}${s.uri} ${release}${m[1] ?? ''} ${comps.join(' ')}`);
    }
  }
  return [...new Set(lines)];
}
