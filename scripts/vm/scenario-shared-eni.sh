#!/bin/sh
# shellcheck shell=dash
# Shared ENI mode (ENIMultiIP, the known-good datapath: veth + policy routing) on the emulated
# VPC, as scripts/demo.sh shows it: `terway emulate --netns` builds the built-in region's two
# instances as namespaces, a terway daemon per node fills ENIs through the signed OpenAPI,
# three pods get addresses through real CNI ADDs (the plugin exec'd as a runtime would), pings
# pod <-> pod across nodes and on one node, pod -> node and node -> pod; DEL; everything stopped
# and removed.
set -eu
BIN=/opt/cni/bin/terway
# shellcheck disable=SC2034 # used by the prelude's helpers
WORK=$(mktemp -d /tmp/shared-eni.XXXXXX)
VPC=twvm-vpc
on_exit

start_emulator "$VPC"

for n in $NODES; do
    step "terway daemon on $n"
    start_daemon "$n"
done

echo "-- CNI ADD: pod-a on $N0, pod-b and pod-c on $N1"
add_pod twvm-pod-a "$N0"
A=$ADDR
add_pod twvm-pod-b "$N1"
B=$ADDR
add_pod twvm-pod-c "$N1"
C=$ADDR
echo "   pod-a $A, pod-b $B, pod-c $C"
if [ "$A" = "$B" ] || [ "$B" = "$C" ] || [ "$A" = "$C" ]; then fail "two pods share an address"; fi
NODE1_IP=$(ip -n "$N1" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
[ -n "$NODE1_IP" ] || fail "no address on $N1 eth0"

echo "-- pings"
ping_ok twvm-pod-a "$B" "pod-a -> pod-b $B (across nodes)"
ping_ok twvm-pod-b "$A" "pod-b -> pod-a $A (across nodes)"
ping_ok twvm-pod-c "$A" "pod-c -> pod-a $A (across nodes)"
ping_ok twvm-pod-b "$C" "pod-b -> pod-c $C (same node)"
ping_ok twvm-pod-a "$NODE1_IP" "pod-a -> node $N1 $NODE1_IP"
ping_ok "$N0" "$A" "node $N0 -> pod-a $A"

echo "-- terway mapping on $N1"
ip netns exec "$N1" "$BIN" mapping --socket "$(sock "$N1")" | sed 's/^/   /'

echo "-- CNI DEL"
cni DEL "$N0" twvm-pod-a >/dev/null || fail "DEL pod-a"
cni DEL "$N1" twvm-pod-b >/dev/null || fail "DEL pod-b"
cni DEL "$N1" twvm-pod-c >/dev/null || fail "DEL pod-c"
for p in $PODS; do
    if ip -n "$p" -o link show | grep -qv ' lo:'; then fail "DEL left links in $p"; fi
done
echo "-- stopping daemons and the emulator"
for p in $DAEMON_PIDS; do
    kill "$p"
    wait "$p" || fail "a daemon exited with $? on TERM"
done
DAEMON_PIDS=
for p in $PODS; do ip netns del "$p"; done
PODS=
kill "$EMU_PID"
wait "$EMU_PID" || fail "the emulator exited with $? on TERM"
EMU_PID=
[ -z "$(ip netns list)" ] || fail "namespaces left: $(ip netns list | tr '\n' ' ')"
echo "shared ENI: 3 pods, pings across nodes, DEL, clean"
