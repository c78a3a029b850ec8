#!/usr/bin/env bash
# Pod-to-pod TCP throughput (iperf3) and latency (ping RTT) through terway's shared-ENI datapath
# (veth + policy routing) on the emulated VPC (`terway emulate --netns`), side by side in one
# run with raw veth baselines between plain namespaces:
#   raw-0  a veth pair between two namespaces (the issue's baseline);
#   raw-1  two veth pairs through one plain forwarding namespace (the hops of a same-node path);
#   raw-3  four veth pairs through three plain forwarding namespaces (the hops of a cross-node
#          path: node, VPC router, node);
#   same   pod -> pod on one node (pod veth, the node's policy rules and routes, pod veth);
#   cross  pod -> pod on two nodes through the emulated VPC (pod veth, node, ENI, VPC router
#          namespace with strict rp_filter, ENI, node, pod veth).
# Each path: iperf3 TCP SECS s after 1 s left out (slow start), median of ROUNDS (interleaved),
# and ping -c PINGS -i 0.01 average RTT. The iperf3 client and server are pinned to CPUs
# CLIENT_CPU and SERVER_CPU (by default the first two this run may use; PIN=0 lets the scheduler
# place them): on 2 vCPUs, where the scheduler happens to put the two (one CPU or two) otherwise
# moves a round by more than the paths differ. Every path gets the same pinning. Ratios against raw-0 and against
# the raw chain with the same hops, so that what the topology costs (extra forwarding hops) and
# what terway's datapath costs are told apart; and each round's ratio to raw-0 as mean +-
# standard error, to show how far the ratios can be trusted.
# (netperf is not in Debian's main archive; iperf3 and ping are.) Run as root:
#   [TERWAY_BIN=path] SECS=5 ROUNDS=3 scripts/bench-throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 iputils-ping iperf3 procps python3 curl util-linux ethtool

SECS=${SECS:-5}       # seconds per iperf3 run
ROUNDS=${ROUNDS:-3}   # iperf3 runs per path (interleaved; the median is shown)
PINGS=${PINGS:-100}   # pings per path, 10 ms apart
PIN=${PIN:-1}         # 1: client on CLIENT_CPU, server on SERVER_CPU; 0: not pinned
# The first two CPUs this process may run on (not always 0 and 1 in a container).
read -r CPU_A CPU_B <<< "$(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[min(1, len(c) - 1)])')"
CLIENT_CPU=${CLIENT_CPU:-$CPU_A}
SERVER_CPU=${SERVER_CPU:-$CPU_B}
if [ "$ROUNDS" -lt 1 ] || [ "$SECS" -lt 1 ]; then echo "ROUNDS and SECS must be >= 1" >&2; exit 1; fi
if [ "$PIN" = 1 ]; then
    for c in "$CLIENT_CPU" "$SERVER_CPU"; do
        taskset -c "$c" true 2> /dev/null || { echo "cannot run on CPU $c (CLIENT_CPU/SERVER_CPU; PIN=0 to not pin)" >&2; exit 1; }
    done
    CLIENT_PIN=(taskset -c "$CLIENT_CPU") SERVER_PIN=(taskset -c "$SERVER_CPU")
    PINNING="client on CPU $CLIENT_CPU, server on CPU $SERVER_CPU"
else
    CLIENT_PIN=() SERVER_PIN=() PINNING="not pinned"
fi

T_START=$EPOCHREALTIME
if [ -n "${TERWAY_BIN:-}" ]; then
    BIN=$(realpath "$TERWAY_BIN")
else
    echo "==> building terway (release)"
    cargo build --release --quiet
    BIN="$PWD/target/release/terway"
fi

# Fixed names (twtput-*, i-twtput*: used by nothing else) so that leftovers of a crashed run
# can be found and removed; a lock keeps two runs apart.
VPC_NS=twtput-vpc
S_A=i-twtput1 S_B=i-twtput2
bench_harness twtput

# ---------------------------------------------------------------------------------------------
MACHINE="$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r), $("$BIN" version) release build"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> machine: $MACHINE; load average $LOAD"
"$BIN" emulate --print-config | python3 -c '
import json, sys
c = json.load(sys.stdin)
inst = next(i for i in c["instances"] if i["instance_type"] == "ecs.g7.4xlarge")
c["instances"] = [dict(inst, id=i) for i in sys.argv[2:]]
c["vswitches"][0]["cidr"] = "172.16.0.0/20"
c["vswitches"][1]["cidr"] = "172.16.16.0/24"
c["timing"] = {"attach_delay_ms": 0, "detach_delay_ms": 0, "metadata_lag_ms": 0}
json.dump(c, open(sys.argv[1], "w"), indent=1)
' "$WORK/region.json" "$S_A" "$S_B"
echo "==> the emulated VPC ($VPC_NS): shared ENI nodes $S_A $S_B"
start_bg "$BIN" emulate --netns --listen 127.0.0.1:0 --vpc-netns "$VPC_NS" --config "$WORK/region.json" \
    --node-configs "$WORK/nodes" > "$WORK/emulate.out" 2> "$WORK/emulate.log"
EMU_PID=$BG_PID
wait_emulator "$S_A" "$S_B"

for i in $S_A $S_B; do set_node_keys "$i" '{"min_pool_size": 2}'; start_daemon "$i"; terway_conf "$i"; done
wait_idle "$S_A" 2
wait_idle "$S_B" 1

# ---------------------------------------------------------------------------------------------
echo "==> pods: two on $S_A, one on $S_B; raw veth chains with 0, 1 and 3 forwarding namespaces"
declare -A POD_IP
add_pod() { # add_pod POD INSTANCE: a pod namespace with a terway CNI ADD from that node
    ip netns add "$1"
    run_bg ip netns exec "$2" env CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" \
        CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$1" \
        "$BIN" < "$WORK/$2.conf" > "$WORK/$1.add" || fail "ADD $1 on $2 failed: $(cat "$WORK/$1.add")"
    POD_IP[$1]=$(json_get 'd["ips"][0]["address"].split("/")[0]' < "$WORK/$1.add")
}
del_pod() { # del_pod POD INSTANCE
    ip netns exec "$2" env CNI_COMMAND=DEL CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" \
        CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$BIN" < "$WORK/$2.conf" > /dev/null || echo "DEL $1 failed" >&2
    ip netns del "$1"
}
add_pod twtput-a1 "$S_A"
add_pod twtput-a2 "$S_A"
add_pod twtput-b1 "$S_B"

# raw_chain NAME HOPS: namespaces NAME-c and NAME-s joined by HOPS plain forwarding namespaces
# (HOPS + 1 veth pairs, static routes, default sysctls); the server is 10.(240+HOPS).HOPS+1.2.
raw_chain() {
    local name=$1 hops=$2 i net
    local chain=("$name-c")
    for i in $(seq "$hops"); do chain+=("$name-r$i"); done
    chain+=("$name-s")
    for ns in "${chain[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    for i in $(seq 0 "$hops"); do
        net="10.$((240 + hops)).$((i + 1))"
        ip -n "${chain[$i]}" link add "h$i" type veth peer name "h${i}p" netns "${chain[$((i + 1))]}"
        ip -n "${chain[$i]}" addr add "$net.1/24" dev "h$i"
        ip -n "${chain[$((i + 1))]}" addr add "$net.2/24" dev "h${i}p"
        ip -n "${chain[$i]}" link set "h$i" up
        ip -n "${chain[$((i + 1))]}" link set "h${i}p" up
    done
    for i in $(seq 1 "$hops"); do ip netns exec "${chain[$i]}" sysctl -qw net.ipv4.ip_forward=1; done
    # Towards the server's subnet forward, towards the client's back (connected ones exist).
    for i in $(seq 0 "$hops"); do
        [ "$i" = "$hops" ] ||
            ip -n "${chain[$i]}" route add "10.$((240 + hops)).$((hops + 1)).0/24" via "10.$((240 + hops)).$((i + 1)).2"
        [ "$i" = 0 ] ||
            ip -n "${chain[$((i + 1))]}" route add "10.$((240 + hops)).1.0/24" via "10.$((240 + hops)).$((i + 1)).1"
    done
    POD_IP[$name-s]="10.$((240 + hops)).$((hops + 1)).2"
}
raw_chain twtput-raw0 0
raw_chain twtput-raw1 1
raw_chain twtput-raw3 3

# The paths: label, client namespace, server namespace.
PATHS=("raw0 twtput-raw0-c twtput-raw0-s" "raw1 twtput-raw1-c twtput-raw1-s" "raw3 twtput-raw3-c twtput-raw3-s"
       "same twtput-a1 twtput-a2" "cross twtput-a1 twtput-b1")
for p in "${PATHS[@]}"; do
    read -r label src dst <<< "$p"
    ip netns exec "$src" ping -c 3 -W 2 -q "${POD_IP[$dst]}" > /dev/null || fail "$src cannot reach $dst (${POD_IP[$dst]})"
    echo "$label $(ip -n "$src" -o link show | sed -n 's/.* \(eth0\|h0\)@.* mtu \([0-9]*\) .*/\2/p' | head -1)" >> "$WORK/mtu"
done
iperf() { # iperf LABEL SRC DST ROUND: one TCP run SRC -> DST, JSON in $WORK
    local out="$WORK/iperf-$1-$4" srv
    start_bg ip netns exec "$3" "${SERVER_PIN[@]}" timeout $((SECS + 30)) iperf3 -s -1 -B "${POD_IP[$3]}" -p 5201 --logfile "$out.server"
    srv=$BG_PID
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$3" ss -Hltn 'sport = :5201')" ] && break
        sleep 0.05
    done
    run_bg ip netns exec "$2" "${CLIENT_PIN[@]}" timeout $((SECS + 20)) iperf3 -c "${POD_IP[$3]}" -p 5201 -t "$SECS" -O 1 -J > "$out.json" ||
        fail "iperf3 $2 -> $3 failed: $(cat "$out.json" "$out.server")"
    wait "$srv" || true
}
MACHINE="$(nproc) CPUs, Linux $(uname -r), $("$BIN" version)"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> iperf3 ${SECS}s x $ROUNDS ($PINNING) and $PINGS pings per path (load average $LOAD)"
for r in $(seq "$ROUNDS"); do
    for p in "${PATHS[@]}"; do
        read -r label src dst <<< "$p"
        iperf "$label" "$src" "$dst" "$r"
    done
done
for p in "${PATHS[@]}"; do
    read -r label src dst <<< "$p"
    run_bg ip netns exec "$src" ping -c "$PINGS" -i 0.01 -q -W 2 "${POD_IP[$dst]}" > "$WORK/ping-$label" ||
        fail "ping $src -> $dst failed: $(cat "$WORK/ping-$label")"
done
# What the datapath's hops do to a packet, for the explanation below.
{
    echo "node rp_filter on the pod veth: $(ip netns exec "$S_A" sysctl -n "net.ipv4.conf.$(json_get 'd["interfaces"][0]["name"]' < "$WORK/twtput-a1.add").rp_filter")"
    echo "vpc router rp_filter (all): $(ip netns exec "$VPC_NS" sysctl -n net.ipv4.conf.all.rp_filter)"
    echo "policy rules on $S_A: $(ip -n "$S_A" rule | wc -l)"
    echo "GRO on pod eth0: $(ip netns exec twtput-a1 ethtool -k eth0 | sed -n 's/^generic-receive-offload: //p'), on its host veth: $(ip netns exec "$S_A" ethtool -k "$(json_get 'd["interfaces"][0]["name"]' < "$WORK/twtput-a1.add")" | sed -n 's/^generic-receive-offload: //p'), on a raw veth: $(ip netns exec twtput-raw0-c ethtool -k h0 | sed -n 's/^generic-receive-offload: //p')"
    echo "TSO on pod eth0: $(ip netns exec twtput-a1 ethtool -k eth0 | sed -n 's/^tcp-segmentation-offload: //p'), on a raw veth: $(ip netns exec twtput-raw0-c ethtool -k h0 | sed -n 's/^tcp-segmentation-offload: //p')"
} > "$WORK/facts"
del_pod twtput-a1 "$S_A"
del_pod twtput-a2 "$S_A"
del_pod twtput-b1 "$S_B"

# ---------------------------------------------------------------------------------------------
T_END=$EPOCHREALTIME
python3 - "$WORK" <<PY
import glob, json, re, statistics, sys
work = sys.argv[1]
print()
print("pod-to-pod TCP throughput and latency (terway emulate --netns: ecs.g7.4xlarge nodes, shared ENI, veth + policy routing)")
print("machine: $MACHINE; load average at start: $LOAD")
print()
mtu = dict(l.split() for l in open(f"{work}/mtu") if len(l.split()) == 2)
rows, by_round = {}, {}
for label in ("raw0", "raw1", "raw3", "same", "cross"):
    by_round[label] = {int(re.search(r"-(\d+)\.json$", f).group(1)):
                       json.load(open(f))["end"]["sum_received"]["bits_per_second"] / 1e9
                       for f in glob.glob(f"{work}/iperf-{label}-*.json")}
    gbits = list(by_round[label].values())
    m = re.search(r"= [\d.]+/([\d.]+)/", open(f"{work}/ping-{label}").read())
    rows[label] = (statistics.median(gbits), min(gbits), max(gbits), float(m.group(1)) * 1000)
desc = {
    "raw0": ("raw veth pair, 2 namespaces", "1 veth", None),
    "raw1": ("raw, 1 forwarding ns", "2 veth, 1 fwd ns", None),
    "raw3": ("raw, 3 forwarding ns", "4 veth, 3 fwd ns", None),
    "same": ("terway pod -> pod, same node", "2 veth, 1 fwd ns", "raw1"),
    "cross": ("terway pod -> pod, across the VPC", "4 veth, 3 fwd ns", "raw3"),
}
print(f"iperf3 TCP ${SECS} s after 1 s left out (median of $ROUNDS, min-max; $PINNING), ping -c $PINGS -i 0.01 average RTT")
print(f"   {'path':<34} {'hops':<17} {'Gbit/s':>7} {'(min-max)':>12} {'/raw0':>6} {'/same hops':>10} {'RTT us':>7} {'/raw0':>6} {'/same hops':>10}  target")
g0, r0 = rows["raw0"][0], rows["raw0"][3]
for label, (name, hops, ref) in desc.items():
    g, lo, hi, rtt = rows[label]
    sh = f"{g / rows[ref][0]:>10.2f}" if ref else f"{'':>10}"
    sr = f"{rtt / rows[ref][3]:>10.2f}" if ref else f"{'':>10}"
    target = ""
    if ref:
        target = ">= 0.95 x raw0 " + ("ok" if g / g0 >= 0.95 else "MISSES TARGET")
    print(f"   {name:<34} {hops:<17} {g:>7.2f} {f'({lo:.1f}-{hi:.1f})':>12} {g / g0:>6.2f} {sh} {rtt:>7.0f} {rtt / r0:>6.2f} {sr}  {target}")
# Each round's ratio to the raw pair of the same round, as mean +- standard error: how far the
# medians' ratios above can be trusted, given how much single rounds swing.
paired = []
for label in ("raw1", "raw3", "same", "cross"):
    r = [by_round[label][i] / by_round["raw0"][i] for i in sorted(by_round["raw0"])]
    se = f" +- {statistics.stdev(r) / len(r) ** 0.5:.2f}" if len(r) > 1 else ""
    paired.append(f"{label} {statistics.mean(r):.2f}{se}")
print()
print(f"   per-round ratio to raw0 (mean +- standard error of $ROUNDS): " + ", ".join(paired))
print()
print("   " + "; ".join(l.strip() for l in open(f"{work}/facts")))
print()
print(f"total run time {(${T_END/./} - ${T_START/./}) / 1e6:.0f} s")
PY
