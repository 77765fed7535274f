import type { GuestHandoff } from '../../config/environment.ts';
import { AGENT_PORT_NAME } from '../../guest/paths.ts';
import type { VmSpec } from '../backend.ts';
import { ROOT_SHARE_TAG } from '../backend.ts';
import { initKernelWords } from '../guest-handoff.ts';
import { shellQuote } from './qmp.ts';

/** Paths of the sockets and files QEMU is pointed at. */
export interface QemuPaths {
  /** vhost-user-fs's socket (every root mode but 'disk'). */
  readonly virtiofsSocket: string;
  /** QEMU's QMP socket (rootMode 'disk': saving and restoring the VM's state). */
  readonly qmpSocket?: string | undefined;
}

/** QEMU's option syntax uses ',' as separator: a literal comma in a value is written ',,'. */
export function optValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** The kernel command line, each default explained. */
export function kernelCommandLine(spec: VmSpec, handoff: GuestHandoff = 'cmdline'): string {
  const words = [
    // The boot console: the serial port QEMU writes to the console log.
    spec.arch === 'x86_64' ? 'console=ttyS0' : 'console=ttyAMA0',
    // On a reboot request, reset through a triple fault (x86): with -no-reboot QEMU then exits.
    // The guest init ends the VM with `reboot -f`, which proved more reliable under TCG than an
    // ACPI power-off.
    ...(spec.arch === 'x86_64' ? ['reboot=t'] : []),
    // Reboot at once on a kernel panic, so a panicking guest ends QEMU instead of hanging.
    'panic=-1',
    // The virtio-fs tag of the root share, and whether it is the root or an overlay's lower layer
    // ('disk': no share, the root is /dev/vda).
    `ovm.tag=${ROOT_SHARE_TAG}`,
    `ovm.root=${spec.rootMode}`,
    // The guest init's mode and how it configures eth0 (DHCP, with gvproxy's static address as
    // the fallback): ovm.* words, or (handoff 'krun') libkrun's environment words.
    ...initKernelWords({ mode: spec.guestMode, network: spec.network.mode }, handoff),
    ...spec.kernelArgs,
  ];
  return words.join(' ');
}

/**
 * QEMU's argv for `spec` (without the binary). Pure: the same spec gives the same argv.
 * x86_64: the microvm machine (virtio-mmio only, no PCI, no firmware). aarch64: the virt machine.
 */
export function qemuArgs(spec: VmSpec, paths: QemuPaths, handoff: GuestHandoff = 'cmdline'): string[] {
  const hardware = spec.accel !== 'tcg';
  const machine =
    spec.arch === 'x86_64'
      ? // pit/pic: without a PIT the kernel cannot calibrate the TSC and hangs with one vCPU under TCG.
        'microvm,memory-backend=mem,pit=on,pic=on'
      : 'virt,memory-backend=mem';
  const cpu = hardware ? 'host' : spec.arch === 'aarch64' ? 'cortex-a72' : undefined;
  const disk = spec.rootMode === 'disk';
  if (disk && !spec.rootDisk) throw new Error("rootMode 'disk' without a rootDisk");
  if (disk && !paths.qmpSocket) throw new Error("rootMode 'disk' without a QMP socket");
  if (spec.restoreState && !disk) throw new Error("a saved state is restored only with rootMode 'disk'");
  return [
    '-M',
    machine,
    '-accel',
    spec.accel,
    ...(cpu ? ['-cpu', cpu] : []),
    '-smp',
    String(spec.vcpus),
    '-m',
    `${spec.memMib}M`,
    // vhost-user (virtiofsd) needs guest memory that another process can map; a disk root does not.
    '-object',
    disk
      ? `memory-backend-ram,id=mem,size=${spec.memMib}M`
      : `memory-backend-memfd,id=mem,size=${spec.memMib}M,share=on`,
    // virtiofsd (libvhost-user) refuses legacy virtio-mmio devices.
    '-global',
    'virtio-mmio.force-legacy=false',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-monitor',
    'none',
    // A guest reboot ends QEMU: the guest init reboots when the command is done.
    '-no-reboot',
    '-kernel',
    spec.kernel,
    '-initrd',
    spec.initramfs,
    '-append',
    kernelCommandLine(spec, handoff),
    '-serial',
    `file:${spec.consoleLog}`,
    ...(disk ? diskRootArgs(spec, paths) : virtiofsRootArgs(paths)),
    ...networkArgs(spec),
    ...agentPortArgs(spec),
    // Resume a saved state: QEMU loads it (the VM stays paused, as it was saved) and the backend
    // continues it once loaded. exec: runs /bin/sh -c, so the path is one quoted word.
    ...(spec.restoreState ? ['-incoming', `exec:cat -- ${shellQuote(spec.restoreState)}`] : []),
  ];
}

/** Where the state writer of saveStateUri writes until it has all of it. */
export function partialStateFile(file: string): string {
  return `${file}.partial`;
}

/**
 * The outgoing migration's URI that writes a VM's state to `file`: cat writes it to
 * `<file>.partial` and only once cat has written all of it (QEMU closed the pipe, cat ended well)
 * is it renamed to `file`, in the same shell command. QEMU may say the migration completed before
 * its writer has finished: `file` appearing is what says the state is whole. exec: runs /bin/sh
 * -c, so each path is one quoted word.
 */
export function saveStateUri(file: string): string {
  const partial = shellQuote(partialStateFile(file));
  return `exec:cat > ${partial} && mv -f -- ${partial} ${shellQuote(file)}`;
}

/** The root share: virtio-fs on virtiofsd's vhost-user socket. */
function virtiofsRootArgs(paths: QemuPaths): string[] {
  return [
    '-chardev',
    `socket,id=vfs,path=${optValue(paths.virtiofsSocket)}`,
    '-device',
    `vhost-user-fs-device,chardev=vfs,tag=${ROOT_SHARE_TAG}`,
  ];
}

/**
 * The root on a disk image (virtio-blk, /dev/vda in the guest) and the QMP socket that saves and
 * restores the VM's state. discardWrites: the guest's writes go to a temporary overlay (QEMU's
 * snapshot=on, in $TMPDIR: the backend points it at the run directory), never into the image.
 */
function diskRootArgs(spec: VmSpec, paths: QemuPaths): string[] {
  const disk = spec.rootDisk;
  if (!disk || !paths.qmpSocket) return [];
  return [
    '-drive',
    `file=${optValue(disk.path)},format=raw,if=none,id=${ROOT_DRIVE_ID},cache=writeback,discard=unmap${disk.discardWrites ? ',snapshot=on' : ''}`,
    '-device',
    `virtio-blk-device,drive=${ROOT_DRIVE_ID}`,
    '-qmp',
    `unix:${optValue(paths.qmpSocket)},server=on,wait=off`,
  ];
}

/** The root disk's drive id (QMP names it when the disk is frozen for a saved state). */
export const ROOT_DRIVE_ID = 'root';

/**
 * The guest agent's channel: the virtio-serial port org.openshell.agent, whose host side is the
 * agent socket the caller listens on (QEMU connects to it).
 */
function agentPortArgs(spec: VmSpec): string[] {
  if (!spec.agentSocket) return [];
  return [
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${optValue(spec.agentSocket)}`,
    '-device',
    `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
  ];
}

/**
 * The guest NIC: virtio-net on the stream socket of the frame filter in front of gvproxy (never
 * gvproxy's own: src/net/frame-relay.ts), on QEMU's slirp, or none at all.
 */
function networkArgs(spec: VmSpec): string[] {
  const net = spec.network;
  if (net.mode === 'none') return [];
  if (net.mode === 'tsi') throw new Error('TSI is a libkrun network; the QEMU backend cannot provide it');
  const device = ['-device', `virtio-net-device,netdev=n0,mac=${net.mac}`];
  if (net.mode === 'gvproxy') {
    return [
      '-netdev',
      `stream,id=n0,server=off,addr.type=unix,addr.path=${optValue(net.socketPath)}`,
      ...device,
    ];
  }
  const hostfwd = net.forwards
    .map((f) => `,hostfwd=tcp:${f.hostAddress}:${f.hostPort}-:${f.guestPort}`)
    .join('');
  return ['-netdev', `user,id=n0${hostfwd}`, ...device];
}

/** virtiofsd's argv (without the binary) for the C virtiofsd of QEMU <= 7 and the Rust one. */
export function virtiofsdArgs(socketPath: string, sourceDir: string, flavour: 'c' | 'rust'): string[] {
  if (flavour === 'rust') {
    return [`--socket-path=${socketPath}`, `--shared-dir=${sourceDir}`, '--cache=auto', '--sandbox=chroot'];
  }
  return [
    `--socket-path=${socketPath}`,
    '-o',
    `source=${sourceDir}`,
    '-o',
    'cache=auto',
    '-o',
    'sandbox=chroot',
  ];
}
