/**
 * How the guest init learns what to do: its mode (serve commands, or start the gateway), its
 * network, and where its agent reaches the host. Pure data shared by every backend, so the init
 * (src/guest/scripts/ovm-init.sh) reads one set of words whichever VMM started it:
 * - QEMU ('cmdline'): ovm.mode= and ovm.net= on the kernel command line.
 * - libkrun: no command line of its own; the words are the init's environment (krun_set_exec's
 *   env, which libkrun puts on the kernel command line as KEY=VALUE, and which the kernel gives
 *   init as its environment), with KRUN_INIT_PID1=1 so libkrun's init execs the init as PID 1.
 * - QEMU ('krun'): the same environment words and no ovm.mode/ovm.net, the initramfs standing in
 *   for libkrun's init: the libkrun guest path, run for real on a host without libkrun.
 * Never secrets in any of them: /proc/cmdline is world-readable in the guest.
 */
import type { GuestHandoff } from '../config/environment.ts';
import { GUEST_INIT_PATH } from '../guest/paths.ts';

/** What the guest init runs: commands from the host (exec), or the gateway's k3s (gateway). */
export type GuestMode = 'exec' | 'gateway';
export const GUEST_MODES: readonly GuestMode[] = ['exec', 'gateway'];

export interface InitWords {
  readonly mode: GuestMode;
  /** How eth0 is configured (DHCP from gvproxy or QEMU's network, or nothing). */
  readonly network: 'gvproxy' | 'user' | 'tsi' | 'none';
  /** The agent's vsock port to the host (libkrun); undefined: the virtio-serial port (QEMU). */
  readonly agentVsockPort?: number | undefined;
}

/** The init's words as environment entries (KEY=VALUE), in a fixed order. */
export function initEnvironment(words: InitWords): string[] {
  return [
    `OVM_MODE=${words.mode}`,
    `OVM_NET=${words.network}`,
    ...(words.agentVsockPort === undefined ? [] : [`OVM_AGENT=vsock:${words.agentVsockPort}`]),
  ];
}

/** libkrun's init: exec the workload as PID 1 instead of forking it (the init unsets it first). */
export const KRUN_INIT_PID1 = 'KRUN_INIT_PID1=1';

/**
 * The kernel command-line words that hand the init its words under QEMU: ovm.* words, or (krun)
 * the environment words libkrun would pass, with KRUN_INIT naming the init as libkrun does.
 */
export function initKernelWords(words: InitWords, handoff: GuestHandoff): string[] {
  if (handoff === 'cmdline') return [`ovm.mode=${words.mode}`, `ovm.net=${words.network}`];
  return [`KRUN_INIT=${GUEST_INIT_PATH}`, KRUN_INIT_PID1, ...initEnvironment(words)];
}
