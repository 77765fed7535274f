/**
 * libkrun's configuration as plain data, and the exact sequence of libkrun C calls that realises
 * it. Pure: the runner (runner.ts) replays the sequence through the FFI bindings, and the contract
 * tests compare it with what a libkrun test double recorded.
 */

/** libkrun.h: COMPAT_NET_FEATURES = CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_UFO | HOST_TSO4 | HOST_UFO. */
export const COMPAT_NET_FEATURES = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 10) | (1 << 11) | (1 << 14);
export const KRUN_LOG_TARGET_DEFAULT = -1;
export const KRUN_LOG_STYLE_AUTO = 0;
/** libkrun's log level (0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace): errors by default. */
export const KRUN_LOG_LEVEL_DEFAULT = 1;
export const KRUN_LOG_LEVEL_MAX = 5;
/** Ignore libkrun's own environment variables for logging. */
export const KRUN_LOG_OPTION_NO_ENV = 1;

export type LibkrunNet =
  /**
   * gvproxy, through the frame filter (src/net/frame-relay.ts): a unix stream socket with QEMU's
   * framing, on Linux and macOS (libkrun's unixstream backend is built on both). Never libkrun's
   * unixgram (vfkit) transport: Node cannot relay datagrams, so nothing on the host could filter it.
   */
  | {
      readonly mode: 'gvproxy';
      readonly socketPath: string;
      readonly mac: string;
    }
  /**
   * TSI (libkrun's transparent socket impersonation): no NIC, guest sockets proxied by the VMM.
   * It intercepts the guest's loopback connections, which breaks k3s.
   */
  | { readonly mode: 'tsi'; readonly portMap: readonly string[] }
  | { readonly mode: 'none' };

export interface LibkrunConfig {
  /** 0 off ... 5 trace (clamped). */
  readonly logLevel: number;
  readonly vcpus: number;
  readonly memMib: number;
  readonly rootDir: string;
  readonly workdir: string;
  readonly exec: { readonly path: string; readonly args: readonly string[]; readonly env: readonly string[] };
  readonly net: LibkrunNet;
  readonly vsockPorts: readonly {
    readonly port: number;
    readonly socketPath: string;
    readonly listen: boolean;
  }[];
  /**
   * The guest console (the kernel's, the init's and the workload's output) to a file: the console
   * log. Unset, libkrun would give the workload the runner's own stdin/stdout/stderr.
   */
  readonly consoleOutput?: string | undefined;
}

/** One libkrun call; `ctx` stands for the id krun_create_ctx returned. */
export type KrunCall =
  | { readonly fn: 'krun_init_log'; readonly args: readonly [number, number, number, number] }
  | { readonly fn: 'krun_create_ctx'; readonly args: readonly [] }
  | { readonly fn: 'krun_set_vm_config'; readonly args: readonly ['ctx', number, number] }
  | {
      readonly fn: 'krun_set_root' | 'krun_set_workdir' | 'krun_set_console_output';
      readonly args: readonly ['ctx', string];
    }
  | { readonly fn: 'krun_disable_implicit_vsock' | 'krun_start_enter'; readonly args: readonly ['ctx'] }
  | { readonly fn: 'krun_add_vsock'; readonly args: readonly ['ctx', number] }
  | {
      readonly fn: 'krun_add_net_unixstream';
      readonly args: readonly ['ctx', string, number, string, number, number];
    }
  | { readonly fn: 'krun_set_port_map'; readonly args: readonly ['ctx', readonly string[]] }
  | { readonly fn: 'krun_add_vsock_port2'; readonly args: readonly ['ctx', number, string, boolean] }
  | {
      readonly fn: 'krun_set_exec';
      readonly args: readonly ['ctx', string, readonly string[], readonly string[]];
    };

export function krunCalls(config: LibkrunConfig): KrunCall[] {
  const calls: KrunCall[] = [
    {
      fn: 'krun_init_log',
      args: [
        KRUN_LOG_TARGET_DEFAULT,
        Math.max(0, Math.min(5, config.logLevel)),
        KRUN_LOG_STYLE_AUTO,
        KRUN_LOG_OPTION_NO_ENV,
      ],
    },
    { fn: 'krun_create_ctx', args: [] },
    { fn: 'krun_set_vm_config', args: ['ctx', config.vcpus, config.memMib] },
    { fn: 'krun_set_root', args: ['ctx', config.rootDir] },
    { fn: 'krun_set_workdir', args: ['ctx', config.workdir] },
  ];
  const net = config.net;
  if (net.mode === 'gvproxy' || net.mode === 'none') {
    // An explicit vsock device without TSI: the NIC (if any) carries the network.
    calls.push(
      { fn: 'krun_disable_implicit_vsock', args: ['ctx'] },
      { fn: 'krun_add_vsock', args: ['ctx', 0] },
    );
  }
  if (net.mode === 'gvproxy') {
    calls.push({
      fn: 'krun_add_net_unixstream',
      args: ['ctx', net.socketPath, -1, net.mac, COMPAT_NET_FEATURES, 0],
    });
  }
  if (net.mode === 'tsi' && net.portMap.length)
    calls.push({ fn: 'krun_set_port_map', args: ['ctx', net.portMap] });
  for (const v of config.vsockPorts)
    calls.push({ fn: 'krun_add_vsock_port2', args: ['ctx', v.port, v.socketPath, v.listen] });
  if (config.consoleOutput)
    calls.push({ fn: 'krun_set_console_output', args: ['ctx', config.consoleOutput] });
  calls.push(
    { fn: 'krun_set_exec', args: ['ctx', config.exec.path, config.exec.args, config.exec.env] },
    { fn: 'krun_start_enter', args: ['ctx'] },
  );
  return calls;
}

/** "5a:94:ef:e4:0c:ee" → its 6 bytes. */
export function macBytes(mac: string): Uint8Array {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p)))
    throw new Error(`invalid MAC address '${mac}'`);
  return Uint8Array.from(parts.map((p) => Number.parseInt(p, 16)));
}
