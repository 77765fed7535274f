import type { Accelerator } from '../accel/probe.ts';
import type { GuestArch } from '../host/arch.ts';
import type { ExitResult, PidRecord } from '../supervisor/process.ts';
import type { GuestMode } from './guest-handoff.ts';

/**
 * The guest's network: gvproxy's stream socket (started by the caller, shared by every backend),
 * the VMM's own user-mode network with TCP host forwards (QEMU's slirp), or none.
 */
export type NetworkSpec =
  | { readonly mode: 'gvproxy'; readonly socketPath: string; readonly mac: string }
  | {
      readonly mode: 'user';
      readonly mac: string;
      readonly forwards: readonly {
        readonly hostAddress: string;
        readonly hostPort: number;
        readonly guestPort: number;
      }[];
    }
  /** libkrun's transparent socket impersonation; forwards become its port map. */
  | {
      readonly mode: 'tsi';
      readonly forwards: readonly {
        readonly hostAddress: string;
        readonly hostPort: number;
        readonly guestPort: number;
      }[];
    }
  | { readonly mode: 'none' };

/** Everything a backend needs to boot one microVM. Plain data: builders stay pure. */
/**
 * How the guest's root comes from rootDir. 'overlay': the share is the read-only lower layer under
 * a tmpfs (read-only on the host side too: the guest cannot change rootDir); 'copy': as 'overlay'
 * for the host, but the guest copies the share into a tmpfs and unmounts it (a small root: the
 * default rootfs of `run`; under QEMU's TCG no executable then runs from pages virtiofsd wrote,
 * see the initramfs init); 'rw': the share is the root; 'disk': no share, the root is the ext4
 * image rootDisk on virtio-blk (what a VM whose state is saved and restored needs: QEMU cannot
 * migrate a vhost-user-fs device).
 */
export type RootMode = 'overlay' | 'copy' | 'rw' | 'disk';

export interface VmSpec {
  readonly arch: GuestArch;
  readonly accel: Accelerator;
  readonly vcpus: number;
  readonly memMib: number;
  readonly kernel: string;
  readonly initramfs: string;
  /** What the guest init runs (guest-handoff.ts: each backend hands it over its own way). */
  readonly guestMode: GuestMode;
  /** Extra kernel command-line words (QEMU). Never secrets: /proc/cmdline is world-readable. */
  readonly kernelArgs: readonly string[];
  /** Host directory shared over virtio-fs and mounted as the guest's root. */
  readonly rootDir: string;
  readonly rootMode: RootMode;
  /**
   * rootMode 'disk': the raw ext4 image that is the root, and whether the guest's writes go to a
   * throwaway overlay in the run directory (the image stays as it is: a saved state's disk).
   */
  readonly rootDisk?: { readonly path: string; readonly discardWrites: boolean } | undefined;
  /**
   * Resume this saved state (BackendFeatures.snapshots; rootMode 'disk' on the image the state was
   * saved with) instead of booting: start() returns once the state is loaded and the VM runs.
   */
  readonly restoreState?: string | undefined;
  /**
   * The Unix socket the caller listens on for the guest agent, the only way a command reaches the
   * guest. Each backend connects the agent to it its own way: QEMU through the virtio-serial port
   * org.openshell.agent (the guest init starts the agent); libkrun through a vsock port, with the
   * agent as the VM's workload (libkrun's init runs it; the VM ends when it exits). libkrun
   * refuses a spec without one.
   */
  readonly agentSocket?: string | undefined;
  readonly network: NetworkSpec;
  /** Where the backend writes logs and pid files. */
  readonly runDir: string;
  /** Where the backend creates its sockets (short enough for sun_path). */
  readonly socketDir: string;
  readonly consoleLog: string;
}

/**
 * What a backend can do and how it differs, declared as data: callers read these fields and never
 * compare a backend's name (registry.ts has every backend's, for any host; a test checks that each
 * field is read). gvproxy needs no field: on every backend the VMM reaches it over a Unix stream
 * socket through the host's frame filter (net/frame-relay.ts), never datagrams.
 */
export interface BackendFeatures {
  /**
   * The accelerators it can use here. With 'tcg' among them it picks by probing the host (hardware
   * where it works, else software); without, it always runs on its hypervisor (the first).
   */
  readonly accelerators: readonly Accelerator[];
  /** The guest architectures it boots on this host. */
  readonly guestArches: readonly GuestArch[];
  /** The guest networks it offers (--net). */
  readonly networks: readonly NetworkSpec['mode'][];
  /**
   * Which kernel the guest runs: 'openshell' (openshell-vm's guest kernel, whose modules a rootfs
   * must carry for its exact release), or 'libkrunfw' (the one bundled in libkrunfw, no modules).
   */
  readonly guestKernel: 'openshell' | 'libkrunfw';
  /**
   * What an overlay root (rootMode 'overlay') does to the host directory: 'read-only-lower' (the
   * guest's writes go to a tmpfs overlay and the directory is read-only end to end; QEMU), or
   * 'writable' (the guest writes into the directory itself; libkrun), so a run on the shared
   * default rootfs boots a private copy.
   */
  readonly overlayRoot: 'read-only-lower' | 'writable';
  /**
   * Whether it saves a running VM's state to a file and resumes one from it (RunningVm.saveState,
   * VmSpec.restoreState), with the root on a disk image (rootMode 'disk'): QEMU, by migration.
   */
  readonly snapshots: boolean;
  /** The file in the run directory that the VMM process itself writes (`logs --source vmm`). */
  readonly vmmLog: string;
}

export interface VmExit {
  /** The VMM's own exit (not the guest command's status, which the guest reports separately). */
  readonly vmm: ExitResult;
}

export interface RunningVm {
  /** The helper processes, VMM first. */
  readonly processes: readonly PidRecord[];
  /** Settles when the VMM has exited and the helpers are stopped (never rejects). */
  readonly exited: Promise<VmExit>;
  readonly hasExited: boolean;
  /** Stops the VMM, then its helpers (virtiofsd). Idempotent. */
  stop(graceMs?: number): Promise<VmExit>;
  /**
   * Last lines the VMM process itself printed (argument errors, device failures; libkrun's runner:
   * which call libkrun refused and why).
   */
  vmmLogTail(lines?: number): Promise<string>;
  /**
   * BackendFeatures.snapshots: pauses the VM, freezes its disk image as it is now (the guest's
   * later writes go to an overlay in the run directory), writes its state to `file`, resumes it.
   */
  saveState?(file: string): Promise<SavedState>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A saved VM state: how big, how long the VM was paused for it. */
export interface SavedState {
  readonly bytes: number;
  readonly pausedMs: number;
}

/** Notifications of helper processes starting and stopping (the CLI's --events reports them). */
export interface ProcessEvents {
  onProcess?:
    | ((event: { action: 'started' | 'stopped'; record: PidRecord; exit?: ExitResult | undefined }) => void)
    | undefined;
}

/** Helper processes starting and stopping, as `process` events on `sink` (the --events file). */
export function processEventsTo(sink: { event(event: Record<string, unknown>): void }): ProcessEvents {
  return {
    onProcess: (e) =>
      sink.event({
        type: 'process',
        action: e.action,
        process: e.record,
        exit: e.exit,
        elapsedMs: Math.round(performance.now()),
      }),
  };
}

export interface VmmBackend {
  readonly name: string;
  readonly features: BackendFeatures;
  /** Finds what it needs on the host now (binaries), so a missing tool is reported before anything starts. */
  preflight?(spec: Pick<VmSpec, 'arch'>): Promise<unknown>;
  /** Lines that say what it runs on (libkrun: the runtime's libraries and provenance), for progress output. */
  describe?(): readonly string[];
  /**
   * features.snapshots: a fingerprint of the VMM a saved state needs again (QEMU: its binary), so
   * a state is never loaded into another one.
   */
  identity?(spec: Pick<VmSpec, 'arch'>): Promise<string>;
  start(spec: VmSpec, options: { signal?: AbortSignal | undefined }): Promise<RunningVm>;
}

/** Kernel command-line words every backend passes (each one explained). */
export const ROOT_SHARE_TAG = 'ovmroot';
