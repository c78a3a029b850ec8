#!/bin/sh
# shellcheck shell=dash
# shellcheck disable=SC2153 # ADDR, N0 and N1 are set by the prelude's add_pod and wait_nodes
# A veth pod and an ipvlan pod side by side on one node after a config change (needs ipvlan: the
# VM's kernel). `terway emulate --netns` builds the two nodes; node 0's daemon starts with
# `eniip_virtual_type: veth` and pod-v gets veth + policy routing; node 0's config becomes
# `ipvlan` (+ service_cidr) and its daemon is restarted; pod-i then gets an ipvlan slave while
# pod-v keeps its veth wiring (the interface kind in the pod, and the datapath its allocation
# records in the state file: veth_policy vs ipvlan). Node 1 stays on veth and holds pod-o. Both
# pods on node 0 reach their node, node 1 and pod-o; DEL both; everything stopped.
#
# Not checked, a known limitation of the emulator: an ipvlan pod cannot reach a veth pod on the
# same ENI (pod-i <-> pod-v). The ipvlan slave's frames to an address of its own ENI never leave
# the ENI's device, and the veth pod's address lives in the node's stack behind that same
# device; on a real ENI the VPC would hairpin it. So the pair pod-i <-> pod-v is left out.
set -eu
BIN=/opt/cni/bin/terway
WORK=$(mktemp -d /tmp/coexist.XXXXXX)
VPC=twvm-coex-vpc
SERVICE_CIDR=10.96.0.0/16
on_exit

start_emulator "$VPC"

# The emulator writes pretty JSON: "{" alone on the first line.
sed -i '1a "eniip_virtual_type": "veth",' "$WORK/nodes/$N0.json"
"$BIN" config check "$WORK/nodes/$N0.json" >"$WORK/check.out" 2>&1 ||
    fail "config check $N0: $(cat "$WORK/check.out")"

# effective NODE WANT: the daemon's pool says WANT is the datapath in effect
effective() {
    "$BIN" pool --json --socket "$(sock "$1")" >"$WORK/pool-$1.json"
    grep -q "\"effective\": \"$2\"" "$WORK/pool-$1.json" || fail "pool on $1, want $2: $(cat "$WORK/pool-$1.json")"
}
step "daemons: $N0 with eniip_virtual_type veth, $N1 with the default"
start_daemon "$N0"
N0_PID=$DAEMON_PID
start_daemon "$N1"
effective "$N0" veth

is_kind() { # is_kind POD KIND: the pod's eth0 is a KIND link
    ip -n "$1" -d link show eth0 | grep -qw "$2" ||
        fail "$1: eth0 is not $2: $(ip -n "$1" -d link show eth0)"
}
recorded() { # recorded NODE KIND: how many allocations the saved state records as KIND
    "$BIN" state --path "$WORK/nodes/$1/state.json" | grep -c "\"kind\": *\"$2\"" || true
}
state_is() { # state_is NODE VETH_POLICY IPVLAN: the counts the state file must record
    if [ "$(recorded "$1" veth_policy)" != "$2" ] || [ "$(recorded "$1" ipvlan)" != "$3" ]; then
        fail "state of $1 records $(recorded "$1" veth_policy) veth_policy and $(recorded "$1" ipvlan) ipvlan, want $2 and $3"
    fi
}

step "CNI ADD: pod-v on $N0 (veth), pod-o on $N1"
add_pod twvm-coex-v "$N0"
V=$ADDR
add_pod twvm-coex-o "$N1"
O=$ADDR
is_kind twvm-coex-v veth
state_is "$N0" 1 0

step "config of $N0 -> ipvlan + service_cidr, daemon restarted"
sed -i "s|\"eniip_virtual_type\": \"veth\",|\"eniip_virtual_type\": \"ipvlan\", \"service_cidr\": \"$SERVICE_CIDR\",|" \
    "$WORK/nodes/$N0.json"
grep -q '"eniip_virtual_type": "ipvlan"' "$WORK/nodes/$N0.json" || fail "config of $N0 not edited"
"$BIN" config check "$WORK/nodes/$N0.json" >"$WORK/check.out" 2>&1 ||
    fail "config check $N0: $(cat "$WORK/check.out")"
kill "$N0_PID"
wait "$N0_PID" || fail "the daemon on $N0 exited with $? on TERM"
rest=
for p in $DAEMON_PIDS; do [ "$p" = "$N0_PID" ] || rest="$rest $p"; done
DAEMON_PIDS=$rest
start_daemon "$N0"
effective "$N0" ipvlan

step "CNI ADD: pod-i on $N0 (ipvlan); pod-v keeps veth"
add_pod twvm-coex-i "$N0"
I=$ADDR
echo "   pod-v $V (veth), pod-i $I (ipvlan), pod-o $O (on $N1)"
if [ "$V" = "$I" ] || [ "$I" = "$O" ] || [ "$V" = "$O" ]; then fail "two pods share an address"; fi
is_kind twvm-coex-i ipvlan
is_kind twvm-coex-v veth
state_is "$N0" 1 1
cni CHECK "$N0" twvm-coex-v >"$WORK/check-v.out" || fail "CHECK pod-v: $(cat "$WORK/check-v.out")"
cni CHECK "$N0" twvm-coex-i >"$WORK/check-i.out" || fail "CHECK pod-i: $(cat "$WORK/check-i.out")"

N0_IP=$(ip -n "$N0" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
N1_IP=$(ip -n "$N1" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
if [ -z "$N0_IP" ] || [ -z "$N1_IP" ]; then fail "no address on the nodes' eth0"; fi
step "pings (not pod-i <-> pod-v: see the top of this file)"
for pa in "v $V" "i $I"; do
    p=${pa% *}
    addr=${pa#* }
    ping_ok "twvm-coex-$p" "$N0_IP" "pod-$p -> its node $N0 $N0_IP"
    ping_ok "$N0" "$addr" "node $N0 -> pod-$p $addr"
    ping_ok "twvm-coex-$p" "$N1_IP" "pod-$p -> node $N1 $N1_IP"
    ping_ok "twvm-coex-$p" "$O" "pod-$p -> pod-o $O (across nodes)"
    ping_ok twvm-coex-o "$addr" "pod-o -> pod-$p $addr (across nodes)"
done

step "CNI DEL"
cni DEL "$N0" twvm-coex-v >/dev/null || fail "DEL pod-v"
cni DEL "$N0" twvm-coex-i >/dev/null || fail "DEL pod-i"
cni DEL "$N1" twvm-coex-o >/dev/null || fail "DEL pod-o"
for p in $PODS; do
    if ip -n "$p" -o link show | grep -qv ' lo:'; then fail "DEL left links in $p"; fi
done
state_is "$N0" 0 0
for a in "$V" "$I"; do
    [ -z "$(ip -n "$N0" route show "$a/32")" ] || fail "DEL left $N0's route to $a"
    [ -z "$(ip -n "$N0" rule | grep -w "$a" || true)" ] || fail "DEL left rules of $a on $N0"
done

step "stopping daemons and the emulator"
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
echo "PASS: veth pod kept across a switch to ipvlan, ipvlan pod beside it, pings to nodes and across nodes, DEL, clean"
