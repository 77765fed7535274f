/**
 * The environment the guest agent starts from, and so the one every command it runs gets unless
 * its request sets a name. The guest init starts the agent with exactly this (QEMU: ovm-init.sh's
 * `env -i`); under libkrun it is the environment of the agent as the VM's workload, and the agent
 * keeps only these names of what libkrun's init passes on (ovm-agent.c, --workload).
 */
export const AGENT_ENV: readonly (readonly [string, string])[] = [
  ['HOME', '/root'],
  ['PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  ['TERM', 'xterm'],
];
