#!/bin/sh
# openshell-vm gateway init (POSIX sh). /sbin/ovm-init runs it as PID 1 with ovm.mode=gateway, after
# the basic mounts and the network (DHCP from gvproxy); it prepares k3s's state and starts k3s.
#
#   ovm-gateway-init                 the boot sequence below (PID 1 only)
#   ovm-gateway-init clean-runtime   remove stale k3s/containerd runtime state (keeps images)
#   ovm-gateway-init clean-network   remove stale pod networking (cni0, veths, netns, IPAM, routes)
#   ovm-gateway-init guard           (re)install the firewall rule that protects gvproxy's API
#
# Boot sequence: cgroup2 and bpf mounts; hostname; stale runtime and network cleanup; kernel
# modules and capability check (fail fast, naming what is missing); manifests; the bridge CNI; the
# gvproxy API guard; then k3s server as a child of this init, which stays PID 1 to reap orphans and
# to stop k3s in order. The host renders the HelmChart and writes the TLS Secrets through the
# shared root before the boot; this script checks that no placeholder is left. Progress lines go to
# the console as "[uptime] ovm-gateway: ...". A fatal error prints "ovm-gateway: FATAL: ..." and
# ends the VM, and the host reports that line.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

K3S_DIR=/var/lib/rancher/k3s
MANIFESTS=$K3S_DIR/server/manifests
STAGED=/opt/openshell/manifests
CONTAINERD=$K3S_DIR/agent/containerd
POD_CIDR=10.42.0.0/24
GVPROXY_API=192.168.127.1
# Manifests the host writes before every boot: never "orphans".
HOST_MANIFESTS="openshell-helmchart.yaml openshell-tls-secrets.yaml"
CNI_PLUGINS="bridge host-local loopback bandwidth portmap"

ts() {
  read -r up _ </proc/uptime
  echo "[$up] ovm-gateway: $*"
}

fatal() {
  read -r up _ </proc/uptime
  echo "[$up] ovm-gateway: FATAL: $*"
  sync
  reboot -f
  poweroff -f
  sleep 60
  exit 1
}

clean_runtime() {
  mkdir -p "$K3S_DIR" /etc/rancher/k3s
  # Certificates k3s only needs while it starts; the node password k3s makes anew at each start
  # (the old hash would fail its validation); its datastore socket.
  rm -rf "$K3S_DIR/server/tls/temporary-certs" "$K3S_DIR/server/kine.sock" "$K3S_DIR/server/cred/node-passwd"
  # Sockets anywhere in k3s's state, without walking the image store and snapshots.
  find "$K3S_DIR" \( -path "$CONTAINERD/io.containerd.snapshotter.v1.*" -o \
    -path "$CONTAINERD/io.containerd.content.v1.content" \) -prune -o -type s -print 2>/dev/null |
    while read -r sock; do rm -f "$sock"; done
  # containerd: tasks and shims of the previous boot (dead PIDs and sockets), sandbox records (they
  # would make it reuse old network namespaces: "file exists" from the bridge plugin), unfinished
  # downloads. meta.db, the content store and the snapshots are kept: unpacking the gateway image
  # again over virtio-fs takes minutes.
  rm -rf "$CONTAINERD/io.containerd.runtime.v2.task" \
    "$CONTAINERD/io.containerd.sandbox.controller.v1.shim" \
    "$CONTAINERD/io.containerd.content.v1.content/ingest"
  [ -d "$CONTAINERD/io.containerd.content.v1.content" ] && mkdir -p "$CONTAINERD/io.containerd.content.v1.content/ingest"
  rm -rf /run/k3s
  return 0
}

clean_network() {
  if [ -e /sys/class/net/cni0 ]; then
    ip link set cni0 down 2>/dev/null
    ip link delete cni0 2>/dev/null
  fi
  for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$v" 2>/dev/null
  done
  # host-local IPAM leases and cached CNI results.
  rm -rf /var/lib/cni/networks /var/lib/cni/results
  ip route flush "$POD_CIDR" 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    ip netns delete "$ns" 2>/dev/null
  done
  for d in /run/netns /var/run/netns; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
      [ -e "$f" ] || continue
      umount "$f" 2>/dev/null
      rm -f "$f"
    done
  done
  return 0
}

# Defence in depth only: drops traffic from the guest (output) and from its pods (forward, after any
# DNAT) to gvproxy's HTTP API, which would let any pod add or remove the host's port forwards. Guest
# root can delete this table; the boundary is the host's frame filter between the VMM and gvproxy
# (src/net/frame-filter.ts), which drops the same frames whatever the guest does. DNS (53), the
# outbound NAT through the same address and replies to gvproxy's forwarded connections (from
# 192.168.127.1:<ephemeral>) are untouched.
guard() {
  nft delete table inet ovm_guard 2>/dev/null
  nft -f - <<EOF
table inet ovm_guard {
  chain output {
    type filter hook output priority -5; policy accept;
    ip daddr $GVPROXY_API tcp dport 80 counter drop
  }
  chain forward {
    type filter hook forward priority -5; policy accept;
    ip daddr $GVPROXY_API tcp dport 80 counter drop
  }
}
EOF
}

deploy_manifests() {
  mkdir -p "$MANIFESTS"
  [ -d "$STAGED" ] || return 0
  for f in "$STAGED"/*.yaml; do
    [ -e "$f" ] || continue
    name=${f##*/}
    case " $HOST_MANIFESTS " in *" $name "*) continue ;; esac
    if ! cmp -s "$f" "$MANIFESTS/$name"; then
      cp "$f" "$MANIFESTS/$name.tmp" && mv "$MANIFESTS/$name.tmp" "$MANIFESTS/$name"
      ts "manifest $name deployed"
    fi
  done
  for f in "$MANIFESTS"/openshell-*.yaml "$MANIFESTS"/agent-*.yaml; do
    [ -e "$f" ] || continue
    name=${f##*/}
    case " $HOST_MANIFESTS " in *" $name "*) continue ;; esac
    if [ ! -e "$STAGED/$name" ]; then
      rm -f "$f"
      ts "manifest $name removed (no longer staged)"
    fi
  done
  helm=$MANIFESTS/openshell-helmchart.yaml
  [ -e "$helm" ] || fatal "$helm is missing: the host renders it before boot (rebuild: openshell-vm prepare-rootfs --force)"
  left=$(grep -o '__[A-Z_]*__' "$helm" | sort -u | tr '\n' ' ')
  [ -z "$left" ] || fatal "$helm has unrendered placeholders: $left"
  # The agent-sandbox controller runs with pod networking: kube-proxy makes kubernetes.default.svc
  # reachable from pods.
  sandbox=$MANIFESTS/agent-sandbox.yaml
  if [ -e "$sandbox" ] && grep -Eq 'hostNetwork: true|dnsPolicy: ClusterFirstWithHostNet' "$sandbox"; then
    grep -Ev 'hostNetwork: true|dnsPolicy: ClusterFirstWithHostNet' "$sandbox" >"$sandbox.tmp" && mv "$sandbox.tmp" "$sandbox"
    ts "agent-sandbox.yaml: host networking removed"
  fi
}

write_cni() {
  mkdir -p /etc/cni/net.d /opt/cni/bin
  echo 1 >/proc/sys/net/ipv4/ip_forward
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  cat >/etc/cni/net.d/10-bridge.conflist.tmp <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
    { "type": "loopback" }
  ]
}
EOF
  mv /etc/cni/net.d/10-bridge.conflist.tmp /etc/cni/net.d/10-bridge.conflist
  rm -f /etc/cni/net.d/10-ptp.conflist "$K3S_DIR/agent/etc/cni/net.d/10-flannel.conflist"
}

# k3s unpacks its CNI plugins (links to its multicall "cni") into data/HASH/bin on its first start.
k3s_bin_dir() {
  for d in "$K3S_DIR"/data/*/bin; do
    [ -e "$d/cni" ] || [ -e "$d/bridge" ] || continue
    echo "$d"
    return 0
  done
  return 1
}

link_cni() { # DIR
  for p in $CNI_PLUGINS; do
    [ -e "$1/$p" ] && ln -sf "$1/$p" "/opt/cni/bin/$p"
  done
  ts "CNI plugins linked from $1"
}

check_capabilities() {
  out=$(ovm-check-capabilities 2>&1)
  rc=$?
  echo "$out" | sed 's/^/  /'
  if [ $rc -ne 0 ]; then
    missing=$(echo "$out" | awk '$1 == "fail" {d = $0; sub(/^ *fail +[^ ]+ +[^ ]+ +/, "", d); printf "%s%s (%s)", sep, $2, d; sep = "; "}')
    fatal "this kernel cannot run the gateway: missing ${missing:-a required capability}. Use a kernel with these options (openshell-vm kernel check lists them)"
  fi
}

main() {
  ts "gateway init started"
  # A stop asked before k3s runs (openshell-vm stop, through the agent): nothing to wind down.
  trap 'ts "stop requested before k3s started"; sync; reboot -f' TERM INT
  mkdir -p /sys/fs/cgroup
  mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || grep -qw cgroup2 /proc/mounts || fatal "cannot mount cgroup2 on /sys/fs/cgroup (k3s needs the unified hierarchy)"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null
  hostname gateway
  grep -qw gateway /etc/hosts 2>/dev/null || echo '127.0.1.1 gateway' >>/etc/hosts

  NODE_IP=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
  if [ -z "$NODE_IP" ]; then
    # No NIC (libkrun TSI or no network): a dummy interface gives k3s a node address.
    ip link add dummy0 type dummy 2>/dev/null
    ip addr add 10.0.2.15/24 dev dummy0 2>/dev/null
    ip link set dummy0 up
    ip route replace default dev dummy0 2>/dev/null
    NODE_IP=10.0.2.15
  fi
  [ -s /etc/resolv.conf ] || printf 'nameserver %s\n' "$GVPROXY_API" >/etc/resolv.conf
  ts "node IP $NODE_IP"

  clean_runtime
  clean_network
  ts "stale runtime and network state removed"

  check_capabilities
  ts "kernel capabilities checked"

  deploy_manifests
  write_cni
  bin=$(k3s_bin_dir) && link_cni "$bin"
  guard || fatal "cannot install the nftables rule that protects gvproxy's API ($GVPROXY_API:80)"
  ts "firewall: guest and pod traffic to $GVPROXY_API:80 dropped"

  [ -x /usr/local/bin/k3s ] || fatal "/usr/local/bin/k3s is missing or not executable"
  set -- server \
    --disable=traefik,servicelb,metrics-server \
    --disable-network-policy \
    --write-kubeconfig-mode=644 \
    "--node-ip=$NODE_IP" \
    --kube-apiserver-arg=bind-address=0.0.0.0 \
    --resolv-conf=/etc/resolv.conf \
    --tls-san=localhost,127.0.0.1,10.0.2.15,192.168.127.2 \
    --flannel-backend=none \
    --snapshotter=native \
    --kube-proxy-arg=proxy-mode=nftables
  ts "starting k3s $*"
  env -i PATH="$PATH" HOME=/root /usr/local/bin/k3s "$@" &
  k3s_pid=$!
  trap 'ts "stopping k3s"; kill -TERM $k3s_pid 2>/dev/null' TERM INT

  # On the first boot k3s has not unpacked its CNI plugins yet: link them once it has.
  if [ -z "$bin" ]; then
    (
      i=0
      while [ $i -lt 900 ]; do
        if b=$(k3s_bin_dir); then
          sleep 1
          link_cni "$b"
          exit 0
        fi
        sleep 1
        i=$((i + 1))
      done
      ts "warning: k3s did not unpack its CNI plugins within 15 minutes"
    ) &
  fi

  # Reap everything (orphans re-parent to PID 1) until k3s itself has exited.
  while kill -0 $k3s_pid 2>/dev/null; do
    wait $k3s_pid
    status=$?
  done
  ts "k3s exited with status ${status:-?}"
  sync
  reboot -f
  poweroff -f
}

case ${1:-} in
  clean-runtime) clean_runtime ;;
  clean-network) clean_network ;;
  guard) guard ;;
  '')
    [ $$ = 1 ] || {
      echo "ovm-gateway-init: the boot sequence runs as PID 1 only (subcommands: clean-runtime, clean-network, guard)" >&2
      exit 2
    }
    main
    ;;
  *)
    echo "ovm-gateway-init: unknown subcommand '$1' (clean-runtime, clean-network, guard)" >&2
    exit 2
    ;;
esac
