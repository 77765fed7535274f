import fs from 'node:fs/promises';
import zlib from 'node:zlib';
import { HostError, isErrno } from '../errors.ts';

/** One option of the gateway's kernel fragment (src/kernel/openshell.kconfig). */
export interface Requirement {
  readonly option: string;
  /** The comment heading the option's group in the fragment. */
  readonly group: string;
  /** 'y': must be enabled; 'n': should not be set. */
  readonly wanted: 'y' | 'n';
}

/** builtin (=y), module (=m), missing (unset, =n, or absent), or set to another value. */
export type OptionStatus = 'builtin' | 'module' | 'missing';

export interface OptionResult {
  readonly option: string;
  readonly group: string;
  readonly status: OptionStatus;
  /** The raw value in the config ('y', 'm', 'n'), undefined when the option is absent. */
  readonly value: string | undefined;
  /** Set when a newer kernel's renamed option stood in for this one. */
  readonly via?: string | undefined;
}

/**
 * Options of the seed's fragment that newer kernels renamed: the new name satisfies the old one
 * when the old one is absent. (NF_NAT_MASQUERADE_IPV4 became NF_NAT_MASQUERADE in Linux 5.2.)
 */
export const RENAMED_OPTIONS: Readonly<Record<string, string>> = {
  CONFIG_NF_NAT_MASQUERADE_IPV4: 'CONFIG_NF_NAT_MASQUERADE',
};

export interface KernelCheck {
  readonly source: string;
  /** From the config's header, e.g. "Linux/x86 6.1.192 Kernel Configuration". */
  readonly kernel: string | undefined;
  /** --builtin: modules do not count (a libkrunfw kernel cannot load them). */
  readonly builtinOnly: boolean;
  readonly results: readonly OptionResult[];
  readonly missing: readonly string[];
  readonly modules: readonly string[];
  /** Options the fragment wants unset but the config enables. */
  readonly unwanted: readonly string[];
  readonly ok: boolean;
}

export function parseFragment(text: string): Requirement[] {
  const out: Requirement[] = [];
  let group = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const set = /^(CONFIG_[A-Z0-9_]+)=y$/.exec(line);
    const unset = /^# (CONFIG_[A-Z0-9_]+) is not set$/.exec(line);
    if (set) out.push({ option: set[1] as string, group, wanted: 'y' });
    else if (unset) out.push({ option: unset[1] as string, group, wanted: 'n' });
    else if (line.startsWith('# ')) group = line.slice(2);
    else if (line === '') group = '';
  }
  return out;
}

/** A kernel .config as option → value ('y', 'm', 'n' for "is not set", or the literal value). */
export function parseKernelConfig(text: string): { values: Map<string, string>; kernel: string | undefined } {
  const values = new Map<string, string>();
  let kernel: string | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const set = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    const unset = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
    if (set) values.set(set[1] as string, set[2] as string);
    else if (unset) values.set(unset[1] as string, 'n');
    else if (!kernel && /^# Linux\/.* Kernel Configuration$/.test(line)) kernel = line.slice(2);
  }
  return { values, kernel };
}

export function checkKernelConfig(
  requirements: readonly Requirement[],
  config: { values: ReadonlyMap<string, string>; kernel: string | undefined },
  source: string,
  builtinOnly: boolean,
): KernelCheck {
  const results: OptionResult[] = [];
  const unwanted: string[] = [];
  for (const req of requirements) {
    let value = config.values.get(req.option);
    if (req.wanted === 'n') {
      if (value === 'y' || value === 'm') unwanted.push(req.option);
      continue;
    }
    const successor = RENAMED_OPTIONS[req.option];
    const via = value === undefined && successor && config.values.has(successor) ? successor : undefined;
    if (via) value = config.values.get(via);
    const status: OptionStatus = value === 'y' ? 'builtin' : value === 'm' ? 'module' : 'missing';
    results.push({ option: req.option, group: req.group, status, value, ...(via ? { via } : {}) });
  }
  const missing = results.filter((r) => r.status === 'missing').map((r) => r.option);
  const modules = results.filter((r) => r.status === 'module').map((r) => r.option);
  const ok = missing.length === 0 && (!builtinOnly || modules.length === 0);
  return { source, kernel: config.kernel, builtinOnly, results, missing, modules, unwanted, ok };
}

export async function readFragment(): Promise<Requirement[]> {
  return parseFragment(await fs.readFile(new URL('./openshell.kconfig', import.meta.url), 'utf8'));
}

/** Reads a kernel config, gunzipping /proc/config.gz (or any gzip file) as needed. */
export async function readKernelConfigFile(file: string): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw new HostError(`kernel config ${file} does not exist`, {
        hint:
          file === '/proc/config.gz'
            ? 'this kernel does not expose its config (CONFIG_IKCONFIG_PROC); pass the config file, e.g. /boot/config-$(uname -r)'
            : 'pass the path of a kernel .config',
        cause: err,
      });
    }
    throw err;
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = zlib.gunzipSync(bytes);
    } catch (err) {
      throw new HostError(`${file} looks gzip-compressed but does not decompress`, { cause: err });
    }
  }
  const text = bytes.toString('utf8');
  if (!/^CONFIG_[A-Z0-9_]+=/m.test(text)) {
    throw new HostError(`${file} is not a kernel config (no CONFIG_ lines)`, {
      hint: 'pass a kernel .config or /proc/config.gz',
    });
  }
  return text;
}
