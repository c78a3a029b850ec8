#!/bin/sh
# shellcheck shell=dash
# The kernel features the datapaths need exist and carry traffic: a dummy link; an ipvlan L2
# slave of a veth, moved into a namespace, pinging the veth's far end; an 802.1Q VLAN link on
# each end of a veth pair, pinging across. Everything is deleted at the end.
set -eu
P=twk-peer   # the far end of the veth (a "switch" with an address on each network)
S=twk-pod    # holds the ipvlan slave, as a pod would
STEP=
cleanup() {
    rc=$?
    set +e
    [ "$rc" = 0 ] || echo "FAIL in step: $STEP"
    ip link del twk-dummy 2>/dev/null
    ip link del twk-v0 2>/dev/null   # takes twk-v1, the ipvlan slave and the VLANs with it
    ip netns del "$S" 2>/dev/null
    ip netns del "$P" 2>/dev/null
}
trap cleanup EXIT
step() {
    STEP=$*
    echo "-- $*"
}

step "dummy"
ip link add twk-dummy type dummy
ip link set twk-dummy up
ip addr add 10.99.9.1/32 dev twk-dummy
ip -d link show twk-dummy | grep -q dummy
ip link del twk-dummy
if ip link show twk-dummy 2>/dev/null; then echo "twk-dummy still there"; exit 1; fi

step "veth with its peer in a namespace"
ip netns add "$P"
ip netns add "$S"
ip link add twk-v0 type veth peer name twk-v1 netns "$P"
ip link set twk-v0 up
ip -n "$P" link set lo up
ip -n "$P" link set twk-v1 up
ip -n "$P" addr add 10.99.0.1/24 dev twk-v1

step "ipvlan L2 slave of twk-v0 in $S"
ip link add link twk-v0 name twk-ipvl type ipvlan mode l2
ip -d link show twk-ipvl | grep -q "ipvlan.*mode l2"
ip link set twk-ipvl netns "$S"
ip -n "$S" link set lo up
ip -n "$S" link set twk-ipvl up
ip -n "$S" addr add 10.99.0.2/24 dev twk-ipvl
ip netns exec "$S" ping -c 1 -W 5 10.99.0.1
ip netns exec "$P" ping -c 1 -W 5 10.99.0.2

step "802.1Q VLAN 100 on both ends"
ip link add link twk-v0 name twk-v0.100 type vlan id 100
ip -d link show twk-v0.100 | grep -q "vlan protocol 802.1Q id 100"
ip link set twk-v0.100 up
ip addr add 10.99.100.2/24 dev twk-v0.100
ip -n "$P" link add link twk-v1 name twk-v1.100 type vlan id 100
ip -n "$P" link set twk-v1.100 up
ip -n "$P" addr add 10.99.100.1/24 dev twk-v1.100
ping -c 1 -W 5 10.99.100.1

step "delete"
ip link del twk-v0.100
ip -n "$S" link del twk-ipvl
ip link del twk-v0
if ip -n "$P" link show twk-v1 2>/dev/null; then echo "twk-v1 outlived its peer"; exit 1; fi
ip netns del "$S"
ip netns del "$P"
echo "dummy, ipvlan L2 and 802.1Q links work"
