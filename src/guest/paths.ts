// Where things live in the guest, and the agent's ports: constants only, so that a VMM backend can
// name them without loading the agent builder or the default rootfs (agent-build.ts and
// default-rootfs.ts re-export them where they were first defined).

/** Where the agent lives in every rootfs openshell-vm builds. */
export const AGENT_GUEST_PATH = 'sbin/ovm-agent';
/** The virtio-serial port the agent talks on (QEMU). */
export const AGENT_PORT_NAME = 'org.openshell.agent';
/** The vsock port the agent dials (libkrun maps it to the host's agent socket). */
export const AGENT_VSOCK_PORT = 10_000;
/** Where the guest init lives inside every rootfs openshell-vm builds. */
export const GUEST_INIT_PATH = '/sbin/ovm-init';
