import path from 'node:path';
import { type DoctorCheck, failed, passed } from './doctor-check.ts';

// doctor's libkrun checks, as pure functions of what was found (paths, codesign's verdicts, what
// `openshell-vm runtime --json` read through libkrunfw's ABI): the macOS parts are unit-tested
// with captured command output, never run on a Mac here.

export type LibkrunPlatform = 'darwin' | 'linux';

/** The file name libkrun dlopens libkrunfw by: its ABI 5 soname (install name on macOS). */
export const LIBKRUNFW_DLOPEN_NAME: Readonly<Record<LibkrunPlatform, string>> = {
  darwin: 'libkrunfw.5.dylib',
  linux: 'libkrunfw.so.5',
};

/** The loader path variable the runner is given (src/vmm/libkrun/backend.ts). */
export const LOADER_VARIABLE: Readonly<Record<LibkrunPlatform, string>> = {
  darwin: 'DYLD_LIBRARY_PATH',
  linux: 'LD_LIBRARY_PATH',
};

/** How to get libkrun, per platform (Homebrew core has libkrun on macOS). */
export const LIBKRUN_INSTALL: Readonly<Record<LibkrunPlatform, string>> = {
  darwin: 'brew install libkrun, or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle',
  linux:
    'install libkrun (Fedora: dnf install libkrun; elsewhere build it), or set OPENSHELL_VM_RUNTIME_DIR to a runtime bundle',
};

/** How to get a libkrunfw the gateway can use (every option built in, with its kernel.config). */
export const LIBKRUNFW_BUILD: Readonly<Record<LibkrunPlatform, string>> = {
  darwin:
    "openshell-vm kernel build --target libkrunfw on a Linux host (macOS refuses it today), or the package's bundle (openshell-vm.runtime/)",
  linux: 'openshell-vm kernel build --target libkrunfw',
};

/**
 * The version in a libkrun or libkrunfw file name: "1.17.0" from libkrun.1.17.0.dylib or
 * libkrun.so.1.17.0, "1" from the soname libkrun.so.1; undefined for libkrun.so / libkrun.dylib.
 */
export function libraryVersion(fileName: string, stem: 'libkrun' | 'libkrunfw'): string | undefined {
  return new RegExp(`^${stem}(?:\\.so)?\\.(\\d+(?:\\.\\d+)*)(?:\\.dylib)?$`).exec(fileName)?.[1];
}

/** A library as found: the path the runtime names and the file its links end at. */
export interface FoundLibrary {
  readonly path: string;
  readonly resolved: string;
}

function versionOf(lib: FoundLibrary, stem: 'libkrun' | 'libkrunfw'): string | undefined {
  return libraryVersion(path.basename(lib.resolved), stem) ?? libraryVersion(path.basename(lib.path), stem);
}

function shown(lib: FoundLibrary): string {
  return lib.resolved === lib.path ? lib.path : `${lib.path} -> ${path.basename(lib.resolved)}`;
}

/** libkrun found, and its version from its file names (libkrun has no version call). */
export function libkrunCheck(input: {
  readonly platform: LibkrunPlatform;
  readonly needed: boolean;
  readonly libkrun: FoundLibrary | undefined;
  /** The runtime directory found without it (a libkrunfw-only one), if any. */
  readonly runtimeDir?: string | undefined;
}): DoctorCheck {
  const { libkrun } = input;
  if (!libkrun) {
    const where = input.runtimeDir ? `not in ${input.runtimeDir}` : 'not found (see libkrun runtime)';
    return failed('libkrun', input.needed, where, LIBKRUN_INSTALL[input.platform]);
  }
  const version = versionOf(libkrun, 'libkrun');
  return passed(
    'libkrun',
    `${shown(libkrun)} (libkrun ${version ?? 'of unknown version: its file name carries none'})`,
  );
}

/** What `openshell-vm runtime --json` read of a runtime directory's first libkrunfw. */
export interface LibkrunfwFacts {
  readonly library: FoundLibrary;
  readonly kind: 'custom' | 'stock';
  /** libkrunfw's release as its provenance.json records it (a custom build), if any. */
  readonly provenanceVersion: string | undefined;
  /** krunfw_get_version(). */
  readonly abiVersion: number;
  readonly kernelRelease: string | undefined;
  readonly kernelBytes: number;
}

export const KRUNFW_ABI = 5;

export function libkrunfwCheck(input: {
  readonly platform: LibkrunPlatform;
  readonly needed: boolean;
  /** undefined: none found; an error: found but not readable through its ABI. */
  readonly facts: LibkrunfwFacts | { readonly error: string; readonly hint: string | undefined } | undefined;
}): DoctorCheck {
  const { facts, platform, needed } = input;
  if (!facts) return failed('libkrunfw', needed, 'not found', LIBKRUNFW_BUILD[platform]);
  if ('error' in facts)
    return failed('libkrunfw', needed, facts.error, facts.hint ?? LIBKRUNFW_BUILD[platform]);
  const version = facts.provenanceVersion ?? versionOf(facts.library, 'libkrunfw');
  const kernel = facts.kernelRelease ? `Linux ${facts.kernelRelease}` : 'no Linux version banner';
  const detail = `${shown(facts.library)} (libkrunfw ${version ?? 'of unknown version'}, ${facts.kind}; krunfw_get_version: ABI ${facts.abiVersion}; ${kernel}, ${(facts.kernelBytes / 1e6).toFixed(1)} MB)`;
  if (facts.abiVersion !== KRUNFW_ABI) {
    return failed(
      'libkrunfw',
      needed,
      `${detail}: libkrun 1.17+ loads ABI ${KRUNFW_ABI}`,
      LIBKRUNFW_BUILD[platform],
    );
  }
  return passed('libkrunfw', detail);
}

/** The gateway's kernel options in a libkrunfw: known from its kernel.config (or IKCONFIG), or not. */
export type GatewayOptions =
  | {
      readonly known: true;
      readonly source: string;
      readonly total: number;
      /** Missing, or only modules (a libkrunfw kernel loads none). */
      readonly absent: readonly string[];
    }
  | { readonly known: false; readonly why: string };

/** `kernel check --builtin` against the runtime's kernel.config: the gateway on libkrun needs all. */
export function gatewayOptionsCheck(
  platform: LibkrunPlatform,
  options: GatewayOptions | undefined,
): DoctorCheck {
  const name = 'libkrunfw gateway options';
  const fix = `${LIBKRUNFW_BUILD[platform]} (builds one with every option built in, and its kernel.config)`;
  if (!options) return failed(name, false, 'unknown (no libkrunfw)', fix);
  if (!options.known) return failed(name, false, `unknown (${options.why})`, fix);
  if (!options.absent.length)
    return passed(name, `all ${options.total} built in (kernel check --builtin ${options.source})`);
  const list = `${options.absent.slice(0, 6).join(', ')}${options.absent.length > 6 ? ', ...' : ''}`;
  return failed(
    name,
    false,
    `${options.absent.length} of ${options.total} not built in (${list}; kernel check --builtin ${options.source}): the gateway on libkrun refuses it`,
    fix,
  );
}

/**
 * Where the runner finds libkrunfw: the runtime directory first on the loader path (anything the
 * user set after it), every libkrunfw there preloaded, and the file libkrun dlopens by name. On
 * macOS a runner with the hardened runtime would have dyld ignore DYLD_LIBRARY_PATH.
 */
export function loaderCheck(input: {
  readonly platform: LibkrunPlatform;
  readonly needed: boolean;
  readonly runtimeDir: string | undefined;
  readonly libkrunfwNames: readonly string[];
  /** The loader variable's value in this environment (the runner gets it after the runtime). */
  readonly inherited: string | undefined;
  /** macOS: whether the runner's signature has the hardened runtime (undefined: unknown). */
  readonly runnerHardened?: boolean | undefined;
  readonly runnerPath?: string | undefined;
}): DoctorCheck {
  const name = 'libkrun loader path';
  const variable = LOADER_VARIABLE[input.platform];
  const wanted = LIBKRUNFW_DLOPEN_NAME[input.platform];
  const search =
    'libkrun and libkrunfw are looked for in OPENSHELL_VM_RUNTIME_DIR, openshell-vm.runtime/ beside the package, then the system library directories';
  if (!input.runtimeDir)
    return failed(name, input.needed, `no runtime directory (${search})`, LIBKRUN_INSTALL[input.platform]);
  const value = [input.runtimeDir, input.inherited].filter(Boolean).join(':');
  const how = `the runner gets ${variable}=${value} and preloads ${input.libkrunfwNames.join(', ') || 'nothing'}`;
  const there = input.libkrunfwNames.includes(wanted);
  if (!there && input.platform === 'darwin') {
    return failed(
      name,
      input.needed,
      `${how}; libkrun dlopens ${wanted}, which ${input.runtimeDir} lacks`,
      `put the libkrunfw there as ${wanted} (a libkrunfw.so.5 is a Linux library: macOS needs a .dylib)`,
    );
  }
  if (input.runnerHardened) {
    return failed(
      name,
      input.needed,
      `${how}; but the runner ${input.runnerPath ?? ''} has the hardened runtime, under which dyld ignores ${variable}`,
      `rm ${input.runnerPath ?? 'the runner'} (the next libkrun run signs a copy without it)`,
    );
  }
  // glibc's dlopen returns a loaded library whose soname matches: the preload covers a missing link.
  const found = there ? 'there' : 'not there, the preloaded library answers to its soname';
  return passed(name, `${how}; libkrun dlopens ${wanted}: ${found}`);
}

/** What codesign said of the runner (parsed by src/vmm/libkrun/macos.ts). */
export interface RunnerFacts {
  readonly path: string;
  readonly exists: boolean;
  /** false: codesign could not be run. */
  readonly codesign: boolean;
  readonly signed: boolean;
  readonly granted: boolean;
  readonly entitlement: string;
  /** The codesign command that signs it by hand. */
  readonly signCommand: string;
}

/** macOS: the libkrun runner (an ad-hoc-signed copy of this Node.js) carries the entitlement. */
export function runnerCheck(facts: RunnerFacts, needed: boolean): DoctorCheck {
  const name = 'libkrun runner entitlement';
  if (!facts.codesign)
    return failed(name, needed, 'codesign cannot be run (it signs the runner)', 'xcode-select --install');
  if (!facts.exists) {
    return failed(
      name,
      false,
      `${facts.path} not made yet: the first libkrun run copies this Node.js there and signs it with ${facts.entitlement}`,
      `openshell-vm run --backend libkrun -- true (or by hand: ${facts.signCommand})`,
    );
  }
  if (!facts.signed) return failed(name, needed, `${facts.path} is not signed`, facts.signCommand);
  if (!facts.granted)
    return failed(name, needed, `${facts.path} is signed without ${facts.entitlement}`, facts.signCommand);
  return passed(name, `${facts.path} carries ${facts.entitlement} (codesign -d --entitlements -)`);
}
