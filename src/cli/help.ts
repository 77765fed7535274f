// Every command's usage text. `openshell-vm --help` is the overview (one line per command, built
// from COMMANDS); `openshell-vm COMMAND --help` and `openshell-vm help COMMAND` print that command's
// own usage and options only. doctor, verify, runtime, kernel, rootfs, prepare-rootfs and exec keep
// theirs beside their code.

export type CommandGroup = 'run' | 'gateway' | 'instances' | 'host' | 'other';

export interface CommandInfo {
  readonly name: string;
  readonly aliases?: readonly string[];
  readonly group: CommandGroup;
  /** What follows the name in the overview's usage line. */
  readonly usage: string;
  readonly summary: string;
  /** Its first word is a verb with its own options (`kernel check`, `rootfs info`). */
  readonly verbs?: readonly string[];
  /** It takes an instance NAME as its first operand (completion offers the instance names). */
  readonly takesInstance?: true;
}

export const COMMANDS: readonly CommandInfo[] = [
  {
    name: 'run',
    group: 'run',
    usage: '[OPTIONS] [--] PATH [ARG...]',
    summary: 'a command in a fresh microVM; its exit code',
  },
  {
    name: 'start',
    aliases: ['create'],
    group: 'gateway',
    usage: '[NAME] [OPTIONS]',
    summary: 'the gateway in the background, to Ready',
    takesInstance: true,
  },
  {
    name: 'prepare-rootfs',
    group: 'gateway',
    usage: '[--name NAME] [--force] [--base ...] [--k3s PATH] [--chart ...]',
    summary: "build an instance's gateway rootfs",
  },
  {
    name: 'verify',
    group: 'gateway',
    usage: '[--name NAME] [--kubeconfig FILE] [--json]',
    summary: 'check a running gateway: PASS/FAIL per check',
  },
  {
    name: 'list',
    aliases: ['ls'],
    group: 'instances',
    usage: '[--json]',
    summary: 'every instance and its status',
  },
  {
    name: 'status',
    group: 'instances',
    usage: '[NAME] [--json]',
    summary: 'processes, forwards, endpoints, guest clock offset',
    takesInstance: true,
  },
  {
    name: 'exec',
    group: 'instances',
    usage: '[NAME] [OPTIONS] [-- CMD [ARG...]]',
    summary: 'a command in a running instance',
    takesInstance: true,
  },
  {
    name: 'shell',
    group: 'instances',
    usage: '[NAME] [OPTIONS]',
    summary: 'a login shell in a running instance',
    takesInstance: true,
  },
  {
    name: 'logs',
    group: 'instances',
    usage: '[NAME] [--source SOURCE] [--follow]',
    summary: "an instance's console or helper logs",
    takesInstance: true,
  },
  {
    name: 'stop',
    group: 'instances',
    usage: '[NAME] [--timeout S] [--json]',
    summary: 'stop an instance in order',
    takesInstance: true,
  },
  {
    name: 'delete',
    aliases: ['rm'],
    group: 'instances',
    usage: '[NAME] [--timeout S] [--json]',
    summary: 'stop, then remove it and its credentials',
    takesInstance: true,
  },
  {
    name: 'pool',
    group: 'run',
    usage: 'start [--size N] [VM OPTIONS] | status [--json] | stop',
    summary: 'a warm pool of booted microVMs that run takes from',
    verbs: ['start', 'status', 'stop'],
  },
  { name: 'doctor', group: 'host', usage: '[--json]', summary: 'what this host has and lacks, with fixes' },
  { name: 'runtime', group: 'host', usage: '[--json]', summary: 'the libkrun runtime in use' },
  {
    name: 'kernel',
    group: 'host',
    usage: 'check [CONFIG] [--builtin] [--json] | build ...',
    summary: "a config against the gateway's needs; build one",
    verbs: ['check', 'build'],
  },
  {
    name: 'rootfs',
    group: 'host',
    usage: 'info [--name NAME | --rootfs DIR] [--json]',
    summary: "a rootfs's build record",
    verbs: ['info'],
  },
  { name: 'version', group: 'other', usage: '[--json]', summary: "openshell-vm's version" },
  {
    name: 'completion',
    group: 'other',
    usage: 'bash|zsh|fish',
    summary: 'a shell completion script',
    verbs: ['bash', 'zsh', 'fish'],
  },
  { name: 'help', group: 'other', usage: '[COMMAND]', summary: 'this overview, or one command' },
];

/** The command named `word` (or one of its aliases), if there is one. */
export function findCommand(word: string | undefined): CommandInfo | undefined {
  if (word === undefined) return undefined;
  return COMMANDS.find((c) => c.name === word || (c.aliases ?? []).includes(word));
}

/** Every command word users may type: names and aliases. */
export function commandWords(): string[] {
  return COMMANDS.flatMap((c) => [c.name, ...(c.aliases ?? [])]);
}

const GROUP_TITLES: Readonly<Record<CommandGroup, string>> = {
  run: 'A command in a fresh microVM',
  gateway: 'The gateway (k3s + OpenShell)',
  instances: 'Instances (NAME defaults to "default"; --name NAME works too)',
  host: 'This host',
  other: 'Other',
};

function overview(): string {
  const line = (words: string, summary: string) =>
    words.length > 44 ? `  ${words}\n${' '.repeat(48)}${summary}\n` : `  ${words.padEnd(46)}${summary}\n`;
  let text = `openshell-vm: a Kubernetes gateway (k3s + OpenShell) or a one-off command in a microVM

Usage: openshell-vm COMMAND [OPTIONS]
  openshell-vm help COMMAND (or COMMAND --help) shows a command's own usage and options.
`;
  for (const group of Object.keys(GROUP_TITLES) as CommandGroup[]) {
    text += `\n${GROUP_TITLES[group]}:\n`;
    for (const c of COMMANDS.filter((x) => x.group === group)) {
      const aliases = c.aliases?.length ? ` (also: ${c.aliases.join(', ')})` : '';
      text += line(`${c.name} ${c.usage}`, `${c.summary}${aliases}`);
      if (c.name === 'run') {
        text += line('--exec PATH [--args ARG...] [OPTIONS]', "the same, in the seed's form");
      }
      if (c.name === 'start') {
        text += line('[OPTIONS]', 'no command: the gateway in the foreground');
      }
    }
  }
  return `${text}
Global options, before or after the command (never after --, which is the guest's):
  --debug                show the cause chain of errors
  -q, --quiet            no progress lines (warnings and errors are still shown)
  --json                 JSON output, where the command has it; errors too:
                         {"error":{"message":...,"hint":...}} on stdout
  -h, --help             the command's usage
  -V, --version          the version

Files: logs of failed runs stay in $XDG_DATA_HOME/openshell-vm/instances/NAME/runs/;
the kernel, busybox and built guest artifacts are cached in $XDG_CACHE_HOME/openshell-vm.
`;
}

export const HELP = overview();

const MACHINE = `Machine:
  --cpus N, --vcpus N    virtual CPUs (default ${'%CPUS%'}, at most the host's CPUs)
  --memory SIZE, --mem SIZE
                         memory: 4GiB, 4096M, 512MiB; a bare number is MiB (default ${'%MEM%'},
                         at most 3/4 of the host's memory)
  --arch x86_64|aarch64  guest architecture (default: the host's); another architecture
                         than the host's runs under TCG (software emulation)
  --accel kvm|hvf|tcg    accelerator (default: KVM or HVF when it really works here, else TCG)
  --name NAME            the instance (default "default")
  --kernel auto|debian|built|PATH
                         the guest kernel under QEMU (default auto: the one kernel build made for
                         this architecture if present, else Debian's; OPENSHELL_VM_KERNEL too)

Backend:
  --backend qemu|libkrun  the VMM (default: libkrun where a libkrun runtime is found and KVM/HVF
                         works, else QEMU; the choice and its reason are printed). libkrun runs
                         guests of the host's architecture only, with --net gvproxy, tsi or none;
                         the gateway runs on QEMU only
`;

const OUTPUT = `Output:
  -q, --quiet            no progress lines (warnings and errors are still shown)
  --events FILE          write progress as JSON lines to FILE (processes with their pids too)
  --keep-logs            keep the run's logs (console, qemu, virtiofsd) even when it succeeds
  --debug                show the cause chain of errors
`;

export const RUN_HELP = `Usage: openshell-vm run [OPTIONS] [--] PATH [ARG...]
       openshell-vm --exec PATH [--args ARG...] [--env K=V...] [--workdir DIR] [OPTIONS]

Runs a command in a fresh microVM (the embedded busybox root; writes vanish when it ends).
Its stdout and stderr are the command's own; the exit code is the command's exit code
(128+N if it dies of signal N; 127 not found, 126 not executable, 125 the guest init or
openshell-vm itself failed; 2 bad arguments). Everything after -- (or from PATH on) is the
command's, untouched.

Command:
  --exec PATH            executable in the guest (absolute, or looked up in the guest's PATH)
  --args ARG...          its arguments: every following word up to the next openshell-vm
                         option, even words starting with '-'; --args=WORD adds one word
  --env K=V...           environment variable for the command (repeatable); the defaults
                         HOME=/root, PATH=/usr/local/sbin:...:/bin and TERM=xterm stay unless replaced
  --workdir DIR          working directory in the guest (default /)
  --rootfs DIR           run it in a rootfs built by prepare-rootfs (checked against its build
                         record first; writes go to a throwaway overlay) instead of the busybox root
  --boot-timeout S       seconds for the guest to start the command (default 180)
  -d, --detach           return once the command has started (its stdout: logs NAME --source output)
  --no-pool              boot cold even when a warm pool (openshell-vm pool) has these VM options

${MACHINE.replace('%CPUS%', '2').replace('%MEM%', '2048 MiB')}
Network:
  --net gvproxy|user|tsi|none  gvproxy user-mode network (default: DHCP 192.168.127.2, DNS,
                         the host's loopback at 192.168.127.254), QEMU's own user network
                         (10.0.2.15; the host at 10.0.2.2), libkrun's TSI (transparent socket
                         impersonation, libkrun only; -p becomes its port map), or no network
  -p, --port SPEC        forward a host TCP port into the guest (repeatable): HOST:GUEST,
                         PORT (the same on both sides) or ADDR:HOST:GUEST; the host side
                         listens on 127.0.0.1 unless ADDR is given

${OUTPUT}`;

export const GATEWAY_HELP = `Usage: openshell-vm start [NAME] [OPTIONS]     (create: the same)
       openshell-vm [OPTIONS]                  the gateway in the foreground

Boots an instance's rootfs (built by prepare-rootfs) with k3s, forwards its port, writes the
OpenShell CLI's files ($XDG_CONFIG_HOME/openshell/gateways/NAME/: metadata.json,
mtls/{ca.crt,tls.crt,tls.key}; active_gateway) and ~/.kube/NAME.yaml, waits until the gateway
answers mTLS, and prints Ready (stdout). start returns then, leaving it running in the background
(as --detach; openshell-vm stop NAME stops it; an instance already running is left as it is, exit
0). Without a command it stays in the foreground until Ctrl-C or SIGTERM (exit 0).

Gateway:
  -p HOST:30051          the gateway's host port (default 127.0.0.1:30051); other -p add forwards
  --api-port PORT        host loopback port of the Kubernetes API (default: this instance's last, else a free one)
  --ready-timeout S      seconds to wait for the gateway to answer mTLS (default 600)
  --tls-san NAME,...     extra names or addresses in the gateway's server certificate
  -d, --detach           run in the background; return at Ready (what start does)
  --reset                first forget the cluster state and credentials (the built layers stay)
  --snapshot             boot from a disk image and save the VM's state at the first Ready; later
                         starts with unchanged inputs restore it (QEMU; the cluster as it was then)
  --no-snapshot          boot cold even where a saved state exists (it is kept)
  --merge-kubeconfig     also add context openshell-NAME to ~/.kube/config (one backup kept)
  --use-context          with --merge-kubeconfig: make it the current context
  --json                 print Ready as one JSON object
  --rootfs DIR           boot this rootfs instead of the instance's own
  --net gvproxy          the gateway runs on gvproxy's network only

${MACHINE.replace('%CPUS%', '4').replace('%MEM%', '8192 MiB')}
${OUTPUT}`;

export const STATUS_HELP = `Usage: openshell-vm status [NAME] [--json]

An instance's status (running / degraded / starting / stopping / busy / stopped), its processes
(each checked by pid and start time), forwards, endpoints and guest clock offset.

  --name NAME            the instance (or as the first word; default "default")
  --json                 one JSON object
`;

export const LIST_HELP = `Usage: openshell-vm list [--json]     (also: ls)

Every instance with its status, mode, supervisor pid and endpoint or forwards.

  --json                 a JSON array, one object per instance (as status --json)
`;

export const STOP_HELP = `Usage: openshell-vm stop [NAME] [--timeout S] [--json]

Stops an instance in order: the guest stops k3s (or the command) first, then the VM and its
helpers; whatever has not stopped after S seconds is killed. An instance that is not running
is left as it is (exit 0).

  --name NAME            the instance (or as the first word; default "default")
  --timeout S            seconds before it is killed (default 30)
  --json                 the result as one JSON object
`;

export const DELETE_HELP = `Usage: openshell-vm delete [NAME] [--timeout S] [--json]     (also: rm)

Stops the instance if it runs, then removes its directory, its kubeconfig and its OpenShell CLI
files (and the context --merge-kubeconfig added to ~/.kube/config).

  --name NAME            the instance (or as the first word; default "default")
  --timeout S            seconds a stop waits before killing (default 30)
  --json                 the result as one JSON object
`;

export const LOGS_HELP = `Usage: openshell-vm logs [NAME] [--source SOURCE] [--follow]

Prints a log of the instance: the guest's console (the default), gvproxy, virtiofsd, vmm (QEMU or
the libkrun runner), supervisor (--detach only) or output (a detached run's stdout).

  --name NAME            the instance (or as the first word; default "default")
  --source SOURCE        console, gvproxy, virtiofsd, vmm, supervisor or output
  -f, --follow           keep printing what is written, until the instance ends or Ctrl-C
`;

export const SHELL_HELP = `Usage: openshell-vm shell [NAME] [--env K=V] [--workdir DIR] [-t|-T]

A login shell (/bin/sh -l) in a running instance: exec NAME -- /bin/sh -l. On a terminal it
gets a pseudo-terminal; otherwise it reads its commands from stdin (echo 'uname -a' | ...).
The exit code is the shell's.

  --name NAME            the instance (or as the first word; default "default")
  --env, -e K=V          environment variable for the shell (repeatable)
  --workdir, -w DIR      working directory in the guest (default /)
  --tty, -t              a pseudo-terminal even when stdin is not a terminal
  --no-tty, -T           no pseudo-terminal even when stdin is a terminal
`;

export const VERSION_HELP = `Usage: openshell-vm version [--json]

Prints openshell-vm's version, as openshell-vm --version (or -V) does.

  --json                 {"version": "..."}
`;

export const COMPLETION_HELP = `Usage: openshell-vm completion bash|zsh|fish

Prints a completion script for the shell: commands, each command's options and their values,
and instance names (from openshell-vm completion instances, which prints them one per line).

  bash:  source <(openshell-vm completion bash)         (in ~/.bashrc)
  zsh:   source <(openshell-vm completion zsh)          (in ~/.zshrc, after compinit)
  fish:  openshell-vm completion fish > ~/.config/fish/completions/openshell-vm.fish
`;

export const HELP_HELP = `Usage: openshell-vm help [COMMAND]

The overview of every command, or COMMAND's own usage and options (as COMMAND --help).
`;
