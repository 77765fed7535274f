import os from 'node:os';
import koffi from 'koffi';
import { HostError } from '../../errors.ts';
import { type KrunCall, macBytes } from './plan.ts';

/** libkrun's C API as openshell-vm uses it (libkrun.h); all return int32_t, negative = -errno. */
const SIGNATURES = {
  krun_init_log: 'int32_t krun_init_log(int target_fd, uint32_t level, uint32_t style, uint32_t options)',
  krun_create_ctx: 'int32_t krun_create_ctx()',
  krun_free_ctx: 'int32_t krun_free_ctx(uint32_t ctx_id)',
  krun_set_vm_config: 'int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib)',
  krun_set_root: 'int32_t krun_set_root(uint32_t ctx_id, const char *root_path)',
  krun_set_workdir: 'int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path)',
  krun_set_exec:
    'int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char **argv, const char **envp)',
  krun_set_port_map: 'int32_t krun_set_port_map(uint32_t ctx_id, const char **port_map)',
  krun_set_console_output: 'int32_t krun_set_console_output(uint32_t ctx_id, const char *filepath)',
  krun_add_vsock_port2:
    'int32_t krun_add_vsock_port2(uint32_t ctx_id, uint32_t port, const char *c_filepath, bool listen)',
  krun_disable_implicit_vsock: 'int32_t krun_disable_implicit_vsock(uint32_t ctx_id)',
  krun_add_vsock: 'int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features)',
  krun_add_net_unixstream:
    'int32_t krun_add_net_unixstream(uint32_t ctx_id, const char *c_path, int fd, const uint8_t *c_mac, uint32_t features, uint32_t flags)',
  krun_start_enter: 'int32_t krun_start_enter(uint32_t ctx_id)',
} as const;

/** Symbols used when present (newer libkrun), never required. */
const OPTIONAL_SIGNATURES = {
  krun_add_disk3:
    'int32_t krun_add_disk3(uint32_t ctx_id, const char *block_id, const char *disk_path, uint32_t disk_format, bool read_only, bool direct_io, uint32_t sync_mode)',
  krun_get_shutdown_eventfd: 'int32_t krun_get_shutdown_eventfd(uint32_t ctx_id)',
} as const;

export type KrunSymbol = keyof typeof SIGNATURES;
export type OptionalKrunSymbol = keyof typeof OPTIONAL_SIGNATURES;
export const REQUIRED_SYMBOLS = Object.keys(SIGNATURES) as KrunSymbol[];

// biome-ignore lint/suspicious/noExplicitAny: koffi functions take the C arguments as declared above.
type KoffiFn = (...args: any[]) => number;

/** A negative return from libkrun: the function and the errno it reported. */
export class KrunError extends HostError {
  readonly fn: string;
  readonly code: number;
  constructor(fn: string, code: number) {
    const name = Object.entries(os.constants.errno).find(([, n]) => n === -code)?.[0];
    super(`${fn} failed: ${code}${name ? ` (${name})` : ''}`, {
      hint: "libkrun's own messages are in libkrun.log in the run's directory (`openshell-vm logs NAME --source vmm`); OPENSHELL_VM_KRUN_LOG_LEVEL=4 makes libkrun say more there",
    });
    this.fn = fn;
    this.code = code;
  }
}

export interface LibkrunLibrary {
  readonly path: string;
  readonly optional: ReadonlySet<OptionalKrunSymbol>;
  call(fn: KrunSymbol, ...args: unknown[]): number;
}

/**
 * Loads libkrunfw (every file, with global symbol visibility, as libkrun expects to find it) and
 * libkrun, and binds the API. A missing required symbol is an error naming it and the library.
 */
export function loadLibkrun(libkrunPath: string, libkrunfw: readonly string[]): LibkrunLibrary {
  for (const fw of libkrunfw) {
    try {
      koffi.load(fw, { global: true });
    } catch (err) {
      throw new HostError(`cannot load ${fw}`, {
        hint: 'the runtime bundle is damaged or for another platform',
        cause: err,
      });
    }
  }
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(libkrunPath);
  } catch (err) {
    throw new HostError(`cannot load ${libkrunPath}`, {
      hint: 'the runtime bundle is damaged or for another platform',
      cause: err,
    });
  }
  const fns = new Map<string, KoffiFn>();
  for (const [name, signature] of Object.entries(SIGNATURES)) {
    try {
      fns.set(name, lib.func(signature) as KoffiFn);
    } catch (err) {
      throw new HostError(`${libkrunPath} has no symbol ${name}`, {
        hint: 'this libkrun is too old: openshell-vm needs libkrun 1.17 or later',
        cause: err,
      });
    }
  }
  const optional = new Set<OptionalKrunSymbol>();
  for (const [name, signature] of Object.entries(OPTIONAL_SIGNATURES)) {
    try {
      fns.set(name, lib.func(signature) as KoffiFn);
      optional.add(name as OptionalKrunSymbol);
    } catch {
      // absent in this libkrun: the feature is off
    }
  }
  return {
    path: libkrunPath,
    optional,
    call(fn, ...args) {
      const ret = (fns.get(fn) as KoffiFn)(...args);
      if (ret < 0) throw new KrunError(fn, ret);
      return ret;
    },
  };
}

/**
 * Replays a planned call sequence. Returns only if krun_start_enter returns, which is a failure;
 * when a call fails after the context exists, the context is freed before the error propagates.
 */
export function replay(lib: LibkrunLibrary, calls: readonly KrunCall[]): never {
  let ctx = -1;
  try {
    replayCalls(lib, calls, (id) => {
      ctx = id;
    });
  } catch (err) {
    if (ctx >= 0) {
      try {
        lib.call('krun_free_ctx', ctx);
      } catch {
        // the original error matters more
      }
    }
    throw err;
  }
  throw new HostError('krun_start_enter returned without starting the VM');
}

function replayCalls(lib: LibkrunLibrary, calls: readonly KrunCall[], onCtx: (id: number) => void): void {
  let ctx = -1;
  for (const call of calls) {
    const args = call.args.map((a) => (a === 'ctx' ? ctx : a));
    switch (call.fn) {
      case 'krun_create_ctx':
        ctx = lib.call(call.fn);
        onCtx(ctx);
        break;
      case 'krun_set_exec':
        lib.call(call.fn, ctx, call.args[1], [...call.args[2], null], [...call.args[3], null]);
        break;
      case 'krun_set_port_map':
        lib.call(call.fn, ctx, [...call.args[1], null]);
        break;
      case 'krun_add_net_unixstream':
        lib.call(
          call.fn,
          ctx,
          call.args[1],
          call.args[2],
          macBytes(call.args[3]),
          call.args[4],
          call.args[5],
        );
        break;
      default:
        lib.call(call.fn, ...args);
    }
  }
}
