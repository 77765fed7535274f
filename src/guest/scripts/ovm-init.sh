#!/bin/sh
# openshell-vm guest init (PID 1 of the embedded default rootfs). POSIX sh, busybox applets.
#
# It only prepares the guest (mounts, hostname, network) and keeps the guest agent
# (/sbin/ovm-agent: on the virtio-serial port org.openshell.agent under QEMU, on a vsock port under
# libkrun) running; every command reaches the guest as an agent session, never through this script.
# Its words (src/vmm/guest-handoff.ts): OVM_MODE, OVM_NET and OVM_AGENT in its environment (libkrun:
# krun_set_exec's environment, with KRUN_INIT_PID1=1 so libkrun's init execs this script as PID 1),
# else ovm.mode= and ovm.net= on the kernel command line (QEMU).
# Mode exec: the host waits for the agent, runs `openshell-vm run`'s command as an
#   agent session (the agent alone looks the executable up in PATH and gives 127/126/125), then
#   asks for a shutdown.
# Mode gateway: after the mounts and the network below, exec
#   /sbin/ovm-gateway-init, which starts k3s (a rootfs from openshell-vm prepare-rootfs).
# What libkrun's init already mounted (/proc, /sys, /sys/fs/cgroup, /dev, /dev/pts, /dev/shm) is
# left as it is. The console (kernel and this script's progress lines) goes to the host's console
# log only.
# SIGTERM to PID 1 (the agent's shutdown request) stops every process (exec mode) or k3s (gateway
# mode), then the VM. Anything this init cannot do ends the VM at once: the host then sees the VM
# end before the agent connected and reports it with the console's last lines.

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

# The words first, and out of the environment before anything else starts: nothing this init
# starts inherits them (nor libkrun's, such as KRUN_INIT_PID1).
mode=${OVM_MODE:-}
net=${OVM_NET:-}
agent=${OVM_AGENT:-virtio-serial}
words_from=environment
[ -n "$mode" ] || words_from='kernel command line'
unset OVM_MODE OVM_NET OVM_AGENT KRUN_INIT KRUN_INIT_PID1 KRUN_WORKDIR KRUN_RLIMITS KRUN_TERM KRUN_CONFIG

mounted() { # PATH: a mount point already (libkrun's init mounts some)
  grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null
}
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts devpts /dev/pts
mounted /dev/shm || mount -t tmpfs tmpfs /dev/shm
mounted /tmp || mount -t tmpfs tmpfs /tmp
mounted /run || mount -t tmpfs tmpfs /run
hostname openshell-vm
ts "started"

if [ -z "$mode" ]; then
  for word in $(cat /proc/cmdline); do
    case $word in
      ovm.mode=*) mode=${word#ovm.mode=} ;;
      ovm.net=*) net=${word#ovm.net=} ;;
    esac
  done
fi
: "${net:=none}"
ts "mode ${mode:-none} (from the $words_from), network $net, agent $agent"

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

fail() { # REASON: said on the console, then the VM ends
  ts "FATAL: $1"
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
  channel=
  case $agent in
    vsock:*) channel="--vsock ${agent#vsock:}" ;;
    *) find_port org.openshell.agent >/dev/null || return 0 ;;
  esac
  kubeconfig=
  [ "$mode" = gateway ] && kubeconfig=/etc/rancher/k3s/k3s.yaml
  # The agent runs from a copy in /run (tmpfs): the root may be a virtio-fs share (the gateway,
  # --rootfs), and under QEMU's TCG code read from one can run stale (virtiofsd writes file data
  # into guest memory unseen by TCG's translation cache); a copy the guest wrote itself cannot.
  agent_bin=/sbin/ovm-agent
  if cp /sbin/ovm-agent /run/ovm-agent.new 2>/dev/null && chmod 700 /run/ovm-agent.new &&
    mv -f /run/ovm-agent.new /run/ovm-agent; then
    agent_bin=/run/ovm-agent
  else
    ts "cannot copy the agent to /run; running it from the root"
  fi
  (
    trap - TERM
    while :; do
      # shellcheck disable=SC2086 # $channel is two words or none
      env -i PATH="$PATH" HOME=/root TERM=xterm ${kubeconfig:+KUBECONFIG=$kubeconfig} "$agent_bin" $channel
      ts "agent exited with status $?; restarting it"
      sleep 1
    done
  ) </dev/null >/dev/console 2>&1 &
  ts "agent started"
}

# Exec mode: PID 1 waits for the host's shutdown request (the agent's SIGTERM; the host sends it
# once the command's session has ended, or has been stopped), then ends every process and the VM.
# The trap is set before the agent starts: a TERM that came before it would be lost (PID 1).
serve_exec() {
  [ -x /sbin/ovm-agent ] || fail "no guest agent (/sbin/ovm-agent)"
  case $agent in
    vsock:*) ;;
    *) find_port org.openshell.agent >/dev/null || fail "no virtio-serial port org.openshell.agent" ;;
  esac
  stopping=
  trap 'stopping=1' TERM
  start_agent
  while [ -z "$stopping" ]; do
    sleep 3600 &
    wait $! 2>/dev/null
    kill $! 2>/dev/null
  done
  ts "stop requested: SIGTERM to every process"
  kill -TERM -1 2>/dev/null
  poweroff_now
}

case $mode in
  exec) serve_exec ;;
  gateway)
    start_agent
    # The gateway's own init stays PID 1: it prepares k3s's state and runs k3s.
    [ -x /sbin/ovm-gateway-init ] || fail "no /sbin/ovm-gateway-init"
    exec /sbin/ovm-gateway-init
    ;;
  *)
    ts "unknown or missing ovm.mode '$mode'"
    fail "bad mode"
    ;;
esac
