#!/bin/sh
# shellcheck shell=dash
# Dual stack on the ipvlan datapath (needs a kernel with ipvlan: the VM's): shared ENI mode with
# `eniip_virtual_type: ipvlan` and `ip_stack: dual` on the emulated VPC. Pods by real CNI ADD get
# an IPv4 and an IPv6 of one ENI on their ipvlan slave (IPv6 with the vSwitch's /64, default
# route via the ENI's IPv6 gateway, no DAD); the node routes each pod's /128 through its host
# slave. Checked: ping6 pod <-> pod across nodes and on one node, pod <-> own node, pod -> the
# other node, CHECK, DEL and DEL again (no IPv6 route of the pod left on the node).
set -eu
BIN=${TERWAY_BIN:-/opt/cni/bin/terway}
WORK=$(mktemp -d /tmp/ipvlan6.XXXXXX)
VPC=twvm-ipv6-vpc
on_exit

start_emulator "$VPC"

step "daemons: eniip_virtual_type ipvlan, ip_stack dual"
for n in $NODES; do
    # The emulator writes pretty JSON: "{" alone on the first line.
    sed -i '1a "eniip_virtual_type": "ipvlan", "service_cidr": "10.96.0.0/16", "ip_stack": "dual",' \
        "$WORK/nodes/$n.json"
    start_daemon "$n"
    "$BIN" pool --json --socket "$(sock "$n")" | grep -q '"effective": "ipvlan"' ||
        fail "$n does not use ipvlan: $(cat "$WORK/daemon-$n.log")"
done

# add_dual_pod POD NODE: add_pod, then the pod's IPv6 checked; sets ADDR6
add_dual_pod() {
    add_pod "$1" "$2"
    ADDR6=$(ip -n "$1" -6 -o addr show dev eth0 scope global | sed -n 's/.* inet6 \([0-9a-f:]*\)\/64 .*/\1/p')
    [ -n "$ADDR6" ] || fail "$1: no IPv6 with the vSwitch's /64 on eth0: $(ip -n "$1" -6 addr show eth0)"
    ip -n "$1" -6 addr show dev eth0 | grep -q tentative && fail "$1: its IPv6 is still tentative (DAD)"
    ip -n "$1" -6 route show default | grep -q "^default via " ||
        fail "$1: no IPv6 default route: $(ip -n "$1" -6 route)"
    ip -n "$2" -6 route show "$ADDR6/128" | grep -q "dev ipvl_" ||
        fail "$2 has no IPv6 route to $ADDR6 through its host slave: $(ip -n "$2" -6 route)"
}
step "CNI ADD: pod-a and pod-b on $N0, pod-c on $N1"
add_dual_pod twvm-ipv6-a "$N0"
A6=$ADDR6
add_dual_pod twvm-ipv6-b "$N0"
B6=$ADDR6
add_dual_pod twvm-ipv6-c "$N1"
C6=$ADDR6
echo "   pod-a $A6, pod-b $B6, pod-c $C6"
ip -n twvm-ipv6-a -6 route | sed 's/^/     /'

N0_6=$(ip -n "$N0" -6 -o addr show dev eth0 scope global | sed -n 's/.* inet6 \([0-9a-f:]*\)\/.*/\1/p')
N1_6=$(ip -n "$N1" -6 -o addr show dev eth0 scope global | sed -n 's/.* inet6 \([0-9a-f:]*\)\/.*/\1/p')
if [ -z "$N0_6" ] || [ -z "$N1_6" ]; then fail "no IPv6 on the nodes' eth0"; fi

step "ping6"
ping_ok twvm-ipv6-a "$C6" "pod-a -> pod-c $C6 (across nodes)"
ping_ok twvm-ipv6-c "$A6" "pod-c -> pod-a $A6 (across nodes)"
ping_ok twvm-ipv6-a "$B6" "pod-a -> pod-b $B6 (same node)"
ping_ok twvm-ipv6-a "$N0_6" "pod-a -> its node $N0 $N0_6"
ping_ok "$N0" "$A6" "node $N0 -> pod-a $A6"
ping_ok twvm-ipv6-a "$N1_6" "pod-a -> node $N1 $N1_6"

step "CNI CHECK"
cni CHECK "$N0" twvm-ipv6-a >"$WORK/check-a.out" || fail "CHECK pod-a: $(cat "$WORK/check-a.out")"

step "CNI DEL, twice"
for p in twvm-ipv6-a twvm-ipv6-b; do
    cni DEL "$N0" "$p" >/dev/null || fail "DEL $p"
    cni DEL "$N0" "$p" >/dev/null || fail "DEL $p again"
done
cni DEL "$N1" twvm-ipv6-c >/dev/null || fail "DEL pod-c"
for a in "$A6" "$B6"; do
    [ -z "$(ip -n "$N0" -6 route show "$a/128")" ] || fail "$N0 still routes $a after DEL"
done
echo "   ok   nothing of the pods left on $N0"
