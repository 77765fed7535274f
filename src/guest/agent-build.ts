import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { DEB_ARCH, type GuestArch, hostArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { findOnPath } from '../host/toolchain.ts';
import { runCommand } from '../supervisor/command.ts';

/** Where the agent lives in every rootfs openshell-vm builds. */
export const AGENT_GUEST_PATH = 'sbin/ovm-agent';
/** The virtio-serial port the agent talks on (QEMU). */
export const AGENT_PORT_NAME = 'org.openshell.agent';
/** The vsock port the agent dials (libkrun maps it to the host's agent socket). */
export const AGENT_VSOCK_PORT = 10_000;

const SOURCE = new URL('./agent/ovm-agent.c', import.meta.url);

/** The cross compiler (Debian's gcc-<triplet> package) for each guest architecture. */
const CROSS: Readonly<Record<GuestArch, { compiler: string; packages: string }>> = {
  x86_64: { compiler: 'x86_64-linux-gnu-gcc', packages: 'gcc-x86-64-linux-gnu libc6-dev-amd64-cross' },
  aarch64: { compiler: 'aarch64-linux-gnu-gcc', packages: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' },
};

export interface AgentBinary {
  readonly path: string;
  readonly bytes: Buffer;
  readonly sha256: string;
}

/**
 * The guest agent for `arch`: a static binary compiled from src/guest/agent/ovm-agent.c with the
 * host's C compiler (the cross compiler for another architecture), cached by the source's hash.
 * Concurrent builds are safe (each compiles to its own file and renames it into place).
 */
export async function ensureAgent(env: HostEnvironment, arch: GuestArch): Promise<AgentBinary> {
  const source = await fs.readFile(SOURCE);
  const key = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = path.join(env.cacheDir, 'agent', DEB_ARCH[arch], key);
  const binary = path.join(dir, 'ovm-agent');
  if (!(await pathExists(binary))) {
    const compiler = await findCompiler(env, arch);
    await fs.mkdir(dir, { recursive: true });
    const tmp = `${binary}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await runCommand([compiler, '-static', '-Os', '-s', '-Wall', '-o', tmp, SOURCE.pathname], {
        purpose: `compiling the guest agent for ${arch}`,
      });
      await fs.rename(tmp, binary);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  const bytes = await fs.readFile(binary);
  return { path: binary, bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
}

async function findCompiler(env: HostEnvironment, arch: GuestArch): Promise<string> {
  const cross = CROSS[arch];
  const names = hostArch() === arch ? [cross.compiler, 'cc', 'gcc'] : [cross.compiler];
  for (const name of names) {
    const found = await findOnPath(name, env.searchPath);
    if (found) return found;
  }
  throw new HostError(`no C compiler for ${arch} guests: the guest agent (ovm-agent) cannot be built`, {
    hint: `run scripts/provision-host.sh, or: apt-get install ${hostArch() === arch ? 'gcc libc6-dev' : cross.packages}`,
  });
}

/**
 * Puts the agent into a rootfs openshell-vm built (at build time, and again before each boot, so a
 * rootfs built by an older version gets the current agent). Returns whether it was (re)written.
 */
export async function installAgent(root: string, agent: AgentBinary): Promise<boolean> {
  return new GuestRoot(root).writeFileIfChanged(AGENT_GUEST_PATH, agent.bytes, 0o755);
}
