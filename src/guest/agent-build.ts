import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as v from 'valibot';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError, isErrno } from '../errors.ts';
import { DEB_ARCH, type GuestArch, hostArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { provisionCommand } from '../host/provision.ts';
import { findOnPath } from '../host/toolchain.ts';
import { runCommand } from '../supervisor/command.ts';
import { AGENT_GUEST_PATH } from './paths.ts';

export { AGENT_GUEST_PATH, AGENT_PORT_NAME, AGENT_VSOCK_PORT } from './paths.ts';

/**
 * The directory of the agent's source, and in the built package (dist/guest/agent/) of the
 * prebuilt agents and their manifest too. A checkout's src/guest/agent/ has no manifest.
 */
const AGENT_DIR = fileURLToPath(new URL('./agent/', import.meta.url));
const SOURCE_NAME = 'ovm-agent.c';
/** The prebuilt agents' manifest (scripts/build.ts writes it): see PrebuiltAgents. */
export const PREBUILT_MANIFEST_NAME = 'agents.json';

/** The file name of the prebuilt agent for `arch` in the package. */
export function prebuiltAgentName(arch: GuestArch): string {
  return `ovm-agent-${arch}`;
}

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

const sha256Hex = v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/));

/**
 * The prebuilt agents' manifest: the sha256 of the source they were compiled from and, for each
 * guest architecture, the binary's file name and sha256 (and the compiler, for the record).
 */
const prebuiltAgentEntry = (arch: GuestArch) =>
  v.strictObject({
    file: v.literal(prebuiltAgentName(arch)),
    sha256: sha256Hex,
    compiler: v.pipe(v.string(), v.maxLength(256)),
  });
const prebuiltAgentsManifest = v.strictObject({
  sourceSha256: sha256Hex,
  agents: v.strictObject({ x86_64: prebuiltAgentEntry('x86_64'), aarch64: prebuiltAgentEntry('aarch64') }),
});
export type PrebuiltAgents = v.InferOutput<typeof prebuiltAgentsManifest>;

/** The manifest's schema: parse() gives the manifest or throws (a valibot ValiError) saying what is wrong. */
export const prebuiltAgentsSchema = {
  parse: (json: unknown): PrebuiltAgents => v.parse(prebuiltAgentsManifest, json),
} as const;

export interface EnsureAgentOptions {
  /** Where the agent's source (ovm-agent.c) and any prebuilt agents are (default: beside this module). */
  readonly agentDir?: string;
}

/**
 * The guest agent for `arch`: in the package, the prebuilt static binary (dist/guest/agent/),
 * used when its manifest was written for this very source and the binary's sha256 matches it (a
 * binary that does not is an error: the package is damaged). Otherwise (a checkout, or a
 * manifest from another source) it is compiled from ovm-agent.c with the host's C compiler (the
 * cross compiler for another architecture), cached by the source's hash. Concurrent builds are
 * safe (each compiles to its own file and renames it into place).
 */
export async function ensureAgent(
  env: HostEnvironment,
  arch: GuestArch,
  options: EnsureAgentOptions = {},
): Promise<AgentBinary> {
  const agentDir = options.agentDir ?? AGENT_DIR;
  const sourcePath = path.join(agentDir, SOURCE_NAME);
  const source = await fs.readFile(sourcePath);
  const sourceSha256 = sha256(source);
  const prebuilt = await prebuiltAgent(agentDir, arch, sourceSha256);
  if (prebuilt) return prebuilt;

  const dir = path.join(env.cacheDir, 'agent', DEB_ARCH[arch], sourceSha256.slice(0, 16));
  const binary = path.join(dir, 'ovm-agent');
  if (!(await pathExists(binary))) {
    // 0700 on every level it creates (the cache too, whatever the umask): what is in it is run.
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await compileAgent(env, arch, sourcePath, binary);
  }
  const bytes = await fs.readFile(binary);
  return { path: binary, bytes, sha256: sha256(bytes) };
}

/**
 * The package's prebuilt agent for `arch`, or undefined when there is none for this source (no
 * manifest: a checkout; a manifest for another source: a stale build, whose agent must not be used).
 */
async function prebuiltAgent(
  agentDir: string,
  arch: GuestArch,
  sourceSha256: string,
): Promise<AgentBinary | undefined> {
  const manifestPath = path.join(agentDir, PREBUILT_MANIFEST_NAME);
  let raw: string;
  try {
    raw = await fs.readFile(manifestPath, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  const damaged = (what: string, cause?: unknown) =>
    new HostError(`the packaged guest agent is damaged: ${what}`, {
      hint: 'reinstall openshell-vm (npm install openshell-vm); its files were changed after it was built',
      cause,
    });
  let manifest: PrebuiltAgents;
  try {
    manifest = prebuiltAgentsSchema.parse(JSON.parse(raw));
  } catch (err) {
    throw damaged(`${manifestPath} is not a valid agent manifest`, err);
  }
  if (manifest.sourceSha256 !== sourceSha256) return undefined;
  const entry = manifest.agents[arch];
  const file = path.join(agentDir, entry.file);
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    throw damaged(`${file} (listed in ${manifestPath}) cannot be read`, err);
  }
  const actual = sha256(bytes);
  if (actual !== entry.sha256) {
    throw damaged(`${file} has sha256 ${actual}, but ${manifestPath} records ${entry.sha256}`);
  }
  return { path: file, bytes, sha256: actual };
}

/**
 * Compiles the agent for every guest architecture into `agentDir` (which holds ovm-agent.c: the
 * package's dist/guest/agent/) and writes their manifest last, so an interrupted build leaves no
 * manifest and the package compiles on the host as a checkout does. For scripts/build.ts.
 */
export async function buildPrebuiltAgents(env: HostEnvironment, agentDir: string): Promise<PrebuiltAgents> {
  const sourcePath = path.join(agentDir, SOURCE_NAME);
  const sourceSha256 = sha256(await fs.readFile(sourcePath));
  const entry = async (arch: GuestArch) => {
    const file = prebuiltAgentName(arch);
    const compiler = await compileAgent(env, arch, sourcePath, path.join(agentDir, file));
    return {
      file,
      sha256: sha256(await fs.readFile(path.join(agentDir, file))),
      compiler: path.basename(compiler),
    };
  };
  const manifest = prebuiltAgentsSchema.parse({
    sourceSha256,
    agents: { x86_64: await entry('x86_64'), aarch64: await entry('aarch64') },
  });
  await fs.writeFile(path.join(agentDir, PREBUILT_MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

/**
 * Compiles the agent's source for `arch` into `out` (a static, stripped binary), atomically: the
 * compiler writes a temporary sibling that is renamed into place. Returns the compiler used.
 */
export async function compileAgent(
  env: HostEnvironment,
  arch: GuestArch,
  sourcePath: string,
  out: string,
): Promise<string> {
  const compiler = await findCompiler(env, arch);
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await runCommand([compiler, '-static', '-Os', '-s', '-Wall', '-o', tmp, sourcePath], {
      purpose: `compiling the guest agent for ${arch}`,
    });
    const machine = elfMachine(await fs.readFile(tmp));
    if (machine !== ELF_MACHINE[arch]) {
      throw new HostError(
        `${compiler} did not build an ${arch} program (ELF machine ${machine ?? 'none: not a 64-bit ELF file'}, expected ${ELF_MACHINE[arch]})`,
        { hint: `install the compiler for ${arch} guests: apt-get install ${CROSS[arch].packages}` },
      );
    }
    await fs.rename(tmp, out);
  } finally {
    await fs.rm(tmp, { force: true });
  }
  return compiler;
}

async function findCompiler(env: HostEnvironment, arch: GuestArch): Promise<string> {
  const cross = CROSS[arch];
  const names = hostArch() === arch ? [cross.compiler, 'cc', 'gcc'] : [cross.compiler];
  for (const name of names) {
    const found = await findOnPath(name, env.searchPath);
    if (found) return found;
  }
  throw new HostError(`no C compiler for ${arch} guests: the guest agent (ovm-agent) cannot be built`, {
    hint: `run ${provisionCommand()}, or: apt-get install ${hostArch() === arch ? 'gcc libc6-dev' : cross.packages}`,
  });
}

/** ELF e_machine of each guest architecture. */
const ELF_MACHINE: Readonly<Record<GuestArch, number>> = { x86_64: 62, aarch64: 183 };

/** The e_machine field of a little-endian 64-bit ELF file, or undefined when `bytes` is not one. */
export function elfMachine(bytes: Uint8Array): number | undefined {
  const elf =
    bytes.length >= 20 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
  if (!elf || bytes[4] !== 2 || bytes[5] !== 1) return undefined;
  return (bytes[18] as number) | ((bytes[19] as number) << 8);
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Puts the agent into a rootfs openshell-vm built (at build time, and again before each boot, so a
 * rootfs built by an older version gets the current agent). Returns whether it was (re)written.
 */
export async function installAgent(root: string, agent: AgentBinary): Promise<boolean> {
  return new GuestRoot(root).writeFileIfChanged(AGENT_GUEST_PATH, agent.bytes, 0o755);
}
