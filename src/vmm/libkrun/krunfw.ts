import path from 'node:path';
import koffi from 'koffi';
import { HostError } from '../../errors.ts';
import { extractIkconfig, findKernelBanner, type KernelBanner } from '../../kernel/libkrunfw-image.ts';
import {
  checkKernelConfig,
  type KernelCheck,
  parseKernelConfig,
  readFragment,
  readKernelConfigFile,
} from '../../kernel/requirements.ts';
import { KERNEL_CONFIG_FILE, type RuntimeDir } from './runtime.ts';

/**
 * libkrunfw's ABI (the one libkrun reads the guest kernel through; ABI version 5):
 *   char *krunfw_get_kernel(size_t *load_addr, size_t *entry_addr, size_t *size)
 *   int krunfw_get_version(void)
 * Loaded here only to say what a libkrunfw carries: its ABI version, the kernel's addresses and
 * size, its `Linux version` banner and, when built with CONFIG_IKCONFIG, its configuration.
 */
export interface KrunfwFacts {
  readonly library: string;
  readonly abiVersion: number;
  readonly loadAddr: number;
  readonly entryAddr: number;
  /** The embedded kernel's size in bytes (what krunfw_get_kernel reports). */
  readonly kernelBytes: number;
  /** Undefined when the bytes carry no Linux banner. */
  readonly kernel: KernelBanner | undefined;
  /** The .config embedded by CONFIG_IKCONFIG, undefined without it. */
  readonly ikconfig: string | undefined;
}

/** The ABI version openshell-vm's libkrun (1.17 and later) loads. */
export const KRUNFW_ABI_VERSION = 5;

/**
 * Loads `library` and reads its kernel through the ABI. A file that is not a loadable library,
 * or one without the two functions, is a HostError naming it; the library is unloaded again.
 */
export function readKrunfw(library: string): KrunfwFacts {
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(library);
  } catch (err) {
    throw new HostError(`cannot load ${library}`, {
      hint: 'it is damaged or for another platform: reinstall or rebuild libkrunfw',
      cause: err,
    });
  }
  try {
    const fn = (signature: string, name: string) => {
      try {
        return lib.func(signature);
      } catch (err) {
        throw new HostError(`${library} has no function ${name}: it is not a libkrunfw`, {
          hint: 'use a libkrunfw of ABI version 5 (libkrunfw 4.0 or later), or build one: openshell-vm kernel build --target libkrunfw',
          cause: err,
        });
      }
    };
    const getVersion = fn('int krunfw_get_version(void)', 'krunfw_get_version');
    const getKernel = fn(
      'void *krunfw_get_kernel(_Out_ size_t *load_addr, _Out_ size_t *entry_addr, _Out_ size_t *size)',
      'krunfw_get_kernel',
    );
    const abiVersion = Number(getVersion());
    const load: [number] = [0];
    const entry: [number] = [0];
    const size: [number] = [0];
    const ptr = getKernel(load, entry, size);
    const kernelBytes = Number(size[0]);
    if (!ptr || kernelBytes <= 0) {
      throw new HostError(`${library}: krunfw_get_kernel returned no kernel (size ${kernelBytes})`, {
        hint: 'the library is damaged: reinstall or rebuild libkrunfw',
      });
    }
    // A view of the library's own memory: read it before the library is unloaded.
    const image = new Uint8Array(koffi.view(ptr, kernelBytes));
    return {
      library,
      abiVersion,
      loadAddr: Number(load[0]),
      entryAddr: Number(entry[0]),
      kernelBytes,
      kernel: findKernelBanner(image),
      ikconfig: extractIkconfig(image),
    };
  } finally {
    lib.unload();
  }
}

/** What is known of a libkrunfw kernel's configuration, and from where. */
export type KernelOptions =
  | { readonly known: true; readonly source: string; readonly check: KernelCheck }
  | { readonly known: false; readonly why: string };

export interface LibkrunfwReport {
  readonly facts: Omit<KrunfwFacts, 'ikconfig'>;
  readonly options: KernelOptions;
}

/** The fix for a libkrunfw the gateway cannot use. */
export const LIBKRUNFW_BUILD_FIX = 'openshell-vm kernel build --target libkrunfw';

/**
 * The first libkrunfw of a runtime directory, loaded through the ABI, and its kernel options:
 * from kernel.config beside it, else from the kernel's own IKCONFIG, else unknown; when known,
 * checked against the gateway's fragment with built-in options only (a libkrunfw kernel cannot
 * load modules).
 */
export async function inspectLibkrunfw(dir: RuntimeDir): Promise<LibkrunfwReport> {
  const { ikconfig, ...facts } = readKrunfw(dir.libkrunfw[0] as string);
  const requirements = await readFragment();
  let options: KernelOptions;
  if (dir.kernelConfig) {
    const text = await readKernelConfigFile(dir.kernelConfig);
    options = {
      known: true,
      source: dir.kernelConfig,
      check: checkKernelConfig(requirements, parseKernelConfig(text), dir.kernelConfig, true),
    };
  } else if (ikconfig) {
    const source = `${facts.library} (IKCONFIG)`;
    options = {
      known: true,
      source,
      check: checkKernelConfig(requirements, parseKernelConfig(ikconfig), source, true),
    };
  } else {
    options = {
      known: false,
      why: `no ${KERNEL_CONFIG_FILE} beside ${path.basename(facts.library)} and no CONFIG_IKCONFIG in its kernel`,
    };
  }
  return { facts, options };
}

/** The report's lines for `openshell-vm runtime`. */
export function describeLibkrunfw(r: LibkrunfwReport): string[] {
  const f = r.facts;
  const lines = [
    `libkrunfw-abi: ${f.abiVersion}${f.abiVersion === KRUNFW_ABI_VERSION ? '' : ` (openshell-vm's libkrun expects ${KRUNFW_ABI_VERSION})`}`,
    `kernel: ${f.kernel ? `Linux ${f.kernel.release}` : 'no Linux version banner found'}, ${(f.kernelBytes / 1e6).toFixed(1)} MB (${f.kernelBytes} bytes, load 0x${f.loadAddr.toString(16)}, entry 0x${f.entryAddr.toString(16)})`,
  ];
  if (f.kernel) lines.push(`kernel-banner: ${f.kernel.banner}`);
  if (!r.options.known) {
    lines.push(`kernel-options: unknown (${r.options.why})`);
  } else {
    const c = r.options.check;
    lines.push(
      `kernel-options: ${r.options.source}`,
      `gateway-options: ${c.ok ? `all ${c.results.length} built in` : `${c.missing.length + c.modules.length} of ${c.results.length} not built in`}`,
    );
  }
  const refusal = gatewayRefusal(r);
  lines.push(
    `gateway: ${refusal ? `cannot run on it (${refusal.message}; fix: ${refusal.hint})` : 'its kernel has every option the gateway needs'}`,
  );
  return lines;
}

/**
 * Why the gateway cannot run on this libkrunfw, or undefined: its kernel options are unknown
 * (it cannot be checked, and a stock libkrunfw lacks most of them), or some are not built in.
 */
export function gatewayRefusal(r: LibkrunfwReport): HostError | undefined {
  const name = path.basename(r.facts.library);
  if (!r.options.known) {
    return new HostError(`libkrunfw ${name}: kernel options unknown (${r.options.why})`, {
      hint: `${LIBKRUNFW_BUILD_FIX} builds a libkrunfw with the gateway's options built in, and its kernel.config`,
    });
  }
  const c = r.options.check;
  if (c.ok) return undefined;
  const absent = [...c.missing, ...c.modules];
  return new HostError(
    `libkrunfw ${name}: its kernel lacks ${absent.length} option(s) the gateway needs built in: ${absent.slice(0, 8).join(', ')}${absent.length > 8 ? ', ...' : ''}`,
    { hint: `${LIBKRUNFW_BUILD_FIX} (see: openshell-vm kernel check --builtin ${r.options.source})` },
  );
}

/**
 * Why the gateway cannot run on a runtime directory's libkrunfw, or undefined when its kernel has
 * every option built in: gatewayRefusal of its report, or, when the library cannot be read
 * through the ABI at all, that (the check before anything starts for the gateway on libkrun).
 */
export async function libkrunfwGatewayRefusal(dir: RuntimeDir): Promise<HostError | undefined> {
  let report: LibkrunfwReport;
  try {
    report = await inspectLibkrunfw(dir);
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    return new HostError(`its libkrunfw cannot be read: ${err.message}`, {
      hint: `${LIBKRUNFW_BUILD_FIX} builds one the gateway can use`,
      cause: err,
    });
  }
  return gatewayRefusal(report);
}
