import { UsageError } from '../errors.ts';
import { closest } from './suggest.ts';

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
  /** Other long names of the option (`--cpus` for `--vcpus`): their values land under `name`. */
  readonly aliases?: readonly string[];
}

export interface ParsedArgs {
  readonly values: ReadonlyMap<string, readonly string[]>;
  readonly flags: ReadonlySet<string>;
  /** Words after `--` or after the first positional word. */
  readonly rest: readonly string[];
}

/**
 * The options of the main form: the gateway (no command, `start`), `run` and `--exec`. Some are
 * for one of them only (EXEC_ONLY, GATEWAY_ONLY); main.ts refuses them with the other.
 */
export const MAIN_OPTIONS: readonly OptionSpec[] = [
  { name: 'exec', kind: 'value' },
  { name: 'args', kind: 'greedy-any' },
  { name: 'env', kind: 'greedy-plain', repeatable: true },
  { name: 'workdir', kind: 'value' },
  { name: 'vcpus', kind: 'value', aliases: ['cpus'] },
  { name: 'mem', kind: 'value', aliases: ['memory'] },
  { name: 'arch', kind: 'value' },
  { name: 'accel', kind: 'value' },
  { name: 'boot-timeout', kind: 'value' },
  { name: 'name', kind: 'value' },
  { name: 'port', short: 'p', kind: 'value', repeatable: true },
  { name: 'net', kind: 'value' },
  { name: 'backend', kind: 'value' },
  { name: 'rootfs', kind: 'value' },
  { name: 'kernel', kind: 'value' },
  { name: 'events', kind: 'value' },
  { name: 'api-port', kind: 'value' },
  { name: 'ready-timeout', kind: 'value' },
  { name: 'tls-san', kind: 'value', repeatable: true },
  { name: 'merge-kubeconfig', kind: 'flag' },
  { name: 'use-context', kind: 'flag' },
  { name: 'json', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'keep-logs', kind: 'flag' },
  { name: 'detach', short: 'd', kind: 'flag' },
  { name: 'no-pool', kind: 'flag' },
  { name: 'reset', kind: 'flag' },
  { name: 'snapshot', kind: 'flag' },
  { name: 'no-snapshot', kind: 'flag' },
  // Internal: this process is the background supervisor --detach started.
  { name: 'supervise', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
  { name: 'version', short: 'V', kind: 'flag' },
];

/** Options of a command run (`run`, `--exec`) that the gateway refuses. */
export const EXEC_ONLY = ['args', 'env', 'workdir', 'boot-timeout', 'no-pool'] as const;
/** Options of the gateway that a command run refuses. */
export const GATEWAY_ONLY = [
  'api-port',
  'ready-timeout',
  'tls-san',
  'merge-kubeconfig',
  'use-context',
  'json',
  'reset',
  'snapshot',
  'no-snapshot',
] as const;

/**
 * Flags every command takes, before or after its name (`openshell-vm --debug list`, `list -q`):
 * --debug (the error's cause chain; read by the error boundary), -q/--quiet (no progress lines;
 * nothing to leave out for commands that print none), -h/--help (the command's own usage).
 */
export const GLOBAL_FLAGS: readonly OptionSpec[] = [
  { name: 'debug', kind: 'flag' },
  { name: 'quiet', short: 'q', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

/**
 * The words that may come before a command's name and are handed to it: the global flags and
 * --json (which the command refuses if it has no JSON output).
 */
export function isLeadingFlag(word: string): boolean {
  return (
    word === '--json' ||
    GLOBAL_FLAGS.some((f) => word === `--${f.name}` || (f.short !== undefined && word === `-${f.short}`))
  );
}

/** The leading flags at the start of argv, and the words from the first other one on. */
export function leadingGlobalFlags(argv: readonly string[]): { flags: string[]; rest: string[] } {
  let i = 0;
  while (i < argv.length && isLeadingFlag(argv[i] as string)) i++;
  return { flags: argv.slice(0, i), rest: argv.slice(i) };
}

/**
 * A subcommand's argv with the flags given before its name (`--debug list`, `--json status gw`)
 * put where its options begin, after its verb if it has one (`-q kernel check` gives `check -q`;
 * with no verb, `--help kernel` gives `--help`).
 */
export function subcommandArgv(
  globals: readonly string[],
  argv: readonly string[],
  verb: boolean,
): readonly string[] {
  if (!globals.length) return argv;
  if (!verb) return [...globals, ...argv];
  const first = argv[0];
  // No verb yet: only a --help is for the command itself (its usage); the rest wait for the verb.
  const help = globals.filter((w) => w === '--help' || w === '-h');
  if (first === undefined || first.startsWith('-')) return [...help, ...argv];
  return [first, ...globals, ...argv.slice(1)];
}

/** Every option word of `specs` and the global flags (`--name`, `-n`, each alias) with its spec. */
export function optionWordsOf(specs: readonly OptionSpec[]): Map<string, OptionSpec> {
  const byName = new Map<string, OptionSpec>();
  const globals = GLOBAL_FLAGS.filter((g) => !specs.some((s) => s.name === g.name));
  for (const spec of [...globals, ...specs]) {
    byName.set(`--${spec.name}`, spec);
    for (const alias of spec.aliases ?? []) byName.set(`--${alias}`, spec);
    if (spec.short) byName.set(`-${spec.short}`, spec);
  }
  return byName;
}

/** The usage error for an option `specs` does not have, with the closest one it does have. */
export function unknownOption(key: string, specs: readonly OptionSpec[], command?: string): UsageError {
  const known = [...optionWordsOf(specs).keys()].filter((w) => w.startsWith('--'));
  const meant = key.startsWith('--') ? closest(key, known) : undefined;
  const help = `openshell-vm ${command ? `${command} ` : ''}--help`;
  return new UsageError(`unknown option '${key}'${meant ? ` (did you mean ${meant}?)` : ''}`, {
    hint: meant ? `use ${meant}; see ${help}` : `see ${help}`,
  });
}

/**
 * `command`: the command whose options these are (for the hints: `see openshell-vm exec --help`).
 */
export function parseArgs(
  argv: readonly string[],
  specs: readonly OptionSpec[],
  allowRest: boolean,
  command?: string,
): ParsedArgs {
  const byName = optionWordsOf(specs);
  const isOwnOption = (word: string) => word === '--' || byName.has(word.split('=', 1)[0] as string);
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  const add = (spec: OptionSpec, value: string) => {
    const list = values.get(spec.name) ?? [];
    if (spec.kind === 'value' && !spec.repeatable && list.length) {
      const also = spec.aliases?.length ? ` (or ${spec.aliases.map((a) => `--${a}`).join(', ')})` : '';
      throw new UsageError(`--${spec.name}${also} was given more than once`, { hint: 'give it once' });
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
    if (!spec) throw unknownOption(key, specs, command);
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
          throw new UsageError(`${key} needs a value`, {
            hint: `see openshell-vm ${command ? `${command} ` : ''}--help`,
          });
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
          throw new UsageError(`${key} needs a value`, {
            hint: `see openshell-vm ${command ? `${command} ` : ''}--help`,
          });
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

/**
 * `start [NAME] [OPTIONS]` as the main form's argv, which is also what --detach starts again:
 * the same words without the NAME word (at index `nameAt`), with `--name NAME` unless --name was
 * given, and `--detach` unless it was.
 */
export function startArgv(
  argv: readonly string[],
  nameAt: number | undefined,
  name: string,
  given: { readonly name: boolean; readonly detach: boolean },
): string[] {
  const rest = nameAt === undefined ? argv : [...argv.slice(0, nameAt), ...argv.slice(nameAt + 1)];
  return [...(given.name ? [] : ['--name', name]), ...rest, ...(given.detach ? [] : ['--detach'])];
}

/**
 * The words of argv that are openshell-vm's own options, as parseArgs with `specs` reads them but
 * without refusing anything: up to `--`, or up to the first word that is not an option or an
 * option's value (the guest's command), except once the word `resume` (`-q run --json -- ...`).
 * The error boundary reads --debug and --json from them, even when parsing fails further on, and
 * never from the guest's command (`run -- prog --json`).
 */
export function ownOptionWords(
  argv: readonly string[],
  specs: readonly OptionSpec[],
  resume?: string,
): string[] {
  const byName = optionWordsOf(specs);
  const isOwnOption = (word: string) => word === '--' || byName.has(word.split('=', 1)[0] as string);
  const own: string[] = [];
  let resumed = resume === undefined;
  let i = 0;
  while (i < argv.length) {
    const word = argv[i] as string;
    if (word === '--') break;
    if (!word.startsWith('-') || word === '-') {
      if (!resumed && word === resume) {
        resumed = true;
        i++;
        continue;
      }
      break;
    }
    own.push(word);
    i++;
    const spec = word.includes('=') ? undefined : byName.get(word);
    if (spec?.kind === 'value') {
      if (argv[i] !== undefined && !isOwnOption(argv[i] as string)) i++;
    } else if (spec?.kind === 'greedy-any') {
      while (i < argv.length && !isOwnOption(argv[i] as string)) i++;
    } else if (spec?.kind === 'greedy-plain') {
      const start = i;
      while (i < argv.length && !(argv[i] as string).startsWith('-')) {
        if (i > start && !(argv[i] as string).includes('=')) break;
        i++;
      }
    }
  }
  return own;
}
