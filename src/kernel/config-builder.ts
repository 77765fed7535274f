import { createHash } from 'node:crypto';
import { RENAMED_OPTIONS } from './requirements.ts';

/**
 * Kernel configuration assembly, pure: a base .config (from `make allnoconfig`, or a vendor's
 * config such as libkrunfw's) with fragments merged over it, as scripts/kconfig/merge_config.sh
 * does, and the check of what kconfig made of it (`make olddefconfig` silently drops an option
 * whose dependencies are unmet; that is an error here, named).
 */

/** A config fragment: `CONFIG_X=value` and `# CONFIG_X is not set` lines; other `#` lines are comments. */
export interface ConfigFragment {
  /** Where it came from (a file name), for messages. */
  readonly source: string;
  readonly text: string;
}

/** What a fragment asked for one option, and which fragment asked. */
export interface RequestedOption {
  /** 'n' for "is not set"; otherwise the literal value ('y', 'm', '64', '"text"'). */
  readonly value: string;
  readonly source: string;
}

export interface BuiltKernelConfig {
  /** The merged .config text (the base's lines in order with values replaced, new options appended). */
  readonly config: string;
  /** Every option the fragments set, with its value and fragment. */
  readonly requested: ReadonlyMap<string, RequestedOption>;
  /** Malformed fragment lines and conflicts between fragments; the config is unusable unless empty. */
  readonly problems: readonly string[];
}

const ASSIGNMENT = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/;
const UNSET = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/;

/** One config line as option and value ('n' for "is not set"), or undefined for other lines. */
export function parseConfigLine(line: string): { option: string; value: string } | undefined {
  const set = ASSIGNMENT.exec(line);
  if (set) return { option: set[1] as string, value: set[2] as string };
  const unset = UNSET.exec(line);
  if (unset) return { option: unset[1] as string, value: 'n' };
  return undefined;
}

function configLine(option: string, value: string): string {
  return value === 'n' ? `# ${option} is not set` : `${option}=${value}`;
}

/**
 * `baseConfigText` with every fragment's options applied, fragments in order. Two fragments (or
 * two lines of one) that set the same option to different values are a conflict, reported in
 * `problems` (the later value is in the config); so is a line that is neither an assignment, an
 * "is not set" line, a comment nor blank.
 */
export function buildKernelConfig(
  baseConfigText: string,
  fragments: readonly ConfigFragment[],
): BuiltKernelConfig {
  const problems: string[] = [];
  const requested = new Map<string, RequestedOption>();
  for (const fragment of fragments) {
    fragment.text.split('\n').forEach((raw, i) => {
      const line = raw.trim();
      const parsed = parseConfigLine(line);
      if (!parsed) {
        if (line !== '' && !line.startsWith('#'))
          problems.push(`${fragment.source}:${i + 1}: not a kernel config line: ${line.slice(0, 80)}`);
        return;
      }
      const earlier = requested.get(parsed.option);
      if (earlier && earlier.value !== parsed.value) {
        problems.push(
          `${parsed.option}: ${earlier.source} sets ${earlier.value}, ${fragment.source}:${i + 1} sets ${parsed.value}`,
        );
      }
      requested.set(parsed.option, { value: parsed.value, source: fragment.source });
    });
  }
  const placed = new Set<string>();
  const lines: string[] = [];
  for (const raw of baseConfigText.split('\n')) {
    const parsed = parseConfigLine(raw.trim());
    const wanted = parsed && requested.get(parsed.option);
    if (parsed && wanted) {
      if (placed.has(parsed.option)) continue;
      placed.add(parsed.option);
      lines.push(configLine(parsed.option, wanted.value));
    } else {
      lines.push(raw);
    }
  }
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const added = [...requested].filter(([option]) => !placed.has(option));
  if (added.length > 0) {
    lines.push('', '# Added by openshell-vm from its config fragments');
    for (const [option, { value }] of added) lines.push(configLine(option, value));
  }
  return { config: `${lines.join('\n')}\n`, requested, problems };
}

/** A requested option that kconfig did not keep (unmet dependencies, or an unknown name). */
export interface UnmetOption {
  readonly option: string;
  readonly wanted: string;
  /** Its value in the resolved config; undefined when kconfig dropped it altogether. */
  readonly got: string | undefined;
  readonly source: string;
}

/**
 * The requested options whose value in `resolvedConfigText` (after `make olddefconfig`) is not the
 * requested one. "Not set" is satisfied by an absent option; a renamed option
 * (RENAMED_OPTIONS) by its successor's value.
 */
export function unmetOptions(
  requested: ReadonlyMap<string, RequestedOption>,
  resolvedConfigText: string,
): UnmetOption[] {
  const resolved = new Map<string, string>();
  for (const raw of resolvedConfigText.split('\n')) {
    const parsed = parseConfigLine(raw.trim());
    if (parsed) resolved.set(parsed.option, parsed.value);
  }
  const unmet: UnmetOption[] = [];
  for (const [option, { value, source }] of requested) {
    let got = resolved.get(option);
    const successor = RENAMED_OPTIONS[option];
    if (got === undefined && successor) got = resolved.get(successor);
    const ok = value === 'n' ? got === undefined || got === 'n' : got === value;
    if (!ok) unmet.push({ option, wanted: value, got, source });
  }
  return unmet;
}

/** One line per unmet option, for an error message. */
export function describeUnmet(unmet: readonly UnmetOption[]): string {
  return unmet
    .map(
      (u) =>
        `${u.option}=${u.wanted} (${u.source}): ${u.got === undefined ? 'dropped by kconfig (unmet dependencies or unknown in this kernel)' : `kconfig made it ${u.got}`}`,
    )
    .join('\n');
}

export function configSha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
