#!/bin/sh
# shellcheck shell=dash
# Shared ENI mode with `eniip_virtual_type: ipvlan` on the emulated VPC (needs a kernel with
# ipvlan: the VM's). `terway emulate --netns` builds the built-in region's two instances as
# namespaces; a daemon per node with ipvlan and service_cidr; pods by real CNI ADD are ipvlan
# L2 slaves of their ENI (vSwitch prefix, default route via the vSwitch gateway); the node has
# its slave ipvl_<ifindex> per ENI. Checked: pod <-> pod across nodes and on one node,
# pod <-> own node, pod -> the other node, pod -> a service address answered by a listener in
# the node's own stack (busybox nc on the node's lo: the VPC has no route there, so only the
# pod's service route to its node gets there), CHECK, a daemon restart (pods keep ipvlan, a new
# pod gets it too), DEL and DEL again (nothing of the pod left on the node), everything stopped.
#
# On a kernel without ipvlan the daemon falls back to veth and this scenario FAILS (it exists to
# test ipvlan). SCENARIO_IPVLAN_ALLOW_VETH=1 runs it against the fallback instead, skipping the
# ipvlan-only checks: that is how the script itself was exercised on a build machine.
set -eu
BIN=${TERWAY_BIN:-/opt/cni/bin/terway}
ALLOW_VETH=${SCENARIO_IPVLAN_ALLOW_VETH:-0}
WORK=$(mktemp -d /tmp/ipvlan.XXXXXX)
VPC=twvm-ipvl-vpc
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.10
SERVICE_PORT=8080
NO_IPVLAN="ipvlan not supported by this kernel"
LISTENER_PID=
stop_extra() { [ -z "$LISTENER_PID" ] || kill "$LISTENER_PID" 2>/dev/null; }
on_exit

start_emulator "$VPC"

step "daemon configs: eniip_virtual_type ipvlan, service_cidr $SERVICE_CIDR"
for n in $NODES; do
    # The emulator writes pretty JSON: "{" alone on the first line.
    sed -i "1a \"eniip_virtual_type\": \"ipvlan\", \"service_cidr\": \"$SERVICE_CIDR\"," \
        "$WORK/nodes/$n.json"
    "$BIN" config check "$WORK/nodes/$n.json" >"$WORK/check-$n.out" 2>&1 ||
        fail "config check $n: $(cat "$WORK/check-$n.out")"
    grep -q '"eniip_virtual_type": "ipvlan"' "$WORK/nodes/$n.json" || fail "config of $n not edited"
    # kube-proxy's part, played by an address in the node's own stack.
    ip -n "$n" addr add "$SERVICE_IP/32" dev lo
done

step "terway daemon on $N0 and $N1"
for n in $NODES; do start_daemon "$n"; done

# expect_datapath NODE: the daemon's pool says ipvlan is configured and in effect
IPVLAN=1
expect_datapath() {
    "$BIN" pool --json --socket "$(sock "$1")" >"$WORK/pool-$1.json"
    grep -q '"configured": "ipvlan"' "$WORK/pool-$1.json" || fail "pool on $1: $(cat "$WORK/pool-$1.json")"
    if grep -q '"effective": "ipvlan"' "$WORK/pool-$1.json"; then
        if grep -q "$NO_IPVLAN" "$WORK/daemon-$1.log"; then fail "$1 says '$NO_IPVLAN' yet uses ipvlan"; fi
        "$BIN" pool --socket "$(sock "$1")" | grep '^datapath:' | sed 's/^/   /'
        return 0
    fi
    grep -q "$NO_IPVLAN" "$WORK/daemon-$1.log" || fail "$1 fell back to veth without saying why"
    [ "$ALLOW_VETH" = 1 ] || fail "this kernel has no ipvlan: the daemon on $1 uses veth policy routing"
    echo "   $1: no ipvlan in this kernel, checking the veth fallback (SCENARIO_IPVLAN_ALLOW_VETH=1)"
    IPVLAN=0
}
step "terway pool: ipvlan configured and in effect"
for n in $NODES; do expect_datapath "$n"; done

# add_ipvlan_pod POD NODE: add_pod (sets ADDR), then, with IPVLAN=1, the pod's eth0 checked
add_ipvlan_pod() {
    add_pod "$1" "$2"
    [ "$IPVLAN" = 1 ] || return 0
    ip -n "$1" -d link show eth0 | grep -q "ipvlan.*mode l2" ||
        fail "$1: eth0 is not an ipvlan L2 slave: $(ip -n "$1" -d link show eth0)"
    cidr=$(ip -n "$1" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.\/]*\) .*/\1/p')
    case "$cidr" in
    "$ADDR"/32 | "") fail "$1: eth0 has $cidr, want $ADDR with the vSwitch prefix" ;;
    esac
    ip -n "$1" route show default | grep -q "^default via " ||
        fail "$1: no default route via the vSwitch gateway: $(ip -n "$1" route)"
    ip -n "$1" route show "$SERVICE_CIDR" | grep -q "via 169.254.1.1 dev eth0" ||
        fail "$1: no service route to its node: $(ip -n "$1" route)"
    ip -n "$2" route show "$ADDR/32" | grep -q "dev ipvl_" ||
        fail "$2 has no route to $ADDR through its host slave: $(ip -n "$2" route)"
}
step "CNI ADD: pod-a and pod-b on $N0, pod-c on $N1"
add_ipvlan_pod twvm-ipvl-a "$N0"
A=$ADDR
add_ipvlan_pod twvm-ipvl-b "$N0"
B=$ADDR
add_ipvlan_pod twvm-ipvl-c "$N1"
C=$ADDR
echo "   pod-a $A, pod-b $B, pod-c $C"
if [ "$A" = "$B" ] || [ "$B" = "$C" ] || [ "$A" = "$C" ]; then fail "two pods share an address"; fi
echo "   inside pod-a:"
ip -n twvm-ipvl-a -d link show eth0 | sed 's/^/     /'
ip -n twvm-ipvl-a -4 addr show eth0 | sed -n 's/^ *inet/     inet/p'
ip -n twvm-ipvl-a route | sed 's/^/     /'
echo "   on $N0:"
ip -n "$N0" -d link show | grep -A1 ' ipvl_' | sed 's/^/     /' || true
if [ "$IPVLAN" = 1 ]; then
    ip -n "$N0" -d link show | grep -q "ipvl_.*" || fail "$N0 has no host slave ipvl_*"
fi

N0_IP=$(ip -n "$N0" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
N1_IP=$(ip -n "$N1" -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
if [ -z "$N0_IP" ] || [ -z "$N1_IP" ]; then fail "no address on the nodes' eth0"; fi

step "pings"
ping_ok twvm-ipvl-a "$C" "pod-a -> pod-c $C (across nodes)"
ping_ok twvm-ipvl-c "$A" "pod-c -> pod-a $A (across nodes)"
ping_ok twvm-ipvl-a "$B" "pod-a -> pod-b $B (same node)"
ping_ok twvm-ipvl-b "$A" "pod-b -> pod-a $A (same node)"
ping_ok twvm-ipvl-a "$N0_IP" "pod-a -> its node $N0 $N0_IP"
ping_ok "$N0" "$A" "node $N0 -> pod-a $A"
ping_ok twvm-ipvl-a "$N1_IP" "pod-a -> node $N1 $N1_IP"
ping_ok twvm-ipvl-c "$N0_IP" "pod-c -> node $N0 $N0_IP"
ping_ok twvm-ipvl-a "$SERVICE_IP" "pod-a -> service address $SERVICE_IP ($N0's lo)"

# service NODE POD: a TCP exchange with a listener in NODE's own stack on the service address
service() {
    # /bin/ip: $! must be the listener (busybox nc; -e cat echoes what it gets). Under
    # timeout as well: busybox runs its own small ip applet for a bare `ip`.
    /bin/ip netns exec "$1" nc -l -p "$SERVICE_PORT" -e cat >/dev/null 2>"$WORK/nc-$1.log" &
    LISTENER_PID=$!
    i=0
    # 1F90: port 8080 in /proc/net/tcp{,6}, 0A: LISTEN (nc may listen on IPv6 too).
    until ip netns exec "$1" cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        grep -q ':1F90 [0-9A-F]*:0000 0A'; do
        i=$((i + 1))
        [ "$i" -le 50 ] || fail "the listener on $1 did not start"
        sleep 0.1
    done
    got=$(echo "hello-from-$2" | timeout 10 /bin/ip netns exec "$2" nc "$SERVICE_IP" "$SERVICE_PORT" 2>&1) || true
    kill "$LISTENER_PID" 2>/dev/null || true
    wait "$LISTENER_PID" 2>/dev/null || true
    LISTENER_PID=
    [ "$got" = "hello-from-$2" ] || fail "$2 -> $SERVICE_IP:$SERVICE_PORT on $1: got '$got'"
    echo "   ok   $2 -> $SERVICE_IP:$SERVICE_PORT, answered by a listener in $1's stack"
}
step "pod -> service CIDR reaches the node's stack"
service "$N0" twvm-ipvl-a

step "CNI CHECK"
cni CHECK "$N0" twvm-ipvl-a >"$WORK/check-a.out" || fail "CHECK pod-a: $(cat "$WORK/check-a.out")"
cni CHECK "$N1" twvm-ipvl-c >"$WORK/check-c.out" || fail "CHECK pod-c: $(cat "$WORK/check-c.out")"

# kinds NODE: how many allocations the saved state (file and log) records as ipvlan
kinds() { "$BIN" state --path "$WORK/nodes/$1/state.json" | grep -c '"kind": *"ipvlan"' || true; }
want=2
[ "$IPVLAN" = 1 ] || want=0
[ "$(kinds "$N0")" = "$want" ] || fail "state of $N0 records $(kinds "$N0") ipvlan pods, want $want"

step "daemon restart on $N0"
# shellcheck disable=SC2086
set -- $DAEMON_PIDS
kill "$1"
wait "$1" || fail "the daemon on $N0 exited with $? on TERM"
DAEMON_PIDS=$2
start_daemon "$N0"
expect_datapath "$N0"
[ "$(kinds "$N0")" = "$want" ] || fail "after the restart $N0 records $(kinds "$N0") ipvlan pods, want $want"
cni CHECK "$N0" twvm-ipvl-a >"$WORK/check-a.out" || fail "CHECK pod-a after the restart: $(cat "$WORK/check-a.out")"
ping_ok twvm-ipvl-a "$C" "pod-a -> pod-c $C after the restart"
add_ipvlan_pod twvm-ipvl-d "$N0"
D=$ADDR
echo "   pod-d $D (added after the restart)"
ping_ok twvm-ipvl-d "$C" "pod-d -> pod-c $C"
ping_ok twvm-ipvl-d "$A" "pod-d -> pod-a $A"
ping_ok "$N0" "$D" "node $N0 -> pod-d $D"
service "$N0" twvm-ipvl-d

step "CNI DEL, and DEL again"
cni DEL "$N0" twvm-ipvl-a >/dev/null || fail "DEL pod-a"
cni DEL "$N0" twvm-ipvl-a >/dev/null || fail "DEL pod-a again"
if ip -n twvm-ipvl-a -o link show | grep -qv ' lo:'; then fail "DEL left links in pod-a"; fi
[ -z "$(ip -n "$N0" route show "$A/32")" ] || fail "DEL left $N0's route to $A: $(ip -n "$N0" route show "$A/32")"
[ -z "$(ip -n "$N0" neigh show "$A")" ] || fail "DEL left $N0's neighbour $A: $(ip -n "$N0" neigh show "$A")"
[ -z "$(ip -n "$N0" rule | grep -w "$A" || true)" ] || fail "DEL left rules of $A on $N0"
if ip netns exec twvm-ipvl-c ping -c 1 -W 2 "$A" >/dev/null 2>&1; then fail "pod-a still answers after DEL"; fi
echo "   ok   pod-a gone, nothing of it left on $N0"
cni DEL "$N0" twvm-ipvl-b >/dev/null || fail "DEL pod-b"
cni DEL "$N0" twvm-ipvl-d >/dev/null || fail "DEL pod-d"
cni DEL "$N1" twvm-ipvl-c >/dev/null || fail "DEL pod-c"
cni DEL "$N1" twvm-ipvl-c >/dev/null || fail "DEL pod-c again"
for p in $PODS; do
    if ip -n "$p" -o link show | grep -qv ' lo:'; then fail "DEL left links in $p"; fi
done
for n in $NODES; do
    [ "$(kinds "$n")" = 0 ] || fail "$n still records ipvlan pods after DEL"
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
if [ "$IPVLAN" = 1 ]; then
    echo "PASS: ipvlan: 4 pods as ipvlan slaves of their ENIs, pings across nodes, to the node and a service address in its stack, restart, DEL, clean"
else
    echo "PASS (veth fallback, SCENARIO_IPVLAN_ALLOW_VETH=1): 4 pods, pings, service, restart, DEL, clean"
fi
