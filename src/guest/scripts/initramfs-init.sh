#!/bin/sh
# openshell-vm initramfs /init (busybox sh). Loads the virtio modules listed in /etc/ovm-modules
# (dependencies first; none for a kernel with everything built in: `openshell-vm kernel build`),
# mounts the virtio-fs share tagged by ovm.tag as the root, and switch_roots
# into ovm.init. With ovm.root=overlay the share is the read-only lower layer of an overlay whose
# upper layer is a tmpfs (writes vanish when the VM ends); nothing of the share stays writable or
# mounted beside it. With ovm.root=copy the share (a small root: the default rootfs of `run`) is
# copied into a tmpfs, which is the root, and the share is unmounted: every executable then runs
# from pages this guest's CPU wrote. Under QEMU's TCG that matters: virtiofsd writes file data
# straight into guest memory, which TCG does not see, so code it translated earlier from a reused
# page may run in place of the new file's code (random crashes of the guest agent, seen here).
# The host serves the whole share read-only, so a guest that mounts it again
# read-write still cannot change it. On any failure it says why on the console and powers off: the
# host then sees the VM end before the guest agent connected and reports it with the console's
# last lines. With ovm.root=disk the root is the ext4 image on the virtio-blk disk /dev/vda (no
# share): a VM whose state is saved and restored.
# With KRUN_INIT in its environment (OPENSHELL_VM_GUEST_HANDOFF=krun: the kernel gives init the
# command line's KEY=VALUE words as its environment, which is how libkrun hands its init the
# workload) it stands in for libkrun's init: it mounts what libkrun's init mounts (/dev, /proc,
# /sys, /sys/fs/cgroup, /dev/pts, /dev/shm) in the new root and execs $KRUN_INIT there as PID 1
# (KRUN_INIT_PID1=1), its environment passed on; no ovm.init word is read.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
  echo "ovm-initramfs: FATAL: $*"
  reboot -f
  poweroff -f
  sleep 60
}

tag=ovmroot
init=/sbin/ovm-init
rootmode=rw
for word in $(cat /proc/cmdline); do
  case $word in
    ovm.tag=*) tag=${word#ovm.tag=} ;;
    ovm.init=*) init=${word#ovm.init=} ;;
    ovm.root=*) rootmode=${word#ovm.root=} ;;
  esac
done

while read -r module; do
  [ -n "$module" ] || continue
  insmod "/lib/modules/$module" || fail "insmod $module failed"
done </etc/ovm-modules

# The virtio-fs device (or, ovm.root=disk, the virtio-blk disk) may take a moment to appear after
# its driver loads.
tries=0
if [ "$rootmode" = disk ]; then
  until [ -b /dev/vda ]; do
    tries=$((tries + 1))
    [ $tries -lt 100 ] || fail "no root disk (/dev/vda)"
    sleep 0.05
  done
else
  until mount -t virtiofs "$tag" /mnt/host 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -lt 100 ] || fail "cannot mount the virtio-fs share '$tag'"
    sleep 0.05
  done
fi

case $rootmode in
  rw)
    mount --move /mnt/host /newroot || fail "cannot move the root mount"
    ;;
  disk)
    # The root on an ext4 image (a gateway whose state is saved and restored: no virtio-fs).
    mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount the root disk /dev/vda (ext4)"
    ;;
  overlay)
    mount -t tmpfs -o mode=0755 tmpfs /mnt/rw || fail "cannot mount the overlay's tmpfs"
    mkdir -p /mnt/rw/upper /mnt/rw/work /mnt/lower
    # The lower layer through a read-only bind: nothing in this guest writes the share by mistake.
    mount --bind /mnt/host /mnt/lower && mount -o remount,bind,ro /mnt/lower ||
      fail "cannot mount the share read-only"
    mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot ||
      fail "cannot mount the overlay root"
    umount -l /mnt/lower
    umount -l /mnt/host
    ;;
  copy)
    mount -t tmpfs -o mode=0755 tmpfs /newroot || fail "cannot mount the root's tmpfs"
    cp -a /mnt/host/. /newroot/ || fail "cannot copy the root into memory"
    umount /mnt/host || fail "cannot unmount the share after the copy"
    ;;
  *) fail "unknown ovm.root=$rootmode (expected rw, overlay, copy or disk)" ;;
esac

[ -n "$KRUN_INIT" ] && init=$KRUN_INIT
[ -x "/newroot$init" ] || fail "the root filesystem has no executable $init"

umount /proc /sys
umount /dev 2>/dev/null
if [ -n "$KRUN_INIT" ]; then
  [ "$KRUN_INIT_PID1" = 1 ] || fail "KRUN_INIT without KRUN_INIT_PID1=1: openshell-vm's init runs as PID 1"
  mkdir -p /newroot/dev /newroot/proc /newroot/sys
  mount -t devtmpfs devtmpfs /newroot/dev || fail "cannot mount /dev"
  mount -t proc proc /newroot/proc || fail "cannot mount /proc"
  mount -t sysfs sysfs /newroot/sys || fail "cannot mount /sys"
  mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || fail "cannot mount /sys/fs/cgroup"
  mkdir -p /newroot/dev/pts /newroot/dev/shm
  mount -t devpts devpts /newroot/dev/pts || fail "cannot mount /dev/pts"
  mount -t tmpfs tmpfs /newroot/dev/shm || fail "cannot mount /dev/shm"
  ln -sf /proc/self/fd /newroot/dev/fd 2>/dev/null
fi
exec switch_root /newroot "$init"
