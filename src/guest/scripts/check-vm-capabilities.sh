#!/bin/sh
# openshell-vm guest capability check: can this kernel and root filesystem run k3s with the
# bridge CNI? Run in the guest: ovm-check-capabilities [--json] [--no-load].
# It first loads the modules the gateway uses (a Debian guest kernel has them as modules; the
# built kernel and libkrunfw's have them built in) unless --no-load, then checks each capability.
# Exit code: 0 every required capability present, 1 some missing, 2 bad arguments.
# A module counts as present when /sys/module/NAME exists, /proc/modules lists it, the kernel's
# modules.builtin names it, or /proc/config.gz says CONFIG_X=y. A kernel without module support
# (no /proc/modules) loads nothing, and nothing built in is loaded.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

json=0
load=1
for arg in "$@"; do
  case $arg in
    --json) json=1 ;;
    --no-load) load=0 ;;
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "ovm-check-capabilities: unknown argument '$arg' (use --json, --no-load)" >&2
      exit 2
      ;;
  esac
done

GATEWAY_MODULES="bridge br_netfilter veth overlay nf_conntrack nf_nat nf_tables nft_compat nft_chain_nat
 ip_tables iptable_filter iptable_nat iptable_mangle ip6_tables ip6table_filter ip6table_nat
 nf_conntrack_netlink xt_conntrack xt_MASQUERADE xt_mark xt_comment xt_addrtype xt_nat xt_statistic
 nfnetlink ipt_REJECT vxlan"
BUILTIN_LIST=/lib/modules/$(uname -r)/modules.builtin
is_builtin() { # NAME: the kernel's modules.builtin lists it (as kernel/.../NAME.ko)
  [ -r "$BUILTIN_LIST" ] && grep -q "/$1\.ko\$" "$BUILTIN_LIST"
}
# /proc/modules exists only when the kernel can load modules.
module_support=0
[ -e /proc/modules ] && module_support=1
if [ $load = 1 ] && [ $module_support = 1 ] && command -v modprobe >/dev/null 2>&1; then
  for m in $GATEWAY_MODULES; do
    # Loaded already, or built in: nothing to load.
    [ -d "/sys/module/$m" ] && continue
    is_builtin "$m" && continue
    modprobe -q "$m" 2>/dev/null
  done
fi

has_module() { # NAME [CONFIG_OPTION]
  [ -d "/sys/module/$1" ] && return 0
  grep -q "^$1 " /proc/modules 2>/dev/null && return 0
  is_builtin "$1" && return 0
  [ -n "$2" ] && [ -r /proc/config.gz ] && zcat /proc/config.gz 2>/dev/null | grep -q "^$2=y" && return 0
  return 1
}

k3s_data_bin() { # NAME: a CNI plugin k3s extracted
  for d in /var/lib/rancher/k3s/data/*/bin; do
    [ -e "$d/$1" ] && return 0
  done
  return 1
}

pass=0
fail=0
warn=0
skip=0
results=
add() { # NAME CATEGORY required|optional STATUS DESCRIPTION
  case $4 in
    pass) pass=$((pass + 1)) ;;
    skip) skip=$((skip + 1)) ;;
    *)
      if [ "$3" = required ]; then fail=$((fail + 1)); else warn=$((warn + 1)); fi
      ;;
  esac
  status=$4
  [ "$status" = missing ] && { [ "$3" = required ] && status=fail || status=warn; }
  if [ $json = 1 ]; then
    results="$results${results:+,}{\"name\":\"$1\",\"category\":\"$2\",\"required\":\"$3\",\"status\":\"$status\",\"description\":\"$5\"}"
  else
    printf '  %-5s %-22s %-10s %s\n' "$status" "$1" "$2" "$5"
  fi
}
check() { # NAME CATEGORY required|optional DESCRIPTION COMMAND...
  name=$1 cat=$2 req=$3 desc=$4
  shift 4
  if "$@" >/dev/null 2>&1; then add "$name" "$cat" "$req" pass "$desc"; else add "$name" "$cat" "$req" missing "$desc"; fi
}

veth_pair() { ip link add _ovmchk0 type veth peer name _ovmchk1 && ip link del _ovmchk0; }
bridge_dev() { ip link add _ovmchkbr0 type bridge && ip link del _ovmchkbr0; }
bridge_nf() { [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || has_module br_netfilter CONFIG_BRIDGE_NETFILTER; }
netfilter() { [ -d /proc/sys/net/netfilter ] || has_module nf_conntrack CONFIG_NF_CONNTRACK; }
ipt_table() { iptables -t "$1" -L -n; }
nft_works() { nft list ruleset; }
overlay_fs() { grep -qw overlay /proc/filesystems; }
cgroup2() { grep -qw cgroup2 /proc/filesystems; }

check net_namespace netns required 'network namespaces (/proc/self/ns/net)' test -e /proc/self/ns/net
check veth_pair netns required 'veth pairs (CONFIG_VETH)' veth_pair
check bridge bridge required 'Linux bridge (CONFIG_BRIDGE)' bridge_dev
check bridge_nf_call bridge required 'bridge netfilter (CONFIG_BRIDGE_NETFILTER)' bridge_nf
check netfilter netfilter required 'netfilter (CONFIG_NETFILTER)' netfilter
check nf_conntrack netfilter required 'connection tracking (CONFIG_NF_CONNTRACK)' has_module nf_conntrack CONFIG_NF_CONNTRACK
check nf_nat netfilter required 'NAT (CONFIG_NF_NAT)' has_module nf_nat CONFIG_NF_NAT
check iptables_filter netfilter required 'iptables filter table' ipt_table filter
check iptables_nat netfilter required 'iptables nat table' ipt_table nat
check iptables_mangle netfilter optional 'iptables mangle table' ipt_table mangle
check nftables netfilter required 'nftables (kube-proxy nftables mode)' nft_works
check nf_conntrack_netlink netfilter optional 'conntrack netlink (CONFIG_NF_CT_NETLINK)' has_module nf_conntrack_netlink CONFIG_NF_CT_NETLINK
check overlayfs fs required 'overlay filesystem (containerd snapshotter)' overlay_fs
check cgroup2 fs required 'cgroup v2 (k3s, containerd)' cgroup2
check ip_forward routing required 'IPv4 forwarding sysctl' test -e /proc/sys/net/ipv4/ip_forward
check ip_route routing required 'routing table' ip route show
check iptables_bin userspace required 'iptables' command -v iptables
check nft_bin userspace required 'nft' command -v nft
check ip_bin userspace required 'ip (iproute2)' command -v ip
check conntrack_bin userspace optional 'conntrack' command -v conntrack
check k3s_bin userspace required 'k3s at /usr/local/bin/k3s' test -x /usr/local/bin/k3s
if [ -d /var/lib/rancher/k3s/data ]; then
  for plugin in bridge host-local loopback portmap; do
    req=required
    [ $plugin = portmap ] && req=optional
    check "cni_$plugin" cni $req "CNI plugin $plugin (extracted by k3s)" k3s_data_bin $plugin
  done
else
  add cni_plugins cni required skip 'CNI plugins: k3s has not run yet (it extracts them on first start)'
fi

if [ $json = 1 ]; then
  printf '{"kernel":"%s","moduleSupport":%s,"pass":%d,"fail":%d,"warn":%d,"skip":%d,"results":[%s]}\n' \
    "$(uname -r)" "$([ $module_support = 1 ] && echo true || echo false)" $pass $fail $warn $skip "$results"
else
  [ $module_support = 1 ] || echo "kernel $(uname -r) has no module support: every capability is built in"
  echo "kernel $(uname -r): $pass passed, $fail failed, $warn warnings, $skip skipped"
  [ $fail = 0 ] || echo "FAIL: the kernel or root filesystem lacks a required capability (see openshell-vm kernel check)"
fi
[ $fail = 0 ]
