import { ACCELERATORS } from '../accel/probe.ts';
import { readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { GUEST_ARCHES } from '../host/arch.ts';
import { listInstanceNames } from '../instance/lifecycle.ts';
import { LOG_SOURCES } from '../instance/state.ts';
import { NETWORKS } from '../options/exec-options.ts';
import { BACKENDS } from '../vmm/select.ts';
import { EXEC_ONLY, GATEWAY_ONLY, GLOBAL_FLAGS, MAIN_OPTIONS, type OptionSpec, parseArgs } from './args.ts';
import { COMMANDS, COMPLETION_HELP } from './help.ts';

// `openshell-vm completion bash|zsh|fish`: a completion script built from the same tables the
// parsers and the help use (COMMANDS, MAIN_OPTIONS), with instance names from
// `openshell-vm completion instances` at the time of completing.

/** What an option's value completes to: nothing to offer, files, instance names or fixed words. */
export type ValueKind = 'any' | 'file' | 'instance' | readonly string[];

const VALUE_KINDS: Readonly<Record<string, ValueKind>> = {
  name: 'instance',
  arch: GUEST_ARCHES,
  accel: ACCELERATORS,
  backend: BACKENDS,
  net: NETWORKS,
  source: LOG_SOURCES,
  target: ['qemu', 'libkrunfw', 'all'],
  kernel: ['auto', 'debian', 'built'],
  rootfs: 'file',
  events: 'file',
  kubeconfig: 'file',
  k3s: 'file',
  chart: 'file',
  image: 'file',
  manifest: 'file',
};

const flag = (name: string, short?: string): OptionSpec => ({
  name,
  kind: 'flag',
  ...(short ? { short } : {}),
});
const value = (name: string, short?: string): OptionSpec => ({
  name,
  kind: 'value',
  ...(short ? { short } : {}),
});

const EXEC_INTO = [
  value('name'),
  value('env', 'e'),
  value('workdir', 'w'),
  flag('tty', 't'),
  flag('no-tty', 'T'),
];
const MAIN_VISIBLE = MAIN_OPTIONS.filter((o) => o.name !== 'supervise');
const without = (names: readonly string[]) => MAIN_VISIBLE.filter((o) => !names.includes(o.name));

/**
 * Each command's options (besides the global ones), and each verb's ('kernel check'; the command
 * itself then has none). The parsers hold the same lists; the tests check each option here
 * against the command's parser and its --help.
 */
export const COMMAND_OPTIONS: Readonly<Record<string, readonly OptionSpec[]>> = {
  run: without([...GATEWAY_ONLY, 'exec', 'args', 'version']),
  start: without([...EXEC_ONLY, 'exec', 'version']),
  'prepare-rootfs': [
    value('name'),
    flag('force'),
    value('arch'),
    value('base'),
    value('mirror'),
    value('debian-builder'),
    value('builder-image'),
    value('k3s'),
    value('k3s-sha256'),
    value('chart'),
    value('image'),
    flag('no-images'),
    value('manifest'),
    flag('no-agent-sandbox'),
    value('package'),
    value('gateway-image'),
    value('sandbox-image'),
    flag('preinit'),
    value('preinit-timeout'),
    flag('json'),
    value('events'),
  ],
  verify: [value('name'), value('kubeconfig'), value('timeout'), flag('json')],
  list: [flag('json')],
  status: [value('name'), flag('json')],
  exec: EXEC_INTO,
  shell: EXEC_INTO,
  logs: [value('name'), value('source'), flag('follow', 'f')],
  stop: [value('name'), value('timeout'), flag('json')],
  delete: [value('name'), value('timeout'), flag('json')],
  doctor: [flag('json')],
  runtime: [flag('json')],
  kernel: [],
  'kernel check': [flag('json'), flag('builtin')],
  'kernel build': [
    value('arch'),
    value('target'),
    value('jobs', 'j'),
    value('source'),
    value('libkrunfw-source'),
    flag('json'),
  ],
  pool: [],
  'pool start': [
    value('size'),
    { name: 'vcpus', kind: 'value', aliases: ['cpus'] },
    { name: 'mem', kind: 'value', aliases: ['memory'] },
    value('arch'),
    value('accel'),
    value('net'),
    value('backend'),
    value('rootfs'),
    value('kernel'),
  ],
  'pool status': [flag('json')],
  'pool stop': [value('timeout'), flag('json')],
  rootfs: [],
  'rootfs info': [value('name'), value('rootfs'), flag('json')],
  version: [flag('json')],
  completion: [],
  help: [],
};

/** The option words of a spec list: `--name`, its aliases, `-s`. */
function words(spec: OptionSpec): string[] {
  return [
    `--${spec.name}`,
    ...(spec.aliases ?? []).map((a) => `--${a}`),
    ...(spec.short ? [`-${spec.short}`] : []),
  ];
}

/** What the value of option `word` of command `key` completes to. */
function valueKind(key: string, spec: OptionSpec): ValueKind {
  if (key === 'kernel build' && (spec.name === 'source' || spec.name === 'libkrunfw-source')) return 'file';
  return VALUE_KINDS[spec.name] ?? 'any';
}

/** Everything a script needs: commands, each one's option words, and what each value option takes. */
export interface CompletionModel {
  readonly commands: readonly { readonly word: string; readonly summary: string }[];
  /**
   * Option words per key: a command word, or 'command verb' for commands whose verbs have their
   * own options ('kernel check'); '' is the bare command (the gateway and --exec).
   */
  readonly flags: Readonly<Record<string, readonly string[]>>;
  /** Per key, the option words that take a value, with what it completes to. */
  readonly values: Readonly<Record<string, ReadonlyMap<string, ValueKind>>>;
  /** Every word that takes a value somewhere (a script skips the word after it). */
  readonly valueWords: readonly string[];
  readonly verbs: Readonly<Record<string, readonly string[]>>;
  /** Commands whose options belong to their verb ('kernel' in 'kernel check'). */
  readonly verbKeyed: readonly string[];
  readonly instanceCommands: readonly string[];
}

export function completionModel(): CompletionModel {
  const flags: Record<string, string[]> = {};
  const values: Record<string, Map<string, ValueKind>> = {};
  const takesValue = new Map<string, boolean>();
  const add = (key: string, specs: readonly OptionSpec[]) => {
    const list: string[] = [];
    const kinds = new Map<string, ValueKind>();
    for (const spec of [...GLOBAL_FLAGS.filter((g) => !specs.some((s) => s.name === g.name)), ...specs]) {
      for (const word of words(spec)) {
        list.push(word);
        const isValue = spec.kind !== 'flag';
        // A script skips the word after a value option wherever it is: it must be one everywhere.
        if (takesValue.get(word) === !isValue) {
          throw new Error(`completion: ${word} takes a value in some commands only`);
        }
        takesValue.set(word, isValue);
        if (isValue) kinds.set(word, valueKind(key, spec));
      }
    }
    flags[key] = list;
    values[key] = kinds;
  };
  add('', MAIN_VISIBLE);
  const commands: { word: string; summary: string }[] = [];
  const verbs: Record<string, readonly string[]> = {};
  const verbKeyed: string[] = [];
  const instanceCommands: string[] = [];
  for (const c of COMMANDS) {
    const specs = COMMAND_OPTIONS[c.name];
    if (!specs) throw new Error(`completion: no options listed for command '${c.name}'`);
    for (const word of [c.name, ...(c.aliases ?? [])]) {
      commands.push({ word, summary: c.summary });
      add(word, specs);
      if (c.verbs) verbs[word] = c.verbs;
      for (const verb of c.verbs ?? []) {
        const own = COMMAND_OPTIONS[`${c.name} ${verb}`];
        if (own) add(`${word} ${verb}`, own);
        if (own && !verbKeyed.includes(word)) verbKeyed.push(word);
      }
      if (c.takesInstance) instanceCommands.push(word);
    }
  }
  verbs.help = COMMANDS.map((c) => c.name);
  const valueWords = [...takesValue].filter(([, v]) => v).map(([w]) => w);
  return { commands, flags, values, valueWords, verbs, verbKeyed, instanceCommands };
}

export async function completionCommand(argv: readonly string[]): Promise<number> {
  const shell = argv[0];
  if (shell === undefined || shell === '--help' || shell === '-h') {
    process.stdout.write(COMPLETION_HELP);
    return shell === undefined ? 2 : 0;
  }
  parseArgs(argv.slice(1), [], false, 'completion');
  if (shell === 'instances') {
    for (const name of await listInstanceNames(readEnvironment())) process.stdout.write(`${name}\n`);
    return 0;
  }
  const scripts: Record<string, (m: CompletionModel) => string> = {
    bash: bashScript,
    zsh: zshScript,
    fish: fishScript,
  };
  const script = Object.hasOwn(scripts, shell) ? scripts[shell] : undefined;
  if (!script) {
    throw new UsageError(`completion: no script for shell '${shell}'`, {
      hint: 'use: openshell-vm completion bash, zsh or fish',
    });
  }
  process.stdout.write(script(completionModel()));
  return 0;
}

const INSTANCES = 'command openshell-vm completion instances 2>/dev/null';

/** Shell `case` arms on "KEY:PREV" for the value options, one per kind of value. */
function valueCases(m: CompletionModel, body: (kind: ValueKind) => string): string {
  const byKind = new Map<string, { kind: ValueKind; patterns: string[] }>();
  for (const [key, kinds] of Object.entries(m.values)) {
    for (const [word, kind] of kinds) {
      const id = typeof kind === 'string' ? kind : kind.join(' ');
      const entry = byKind.get(id) ?? { kind, patterns: [] };
      entry.patterns.push(`'${key}:${word}'`);
      byKind.set(id, entry);
    }
  }
  return [...byKind.values()].map((e) => `  ${e.patterns.join('|')})\n    ${body(e.kind)} ;;`).join('\n');
}

/** Shell `case` arms on KEY, with each key's option words. */
function flagCases(m: CompletionModel, body: (words: string) => string): string {
  return Object.entries(m.flags)
    .map(([key, f]) => `  '${key}') ${body(f.join(' '))} ;;`)
    .join('\n');
}

/** The shell lines that find the command, its operand (or verb) and the key of its options. */
function scanLines(
  m: CompletionModel,
  first: number,
  last: string,
  words: string,
  onDashDash: string,
): string {
  return `  local cmd='' operand='' key i w
  for ((i = ${first}; i < ${last}; i++)); do
    w=\${${words}[i]}
    case $w in
    --) ${onDashDash} ;;
    -*) case " ${m.valueWords.join(' ')} " in *" $w "*) ((i++)) ;; esac ;;
    *)
      if [[ -z $cmd ]]; then cmd=$w
      elif [[ -z $operand ]]; then operand=$w
      fi ;;
    esac
  done
  key=$cmd
  case $cmd in ${m.verbKeyed.join('|')}) [[ -n $operand ]] && key="$cmd $operand" ;; esac`;
}

export function bashScript(m: CompletionModel): string {
  return `# openshell-vm completion for bash: source <(openshell-vm completion bash)
_openshell_vm() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
  COMPREPLY=()
${scanLines(m, 1, 'COMP_CWORD', 'COMP_WORDS', 'return 0')}
  case "$key:$prev" in
${valueCases(m, (k) =>
  k === 'instance'
    ? `COMPREPLY=($(compgen -W "$(${INSTANCES})" -- "$cur")); return 0`
    : k === 'file' || k === 'any'
      ? 'return 0'
      : `COMPREPLY=($(compgen -W "${k.join(' ')}" -- "$cur")); return 0`,
)}
  esac
  local flags
  case $key in
${flagCases(m, (f) => `flags="${f}"`)}
  *) return 0 ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    return 0
  fi
  [[ -n $operand ]] && return 0
  case $cmd in
  '') COMPREPLY=($(compgen -W "${m.commands.map((c) => c.word).join(' ')}" -- "$cur")) ;;
${Object.entries(m.verbs)
  .map(([c, v]) => `  ${c}) COMPREPLY=($(compgen -W "${v.join(' ')}" -- "$cur")) ;;`)
  .join('\n')}
  ${m.instanceCommands.join('|')}) COMPREPLY=($(compgen -W "$(${INSTANCES})" -- "$cur")) ;;
  esac
  return 0
}
complete -o bashdefault -o default -F _openshell_vm openshell-vm
`;
}

export function zshScript(m: CompletionModel): string {
  return `#compdef openshell-vm
# openshell-vm completion for zsh: source <(openshell-vm completion zsh) (after compinit)
_openshell_vm() {
  local cur=\${words[CURRENT]} prev=\${words[CURRENT-1]}
  local -a flags
${scanLines(m, 2, 'CURRENT', 'words', '_files; return')}
  case "$key:$prev" in
${valueCases(m, (k) =>
  k === 'instance'
    ? `compadd -- \${(f)"$(${INSTANCES})"}; return`
    : k === 'file'
      ? '_files; return'
      : k === 'any'
        ? 'return'
        : `compadd -- ${k.join(' ')}; return`,
)}
  esac
  case $key in
${flagCases(m, (f) => `flags=(${f})`)}
  *) _files; return ;;
  esac
  if [[ $cur == -* ]]; then
    compadd -- $flags
    return
  fi
  [[ -n $operand ]] && { _files; return; }
  case $cmd in
  '') compadd -- ${m.commands.map((c) => c.word).join(' ')} ;;
${Object.entries(m.verbs)
  .map(([c, v]) => `  ${c}) compadd -- ${v.join(' ')} ;;`)
  .join('\n')}
  ${m.instanceCommands.join('|')}) compadd -- \${(f)"$(${INSTANCES})"} ;;
  *) _files ;;
  esac
}
if (( $+functions[compdef] )); then
  compdef _openshell_vm openshell-vm
else
  autoload -Uz compinit && compinit && compdef _openshell_vm openshell-vm
fi
`;
}

const fishQuote = (s: string) => `'${s.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;

export function fishScript(m: CompletionModel): string {
  const lines = [
    '# openshell-vm completion for fish: openshell-vm completion fish > ~/.config/fish/completions/openshell-vm.fish',
    'complete -c openshell-vm -e',
    'function __openshell_vm_instances',
    `    ${INSTANCES}`,
    'end',
  ];
  const top = '__fish_use_subcommand';
  for (const c of m.commands) {
    lines.push(`complete -c openshell-vm -f -n ${top} -a ${c.word} -d ${fishQuote(c.summary)}`);
  }
  const option = (key: string, condition: string, word: string) => {
    const kind = m.values[key]?.get(word);
    const spec = word.startsWith('--') ? `-l ${word.slice(2)}` : `-s ${word.slice(1)}`;
    const takes =
      kind === undefined
        ? ''
        : kind === 'instance'
          ? " -x -a '(__openshell_vm_instances)'"
          : kind === 'file'
            ? ' -r -F'
            : kind === 'any'
              ? ' -x'
              : ` -x -a ${fishQuote(kind.join(' '))}`;
    return `complete -c openshell-vm -n ${fishQuote(condition)} ${spec}${takes}`;
  };
  for (const word of m.flags[''] ?? []) lines.push(option('', top, word));
  for (const [key, flags] of Object.entries(m.flags)) {
    if (key === '') continue;
    const [command, verb] = key.split(' ') as [string, string | undefined];
    const seen = `__fish_seen_subcommand_from ${command}${verb ? `; and __fish_seen_subcommand_from ${verb}` : ''}`;
    for (const word of flags) lines.push(option(key, seen, word));
    const verbs = verb ? undefined : m.verbs[command];
    if (verbs)
      lines.push(`complete -c openshell-vm -f -n ${fishQuote(seen)} -a ${fishQuote(verbs.join(' '))}`);
    if (m.instanceCommands.includes(command))
      lines.push(`complete -c openshell-vm -f -n ${fishQuote(seen)} -a '(__openshell_vm_instances)'`);
  }
  return `${lines.join('\n')}\n`;
}
