#!/bin/sh
# shellcheck shell=dash
# Datapath benchmark, run by scripts/vm-bench.sh (VM_RUN=bench-datapaths VM_IPERF3=1): not a
# scenario, so the test run leaves it out. Under software emulation the absolute numbers mean
# little; the ratios to a raw veth pair are the point. Three paths, one boot:
#   raw veth  two plain namespaces joined by a veth pair (the floor of any veth datapath)
#   veth      terway shared ENI, veth + policy routing: pod on node 0 -> pod on node 1
#   ipvlan    terway shared ENI, ipvlan L2 slaves: pod on node 0 -> pod on node 1
# The terway paths cross the emulated VPC (`terway emulate --netns`), as pod traffic between
# nodes does; the daemons run veth first, then (config changed, restarted) ipvlan, with the
# veth pods deleted in between so the ENIs carry one kind at a time. Each path: iperf3 TCP for
# BENCH_SECONDS (default 5) and `ping -c 50 -i 0.05` (average RTT). Prints a table.
# Run through run-scenarios.sh, so /vm/prelude.sh (fail, sock, wait_nodes, cni, add_pod) is sourced.
set -eu
BIN=/opt/cni/bin/terway
SECS=${BENCH_SECONDS:-5}
WORK=$(mktemp -d /tmp/bench.XXXXXX)
VPC=twb-vpc
SERVICE_CIDR=10.96.0.0/16
EMU_PID=
DAEMON_PIDS=
SERVER_PID=
NETNS=
PODS=
cleanup() {
    rc=$?
    set +e
    [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
    for p in $DAEMON_PIDS; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for n in $NETNS $PODS; do ip netns del "$n" 2>/dev/null; done
    if [ -n "$EMU_PID" ]; then kill "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; fi
    if [ "$rc" != 0 ]; then
        for f in "$WORK"/*.log; do echo "---- $f"; tail -n 20 "$f"; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
command -v iperf3 >/dev/null || fail "no iperf3 in the VM (VM_IPERF3=1)"

# measure LABEL CLIENT_NS SERVER_NS SERVER_ADDR: appends "LABEL MBITS RTT" to $WORK/results
measure() {
    /bin/ip netns exec "$3" iperf3 -s -1 >"$WORK/server.out" 2>&1 &
    SERVER_PID=$!
    i=0
    # 1451: port 5201 in /proc/net/tcp{,6}, 0A: LISTEN.
    until ip netns exec "$3" cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        grep -q ':1451 [0-9A-F]*:0000 0A'; do
        i=$((i + 1))
        [ "$i" -le 100 ] || fail "iperf3 server in $3 did not start: $(cat "$WORK/server.out")"
        sleep 0.1
    done
    ip netns exec "$2" iperf3 -c "$4" -t "$SECS" -f m >"$WORK/client.out" 2>&1 ||
        fail "iperf3 $1: $(cat "$WORK/client.out")"
    wait "$SERVER_PID" || true
    SERVER_PID=
    mbits=$(awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1)}' "$WORK/client.out")
    [ -n "$mbits" ] || fail "iperf3 $1: no receiver line: $(cat "$WORK/client.out")"
    ip netns exec "$2" ping -q -c 50 -i 0.05 "$4" >"$WORK/ping.out" 2>&1 || fail "ping $1: $(cat "$WORK/ping.out")"
    rtt=$(sed -n 's#.*= [0-9.]*/\([0-9.]*\)/.*#\1#p' "$WORK/ping.out")
    [ -n "$rtt" ] || fail "ping $1: no average: $(cat "$WORK/ping.out")"
    echo "   $1: $mbits Mbit/s, $rtt ms"
    echo "$1 $mbits $rtt" >>"$WORK/results"
}

echo "-- raw veth pair between two namespaces"
ip netns add twb-raw1
NETNS="$NETNS twb-raw1"
ip netns add twb-raw2
NETNS="$NETNS twb-raw2"
ip -n twb-raw1 link add eth0 type veth peer name eth0 netns twb-raw2
ip -n twb-raw1 addr add 10.99.0.1/24 dev eth0
ip -n twb-raw2 addr add 10.99.0.2/24 dev eth0
for n in twb-raw1 twb-raw2; do
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
done
measure "raw-veth" twb-raw1 twb-raw2 10.99.0.2
for n in twb-raw1 twb-raw2; do ip netns del "$n"; done
NETNS=

echo "-- terway emulate --netns"
"$BIN" emulate --netns --vpc-netns "$VPC" --listen 127.0.0.1:0 \
    --node-configs "$WORK/nodes" >"$WORK/emulate.out" 2>"$WORK/emulate.log" &
EMU_PID=$!
wait_nodes
start_daemons() {
    for n in $NODES; do
        /bin/ip netns exec "$n" "$BIN" daemon --config "$WORK/nodes/$n.json" 2>>"$WORK/daemon-$n.log" &
        DAEMON_PIDS="$DAEMON_PIDS $!"
    done
    for n in $NODES; do
        i=0
        until "$BIN" pool --socket "$(sock "$n")" >/dev/null 2>&1; do
            i=$((i + 1))
            [ "$i" -le 600 ] || fail "the daemon on $n did not answer in 60 s"
            sleep 0.1
        done
        "$BIN" pool --json --socket "$(sock "$n")" | grep -q "\"effective\": \"$1\"" ||
            fail "the daemon on $n does not use $1"
    done
}
stop_daemons() {
    for p in $DAEMON_PIDS; do
        kill "$p"
        wait "$p" || fail "a daemon exited with $? on TERM"
    done
    DAEMON_PIDS=
}
# pod_pair KIND: a pod on each node, measured from node 0's to node 1's, then deleted
pod_pair() {
    add_pod "twb-$1-0" "$N0"
    add_pod "twb-$1-1" "$N1"
    ip -n "twb-$1-0" -d link show eth0 | grep -qw "$1" || fail "twb-$1-0 is not $1"
    measure "$1" "twb-$1-0" "twb-$1-1" "$ADDR"
    cni DEL "$N0" "twb-$1-0" >/dev/null || fail "DEL twb-$1-0"
    cni DEL "$N1" "twb-$1-1" >/dev/null || fail "DEL twb-$1-1"
    for n in $PODS; do ip netns del "$n"; done
    PODS=
}

echo "-- terway veth + policy routing, across nodes"
start_daemons veth
pod_pair veth
stop_daemons

echo "-- terway ipvlan, across nodes"
for n in $NODES; do
    sed -i "1a \"eniip_virtual_type\": \"ipvlan\", \"service_cidr\": \"$SERVICE_CIDR\"," "$WORK/nodes/$n.json"
done
start_daemons ipvlan
pod_pair ipvlan
stop_daemons

kill "$EMU_PID"
wait "$EMU_PID" || fail "the emulator exited with $? on TERM"
EMU_PID=

echo "-- results (TCG: compare the ratios, not the numbers)"
awk '
    NR == 1 { rm = $2; rr = $3 }
    { row[NR] = $0 }
    END {
        printf "BENCH %-10s %10s %9s %12s %12s\n", "path", "Mbit/s", "RTT ms", "Mbit/s/raw", "RTT/raw"
        for (i = 1; i <= NR; i++) {
            split(row[i], f, " ")
            printf "BENCH %-10s %10.1f %9.3f %12.2f %12.2f\n", f[1], f[2], f[3], f[2] / rm, f[3] / rr
        }
    }' "$WORK/results"
