import { isIP } from 'node:net';
import { type Accelerator, parseAccelerator } from '../accel/probe.ts';
import { UsageError } from '../errors.ts';
import { defaultGuestArch, type GuestArch, parseGuestArch } from '../host/arch.ts';
import { parseInstanceName } from '../instance/runs.ts';
import { type KernelChoice, parseKernelChoice } from '../kernel/selection.ts';
import { checkDuplicates, type PortForward } from '../net/ports.ts';
import { GATEWAY_GUEST_PORT, KUBE_API_GUEST_PORT } from '../presets/gateway.ts';
import { type BackendName, parseBackend } from '../vmm/select.ts';
import {
  ANY_HOST_PORT,
  CLI_NAMES,
  type HostCapacity,
  integer,
  type OptionNames,
  type PortForwardInput,
  parseForwards,
  parseRootfsOption,
  resolveMachine,
} from './exec-options.ts';
import { parseCount } from './units.ts';

/** Gateway options as typed (strings), before validation. */
export interface RawGatewayOptions {
  readonly name?: string | undefined;
  readonly rootfs?: string | undefined;
  /** The guest kernel (QEMU): `auto`, `debian`, `built` or a path. */
  readonly kernel?: string | undefined;
  readonly ports?: readonly (string | PortForwardInput)[] | undefined;
  readonly apiPort?: string | number | undefined;
  readonly vcpus?: string | number | undefined;
  /** MiB, or a size with a binary unit (`8GiB`). */
  readonly mem?: string | number | undefined;
  readonly arch?: string | undefined;
  readonly accel?: string | undefined;
  readonly backend?: string | undefined;
  readonly net?: string | undefined;
  /** Seconds (CLI). */
  readonly readyTimeout?: string | undefined;
  /** Milliseconds (library); wins over readyTimeout. */
  readonly readyTimeoutMs?: number | undefined;
  readonly tlsSans?: readonly string[] | undefined;
  readonly mergeKubeconfig?: boolean | undefined;
  readonly useContext?: boolean | undefined;
  /** Save the VM's state at the first Ready and restore it on later starts (default false). */
  readonly snapshot?: boolean | undefined;
}

export interface GatewayOptions {
  readonly instance: string;
  /** undefined: the instance's own rootfs. */
  readonly rootfs: string | undefined;
  /** The guest kernel (QEMU); undefined: OPENSHELL_VM_KERNEL, else auto. */
  readonly kernel: KernelChoice | undefined;
  readonly gateway: PortForward;
  /** undefined: the port this instance used last time while it is free, else a new free loopback port (stableApiPort). */
  readonly apiPort: number | undefined;
  readonly extraForwards: readonly PortForward[];
  readonly vcpus: number;
  readonly memMib: number;
  readonly arch: GuestArch;
  readonly accel: Accelerator | undefined;
  readonly backend: BackendName | undefined;
  readonly readyTimeoutMs: number;
  readonly extraSans: readonly string[];
  readonly mergeKubeconfig: boolean;
  readonly useContext: boolean;
  readonly snapshot: boolean;
}

/** The seed's gateway machine (4 vCPUs, 8 GiB), clamped to the host. */
export const GATEWAY_DEFAULTS = { vcpus: 4, memMib: 8192, readyTimeoutS: 600, instance: 'default' } as const;

const SAN =
  /^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/;

/**
 * Validates the gateway's options. -p forwards whose guest port is 30051 define the gateway's
 * endpoint (host port); without one, 127.0.0.1:30051 is used. Other -p forwards are added.
 */
export function resolveGatewayOptions(
  raw: RawGatewayOptions,
  host: HostCapacity,
  names: OptionNames = CLI_NAMES,
): { readonly options: GatewayOptions; readonly warnings: readonly string[] } {
  const warnings: string[] = [];
  const instance = parseInstanceName(raw.name);
  if (raw.net !== undefined && raw.net !== 'gvproxy') {
    throw new UsageError(`${names.net} ${raw.net}: the gateway runs on the gvproxy network only`, {
      hint: `drop ${names.net}: the gateway's port forwards, DNS and DHCP come from gvproxy`,
    });
  }
  const forwards = parseForwards(raw.ports ?? [], names.ports);
  const gateways = forwards.filter((f) => f.guestPort === GATEWAY_GUEST_PORT);
  if (gateways.length > 1) {
    throw new UsageError(
      `${names.ports}: guest port ${GATEWAY_GUEST_PORT} (the gateway) is forwarded more than once`,
      {
        hint:
          names.ports === CLI_NAMES.ports
            ? `give one -p HOST:${GATEWAY_GUEST_PORT}`
            : `give one forward of guest port ${GATEWAY_GUEST_PORT}`,
      },
    );
  }
  if (forwards.some((f) => f.guestPort === KUBE_API_GUEST_PORT)) {
    throw new UsageError(
      `${names.ports}: guest port ${KUBE_API_GUEST_PORT} is the Kubernetes API, forwarded by ${names.apiPort}`,
      {
        hint: `use ${names.apiPort} HOST_PORT (default: a free loopback port)`,
      },
    );
  }
  const gateway = gateways[0] ?? {
    hostAddress: '127.0.0.1',
    hostPort: GATEWAY_GUEST_PORT,
    guestPort: GATEWAY_GUEST_PORT,
  };
  const extraForwards = forwards.filter((f) => f !== gateway);
  const apiPort =
    raw.apiPort === undefined
      ? undefined
      : parseCount(names.apiPort, raw.apiPort, { min: 1, max: 65535 }, 'port');
  checkDuplicates(
    [
      gateway,
      ...extraForwards,
      ...(apiPort ? [{ hostAddress: '127.0.0.1', hostPort: apiPort, guestPort: KUBE_API_GUEST_PORT }] : []),
    ].filter((f) => f.hostPort !== ANY_HOST_PORT),
  );
  const { vcpus, memMib } = resolveMachine(raw, host, GATEWAY_DEFAULTS, warnings, names);
  const readyTimeoutMs =
    raw.readyTimeoutMs !== undefined
      ? parseCount(names.readyTimeout, raw.readyTimeoutMs, { min: 1000, max: 86_400_000 }, 'milliseconds')
      : raw.readyTimeout !== undefined
        ? integer(names.readyTimeout, raw.readyTimeout, { min: 1, max: 86_400 }, 'seconds') * 1000
        : GATEWAY_DEFAULTS.readyTimeoutS * 1000;
  const extraSans = (raw.tlsSans ?? [])
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  for (const san of extraSans) {
    if (!isIP(san) && !SAN.test(san)) {
      throw new UsageError(`${names.tlsSans}: '${san}' is neither a DNS name nor an IP address`, {
        hint: 'give host names or IP addresses, e.g. --tls-san gateway.example.com,10.0.0.5',
      });
    }
  }
  if (raw.useContext && !raw.mergeKubeconfig) {
    throw new UsageError(`${names.useContext} needs ${names.mergeKubeconfig}`, {
      hint: `add ${names.mergeKubeconfig} (it adds the context to ~/.kube/config)`,
    });
  }
  const options: GatewayOptions = {
    instance,
    rootfs: parseRootfsOption(raw.rootfs, names.rootfs),
    kernel: raw.kernel === undefined ? undefined : parseKernelChoice(raw.kernel, names.kernel),
    gateway,
    apiPort,
    extraForwards,
    vcpus,
    memMib,
    arch: raw.arch === undefined ? defaultGuestArch() : parseGuestArch(raw.arch),
    accel: raw.accel === undefined ? undefined : parseAccelerator(raw.accel),
    backend: raw.backend === undefined ? undefined : parseBackend(raw.backend),
    readyTimeoutMs,
    extraSans,
    mergeKubeconfig: raw.mergeKubeconfig ?? false,
    useContext: raw.useContext ?? false,
    snapshot: raw.snapshot ?? false,
  };
  return { options: Object.freeze(options), warnings };
}
