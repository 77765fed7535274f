export const HELP = `openshell-vm: a Kubernetes gateway (k3s + OpenShell) or a one-off command in a microVM

Usage:
  openshell-vm --exec PATH [--args ARG...] [--env K=V...] [--workdir DIR] [OPTIONS]
  openshell-vm run [OPTIONS] [--] PATH [ARG...]
  openshell-vm kernel check [CONFIG] [--builtin] [--json]   the gateway's kernel requirements
  openshell-vm runtime [--json]   the libkrun runtime in use: libraries, sha256, provenance
  openshell-vm doctor [--json]    what this host has and lacks, with fixes
  openshell-vm prepare-rootfs [--name NAME] [--force] [--base ...] [--k3s PATH] [--chart ...]
                               build an instance's gateway rootfs (see prepare-rootfs --help)
  openshell-vm rootfs info [--name NAME] [--json]   a rootfs's build record
  openshell-vm [GATEWAY OPTIONS]  boot the gateway (k3s + OpenShell) in the foreground
  openshell-vm verify [--name NAME] [--kubeconfig FILE] [--json]   check a running gateway
  openshell-vm status|list|stop|logs|delete|exec ...   instances (see "Instances" below)

The gateway boots the instance's rootfs (built by prepare-rootfs) with k3s, forwards its port,
writes the OpenShell CLI's files ($XDG_CONFIG_HOME/openshell/gateways/NAME/: metadata.json,
mtls/{ca.crt,tls.crt,tls.key}; active_gateway) and ~/.kube/NAME.yaml, waits until the gateway
answers mTLS, prints Ready (stdout), and runs until Ctrl-C or SIGTERM (exit 0).

Gateway:
  -p HOST:30051          the gateway's host port (default 127.0.0.1:30051); other -p add forwards
  --api-port PORT        host loopback port of the Kubernetes API (default: this instance's last, else a free one)
  --ready-timeout S      seconds to wait for the gateway to answer mTLS (default 600)
  --tls-san NAME,...     extra names or addresses in the gateway's server certificate
  -d, --detach           run in the background; return at Ready (openshell-vm stop NAME stops it)
  --reset                first forget the cluster state and credentials (the built layers stay)
  --merge-kubeconfig     also add context openshell-NAME to ~/.kube/config (one backup kept)
  --use-context          with --merge-kubeconfig: make it the current context
  --json                 print Ready as one JSON object
  --rootfs DIR           boot this rootfs instead of the instance's own
  --vcpus, --mem         default 4 vCPUs and 8192 MiB (clamped to the host)

Run a command in a fresh microVM (the embedded busybox root; writes vanish when it ends).
Its stdout and stderr are the command's own; the exit code is the command's exit code
(128+N if it dies of signal N; 127 not found, 126 not executable, 125 the guest init or
openshell-vm itself failed; 2 bad arguments).

Command:
  --exec PATH            executable in the guest (absolute, or looked up in the guest's PATH)
  --args ARG...          its arguments: every following word up to the next openshell-vm
                         option, even words starting with '-'; --args=WORD adds one word
  --env K=V...           environment variable for the command (repeatable); the defaults
                         HOME=/root, PATH=/usr/local/sbin:...:/bin and TERM=xterm stay unless replaced
  --workdir DIR          working directory in the guest (default /)
  --rootfs DIR           run it in a rootfs built by prepare-rootfs (checked against its build
                         record first; writes go to a throwaway overlay) instead of the busybox root

With run, --detach returns once the command has started (its stdout: logs --source output).

Machine:
  --vcpus N              virtual CPUs (default 2, at most the host's CPUs)
  --mem MiB              memory in MiB (default 2048, at most 3/4 of the host's memory)
  --arch x86_64|aarch64  guest architecture (default: the host's); another architecture
                         than the host's runs under TCG (software emulation)
  --accel kvm|hvf|tcg    accelerator (default: KVM or HVF when it really works here, else TCG)
  --boot-timeout S       seconds for the guest to start the command (default 180)
  --name NAME            instance whose directory holds the run's logs (default "default")

Backend:
  --backend qemu|libkrun  the VMM (default: libkrun where a libkrun runtime is found and KVM/HVF
                         works, else QEMU; the choice and its reason are printed). libkrun runs
                         guests of the host's architecture only, with --net gvproxy, tsi or none;
                         the gateway runs on QEMU only

Network:
  --net gvproxy|user|tsi|none  gvproxy user-mode network (default: DHCP 192.168.127.2, DNS,
                         the host's loopback at 192.168.127.254), QEMU's own user network
                         (10.0.2.15; the host at 10.0.2.2), libkrun's TSI (transparent socket
                         impersonation, libkrun only; -p becomes its port map). TSI intercepts
                         the guest's loopback connections, which breaks k3s: not for the
                         gateway. Or no network
  -p, --port SPEC        forward a host TCP port into the guest (repeatable): HOST:GUEST,
                         PORT (the same on both sides) or ADDR:HOST:GUEST; the host side
                         listens on 127.0.0.1 unless ADDR is given

Output:
  -q, --quiet            no progress lines (warnings and errors are still shown)
                         -q and --debug work with every command, before its name too
  --events FILE          write progress as JSON lines to FILE (processes with their pids too)
  --keep-logs            keep the run's logs (console, qemu, virtiofsd) even when it succeeds
  --debug                show the cause chain of errors
  -h, --help             this help
  -V, --version          the version

Files: logs of failed runs stay in $XDG_DATA_HOME/openshell-vm/instances/NAME/runs/;
the kernel, busybox and built guest artifacts are cached in $XDG_CACHE_HOME/openshell-vm.

Instances (NAME defaults to "default"; --name NAME works too):
  openshell-vm status [NAME] [--json]     running / degraded / starting / stopping / busy / stopped,
                                          processes, forwards, endpoints, guest clock offset
  openshell-vm list [--json]              every instance and its status
  openshell-vm stop [NAME] [--timeout S]  stop in order (the guest stops k3s or the command first),
                                          killed after S seconds (default 30)
  openshell-vm logs [NAME] [--source console|gvproxy|virtiofsd|vmm|supervisor|output] [--follow]
  openshell-vm delete [NAME]              stop, then remove the instance, its kubeconfig and
                                          OpenShell CLI files
  openshell-vm exec [NAME] [--env K=V] [--workdir DIR] [-t|-T] [-- CMD ARG...]
                                          a command in the running guest (sh on a terminal);
                                          see openshell-vm exec --help
`;
