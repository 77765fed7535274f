import { UsageError } from '../errors.ts';

/**
 * Command-line parsing with the seed's shapes, which node:util's parseArgs cannot express:
 *  - `--args A B ...` takes every following word, including words that begin with '-', up to the
 *    next word that is one of our own options (or `--`); `--args=WORD` adds a single word;
 *  - `--env K=V K2=V2 ...` takes the next word, then following KEY=VALUE words;
 *  - value options take the next word or `--opt=value`; flags take none;
 *  - for `run`, `--` (or the first word that is not an option) ends the options and the rest is
 *    the command and its arguments.
 */
export type OptionKind = 'value' | 'flag' | 'greedy-any' | 'greedy-plain';

export interface OptionSpec {
  readonly name: string;
  readonly short?: string;
  readonly kind: OptionKind;
  /** Value options that may be given several times collect every value. */
  readonly repeatable?: boolean;
}

export interface ParsedArgs {
  readonly values: ReadonlyMap<string, readonly string[]>;
  readonly flags: ReadonlySet<string>;
  /** Words after `--` or after the first positional word. */
  readonly rest: readonly string[];
}

/**
 * Flags every command takes, before its name too (`openshell-vm --debug list`, `-q doctor`):
 * --debug (the error's cause chain; read by the error boundary), -q/--quiet (no progress lines;
 * nothing to leave out for commands that print none).
 */
export const GLOBAL_FLAGS: readonly OptionSpec[] = [
  { name: 'debug', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
];

/** The words that are global flags (--debug, --quiet, -q). */
export function isGlobalFlag(word: string): boolean {
  return GLOBAL_FLAGS.some(
    (f) => word === `--${f.name}` || (f.short !== undefined && word === `-${f.short}`),
  );
}

/** The global flags at the start of argv, and the words from the first other one on. */
export function leadingGlobalFlags(argv: readonly string[]): { flags: string[]; rest: string[] } {
  let i = 0;
  while (i < argv.length && isGlobalFlag(argv[i] as string)) i++;
  return { flags: argv.slice(0, i), rest: argv.slice(i) };
}

/**
 * A subcommand's argv with the global flags given before its name (`--debug list`, `-q doctor`)
 * put where its options begin, after its verb if it has one (with no verb, they are dropped: the
 * command only prints its usage, and --debug is read from the whole argv anyway).
 */
export function subcommandArgv(
  globals: readonly string[],
  argv: readonly string[],
  verb: boolean,
): readonly string[] {
  if (!globals.length) return argv;
  if (!verb) return [...globals, ...argv];
  const first = argv[0];
  if (first === undefined || first.startsWith('-')) return argv;
  return [first, ...globals, ...argv.slice(1)];
}

export function parseArgs(
  argv: readonly string[],
  specs: readonly OptionSpec[],
  allowRest: boolean,
): ParsedArgs {
  const byName = new Map<string, OptionSpec>();
  const globals = GLOBAL_FLAGS.filter((g) => !specs.some((s) => s.name === g.name));
  for (const spec of [...globals, ...specs]) {
    byName.set(`--${spec.name}`, spec);
    if (spec.short) byName.set(`-${spec.short}`, spec);
  }
  const isOwnOption = (word: string) => word === '--' || byName.has(word.split('=', 1)[0] as string);
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  const add = (spec: OptionSpec, value: string) => {
    const list = values.get(spec.name) ?? [];
    if (spec.kind === 'value' && !spec.repeatable && list.length) {
      throw new UsageError(`--${spec.name} was given more than once`, { hint: 'give it once' });
    }
    list.push(value);
    values.set(spec.name, list);
  };

  let i = 0;
  while (i < argv.length) {
    const word = argv[i] as string;
    if (word === '--') {
      if (!allowRest)
        throw new UsageError("unexpected '--'", { hint: 'use: openshell-vm run [OPTIONS] -- PATH [ARG...]' });
      return { values, flags, rest: argv.slice(i + 1) };
    }
    if (!word.startsWith('-') || word === '-') {
      if (allowRest) return { values, flags, rest: argv.slice(i) };
      throw new UsageError(`unexpected argument '${word}'`, {
        hint: 'guest arguments go after --args, e.g. --exec /bin/echo --args hello',
      });
    }
    const eq = word.indexOf('=');
    const key = word.startsWith('--') && eq > 0 ? word.slice(0, eq) : word;
    const spec = byName.get(key);
    if (!spec) throw new UsageError(`unknown option '${key}'`, { hint: 'see openshell-vm --help' });
    const inline = key !== word ? word.slice(eq + 1) : undefined;
    i++;
    switch (spec.kind) {
      case 'flag':
        if (inline !== undefined)
          throw new UsageError(`--${spec.name} takes no value`, { hint: `write just --${spec.name}` });
        flags.add(spec.name);
        break;
      case 'value': {
        if (inline !== undefined) {
          add(spec, inline);
          break;
        }
        const next = argv[i];
        if (next === undefined || (next.startsWith('-') && isOwnOption(next))) {
          throw new UsageError(`--${spec.name} needs a value`, { hint: 'see openshell-vm --help' });
        }
        add(spec, next);
        i++;
        break;
      }
      case 'greedy-any':
      case 'greedy-plain': {
        if (inline !== undefined) {
          add(spec, inline);
          break;
        }
        const start = i;
        while (i < argv.length) {
          const next = argv[i] as string;
          if (spec.kind === 'greedy-any' ? isOwnOption(next) : next.startsWith('-')) break;
          // After the first value, greedy-plain takes only KEY=VALUE words (so `--env A=1 run` stops at run).
          if (spec.kind === 'greedy-plain' && i > start && !next.includes('=')) break;
          add(spec, next);
          i++;
        }
        if (i === start && spec.kind === 'greedy-plain') {
          throw new UsageError(`--${spec.name} needs a value`, { hint: 'see openshell-vm --help' });
        }
        // `--args` with nothing after it (or only options) means no arguments: allowed.
        if (spec.kind === 'greedy-any' && !values.has(spec.name)) values.set(spec.name, []);
        break;
      }
    }
  }
  return { values, flags, rest: [] };
}

export function single(args: ParsedArgs, name: string): string | undefined {
  const list = args.values.get(name);
  return list?.[list.length - 1];
}

/** Whether openshell-vm's own --debug is given: one after `--` belongs to the guest's command. */
export function wantsDebug(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end < 0 ? argv : argv.slice(0, end)).includes('--debug');
}
