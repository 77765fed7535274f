#!/bin/sh
# openshell-vm guest init (PID 1 of the embedded default rootfs). POSIX sh, busybox applets.
#
# Mode gateway (ovm.mode=gateway): after the mounts and the network below, exec
#   /sbin/ovm-gateway-init, which starts k3s (a rootfs from openshell-vm prepare-rootfs).
# Mode exec (ovm.mode=exec ovm.run=ID on the kernel command line):
#   the host wrote /.ovm/run/ID/request.sh into the run's handoff directory (sh-quoted, so every
#   argv string survives as is). This init resolves the executable, runs it with exactly the
#   requested environment and working directory, its stdout and stderr on the virtio-serial ports
#   named org.openshell.stdout / org.openshell.stderr (never the console), stdin from /dev/null,
#   then writes "CODE REASON" to /.ovm/run/ID/status and powers off.
#   Codes follow libkrun's init: 127 not found, 126 not executable, 125 this init failed before
#   running the command; a command killed by signal N gives 128+N.
# The console (kernel and this script's progress lines) goes to the host's console log only.
# In both modes the guest agent (/sbin/ovm-agent, openshell-vm exec) runs on the virtio-serial
# port org.openshell.agent when the host provides one; SIGTERM to PID 1 (the agent's shutdown
# request) stops the command (exec mode) or k3s (gateway mode), then the VM.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

ts() {
  read -r up _ </proc/uptime
  echo "[$up] ovm-init: $*"
}

poweroff_now() {
  sync
  # With reboot=t on the kernel command line and QEMU's -no-reboot, a reset ends the VM; it is a
  # more reliable exit under TCG than an ACPI power-off (seen to leave QEMU running).
  reboot -f
  poweroff -f
  sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname openshell-vm
ts "started"

mode=
run=
net=none
for word in $(cat /proc/cmdline); do
  case $word in
    ovm.mode=*) mode=${word#ovm.mode=} ;;
    ovm.run=*) run=${word#ovm.run=} ;;
    ovm.net=*) net=${word#ovm.net=} ;;
  esac
done

# Networking. eth0 gets its address by DHCP from gvproxy (192.168.127.2 for the fixed MAC
# 5a:94:ef:e4:0c:ee) or from QEMU's user network (10.0.2.15); with gvproxy, a failed DHCP falls
# back to the static 192.168.127.2/24 via 192.168.127.1. DNS comes from the lease, else the
# gateway's. The host's loopback services are at 192.168.127.254 (gvproxy) or 10.0.2.2 (user).
write_lease_script() {
  cat >/run/ovm-udhcpc.sh <<'LEASE'
#!/bin/sh
case $1 in
  deconfig) ip addr flush dev "$interface" ;;
  bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do
      ip route replace default via "$r" dev "$interface"
      break
    done
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
LEASE
  chmod 755 /run/ovm-udhcpc.sh
}

net_up() {
  ip link set lo up
  [ "$net" = none ] && return 0
  if [ ! -e /sys/class/net/eth0 ]; then
    ts "network: no eth0 (ovm.net=$net)"
    return 0
  fi
  ip link set eth0 up
  write_lease_script
  if udhcpc -i eth0 -f -q -n -T 1 -t 3 -A 1 -s /run/ovm-udhcpc.sh >/dev/null 2>&1; then
    ts "network: $(ip -4 -o addr show dev eth0 | awk '{print $4}') by DHCP"
  elif [ "$net" = gvproxy ]; then
    ip addr add 192.168.127.2/24 dev eth0
    ip route replace default via 192.168.127.1 dev eth0
    ts "network: DHCP failed, static 192.168.127.2/24"
  else
    ts "network: DHCP failed"
  fi
  if ! grep -q '^nameserver' /etc/resolv.conf 2>/dev/null; then
    case $net in
      gvproxy) echo 'nameserver 192.168.127.1' >/etc/resolv.conf ;;
      user) echo 'nameserver 10.0.2.3' >/etc/resolv.conf ;;
    esac
  fi
}
net_up

# The run's handoff directory on the host: part of the root when it is writable (rw), bound at
# /.ovm/run by the initramfs under an overlay (the rest of the share is read-only there).
handoff=/.ovm/run/$run

finish() { # CODE REASON
  ts "finished: $1 $2"
  if [ -d "$handoff" ]; then
    printf '%s %s\n' "$1" "$2" >"$handoff/status.tmp" && mv "$handoff/status.tmp" "$handoff/status"
  fi
  poweroff_now
}

find_port() { # NAME -> /dev/vportNpM
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] || continue
    if [ "$(cat "$p/name")" = "$1" ]; then
      echo "/dev/${p##*/}"
      return 0
    fi
  done
  return 1
}

# The agent, restarted if it dies, with the environment `openshell-vm exec` commands start from.
start_agent() {
  [ -x /sbin/ovm-agent ] || return 0
  find_port org.openshell.agent >/dev/null || return 0
  kubeconfig=
  [ "$mode" = gateway ] && kubeconfig=/etc/rancher/k3s/k3s.yaml
  (
    trap - TERM
    while :; do
      env -i PATH="$PATH" HOME=/root TERM=xterm ${kubeconfig:+KUBECONFIG=$kubeconfig} /sbin/ovm-agent
      ts "agent exited with status $?; restarting it"
      sleep 1
    done
  ) </dev/null >/dev/console 2>&1 &
  ts "agent started"
}

run_exec() {
  [ -n "$run" ] || finish 125 no-run-id
  [ -r "$handoff/request.sh" ] || finish 125 no-request
  # Defines ovm_exec, ovm_workdir, ovm_path and ovm_setenv(), and sets the positional arguments.
  . "$handoff/request.sh" || finish 125 bad-request

  out=$(find_port org.openshell.stdout) || finish 125 no-stdout-port
  err=$(find_port org.openshell.stderr) || finish 125 no-stderr-port

  case $ovm_exec in
    */*) target=$ovm_exec ;;
    *)
      target=
      old_ifs=$IFS
      IFS=:
      for dir in $ovm_path; do
        if [ -f "$dir/$ovm_exec" ] && [ -x "$dir/$ovm_exec" ]; then
          target=$dir/$ovm_exec
          break
        fi
      done
      IFS=$old_ifs
      [ -n "$target" ] || finish 127 not-found
      ;;
  esac
  [ -e "$target" ] || finish 127 not-found
  if [ -d "$target" ] || [ ! -x "$target" ]; then finish 126 not-executable; fi
  [ -d "$ovm_workdir" ] || finish 125 workdir-missing

  ts "exec $target"
  : >"$handoff/started"
  (
    cd "$ovm_workdir" || exit 125
    for name in $(export -p | sed -n 's/^export \([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
      unset "$name"
    done
    ovm_setenv
    exec "$target" "$@"
  ) </dev/null >"$out" 2>"$err" &
  child=$!
  trap 'ts "stop requested: SIGTERM to the command"; kill -TERM $child 2>/dev/null' TERM
  # wait returns early when the trap runs; the command (a zombie until reaped) is waited again.
  while :; do
    wait $child
    code=$?
    kill -0 $child 2>/dev/null || break
  done
  finish $code exited
}

start_agent

case $mode in
  exec) run_exec ;;
  gateway)
    # The gateway's own init stays PID 1: it prepares k3s's state and runs k3s.
    [ -x /sbin/ovm-gateway-init ] || finish 125 no-gateway-init
    exec /sbin/ovm-gateway-init
    ;;
  *)
    ts "unknown or missing ovm.mode '$mode'"
    finish 125 bad-mode
    ;;
esac
