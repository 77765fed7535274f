import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { HostError } from '../errors.ts';
import { type GuestArch, hostArch } from '../host/arch.ts';
import { pathExists } from '../host/fs.ts';
import { findOnPath } from '../host/toolchain.ts';

/**
 * The host tools a kernel build needs, each with the Debian package that provides it (installed
 * by scripts/provision-host.sh), checked before anything is unpacked or compiled.
 */
export interface BuildTool {
  /** An executable looked up on PATH, or a header file (an absolute path) for libraries. */
  readonly name: string;
  readonly package: string;
  readonly why: string;
}

const COMMON_TOOLS: readonly BuildTool[] = [
  { name: 'make', package: 'make', why: "the kernel's build system" },
  { name: 'flex', package: 'flex', why: "kconfig's and dtc's lexers" },
  { name: 'bison', package: 'bison', why: "kconfig's parser" },
  { name: 'bc', package: 'bc', why: 'timeconst.h at build time' },
  { name: 'perl', package: 'perl', why: 'build scripts' },
  { name: 'tar', package: 'tar', why: 'unpacking the source' },
  { name: 'xz', package: 'xz-utils', why: 'the source tarball is .tar.xz' },
  { name: 'nice', package: 'coreutils', why: 'compiling at low priority' },
  { name: '/usr/include/libelf.h', package: 'libelf-dev', why: 'objtool (x86_64)' },
  { name: '/usr/include/openssl/opensslv.h', package: 'libssl-dev', why: 'host tools that sign and hash' },
];

/** The C compiler for a guest architecture on this host: the native gcc, or Debian's cross gcc. */
export function compilerFor(
  arch: GuestArch,
  host: GuestArch | undefined = hostArch(),
): BuildTool & { crossPrefix: string } {
  if (arch === host) return { name: 'gcc', package: 'gcc', why: 'the compiler', crossPrefix: '' };
  return arch === 'aarch64'
    ? {
        name: 'aarch64-linux-gnu-gcc',
        package: 'gcc-aarch64-linux-gnu',
        why: 'the cross compiler',
        crossPrefix: 'aarch64-linux-gnu-',
      }
    : {
        name: 'x86_64-linux-gnu-gcc',
        package: 'gcc-x86-64-linux-gnu',
        why: 'the cross compiler',
        crossPrefix: 'x86_64-linux-gnu-',
      };
}

export interface FoundTools {
  readonly compiler: string;
  readonly crossPrefix: string;
  readonly make: string;
  readonly nice: string;
  readonly tar: string;
}

/** Resolves every build tool, or throws one HostError naming each missing one and its apt package. */
export async function findBuildTools(
  searchPath: string,
  arch: GuestArch,
  host: GuestArch | undefined = hostArch(),
): Promise<FoundTools> {
  const compiler = compilerFor(arch, host);
  const found = new Map<string, string>();
  const missing: BuildTool[] = [];
  for (const tool of [...COMMON_TOOLS, compiler]) {
    const at = path.isAbsolute(tool.name)
      ? (await pathExists(tool.name))
        ? tool.name
        : undefined
      : await findOnPath(tool.name, searchPath);
    if (at) found.set(tool.name, at);
    else missing.push(tool);
  }
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((t) => t.package))];
    throw new HostError(
      `the kernel build needs ${missing.map((t) => `${t.name} (${t.why}; apt package ${t.package})`).join(', ')}`,
      { hint: `apt-get install ${packages.join(' ')} (or run scripts/provision-host.sh)` },
    );
  }
  const get = (name: string) => found.get(name) as string;
  return {
    compiler: get(compiler.name),
    crossPrefix: compiler.crossPrefix,
    make: get('make'),
    nice: get('nice'),
    tar: get('tar'),
  };
}

const execFileAsync = promisify(execFile);

/** The toolchain's identity for the cache key and provenance: the first line of `gcc --version`, and make's. */
export async function toolchainVersion(tools: FoundTools): Promise<{ compiler: string; make: string }> {
  const first = async (bin: string) =>
    (await execFileAsync(bin, ['--version'], { encoding: 'utf8' })).stdout.split('\n')[0]?.trim() ?? '';
  const [compiler, make] = await Promise.all([first(tools.compiler), first(tools.make)]);
  return { compiler, make };
}
