#!/usr/bin/env bash
# The two ENI modes side by side on the emulated VPC (`terway emulate --netns`), in one run:
#   1. warm-pool CNI ADD/DEL latency: exclusive ENI (ENIOnly: the ENI's device becomes the pod's
#      eth0, plus veth1 to the node) vs shared ENI (ENIMultiIP: veth + policy routing) vs
#      Debian's reference ptp + host-local; medians of N plugin execs each, fresh pod namespace
#      each, at most CONC pods alive at once (min_pool_size >= CONC: no ADD waits for the cloud,
#      which the run checks by counting OpenAPI calls), plugins interleaved batch by batch;
#   2. pod-to-pod TCP throughput (iperf3, SECS s, median of ROUNDS) and RTT (ping -c 50 -i 0.01,
#      average) across two nodes through the emulated VPC: ENIOnly pod -> ENIOnly pod, shared-ENI
#      pod -> pod, and a raw veth pair between two plain namespaces as the baseline.
# Four emulated ecs.g7.4xlarge instances (two per ENI mode), no emulated cloud latency. Run as
# root (the variables below, shown with their defaults, are optional; RAW_DIR=DIR keeps the raw
# data: times, iperf3 JSON, daemon and emulator logs):
#   N=30 CONC=5 SECS=5 ROUNDS=3 scripts/bench-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 iputils-ping containernetworking-plugins iperf3 procps python3 curl util-linux

N=${N:-30}            # part 1: plugin execs per plugin and operation
CONC=${CONC:-5}       # part 1: pods alive at once (a batch: CONC ADDs, then their DELs)
SECS=${SECS:-5}       # part 2: seconds per iperf3 run
ROUNDS=${ROUNDS:-3}   # part 2: iperf3 runs per path (interleaved; the median is shown)
PINGS=50              # part 2: pings per path, 10 ms apart
SERVICE_CIDR=10.96.0.0/16
REF=/usr/lib/cni
if [ ! -x "$REF/ptp" ] || [ ! -x "$REF/host-local" ]; then echo "reference plugins not found in $REF" >&2; exit 1; fi
if [ "$CONC" -lt 1 ] || [ "$CONC" -gt 7 ]; then echo "CONC must be 1..7 (ENIs per ecs.g7.4xlarge)" >&2; exit 1; fi
if [ "$N" -lt 1 ] || [ "$ROUNDS" -lt 1 ] || [ "$SECS" -lt 1 ]; then echo "N, ROUNDS and SECS must be >= 1" >&2; exit 1; fi

T_START=$EPOCHREALTIME
bench_binary

# Fixed names (twmodes-*, i-twmodes*: used by nothing else) so that leftovers of a crashed run
# can be found and removed; a lock keeps two runs apart.
VPC_NS=twmodes-vpc
X_A=i-twmodes1 X_B=i-twmodes2   # ENIOnly nodes
S_A=i-twmodes3 S_B=i-twmodes4   # shared ENI nodes
bench_harness twmodes

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
' "$WORK/region.json" "$X_A" "$X_B" "$S_A" "$S_B"
echo "==> the emulated VPC ($VPC_NS): ENIOnly nodes $X_A $X_B, shared ENI nodes $S_A $S_B"
start_bg "$BIN" emulate --netns --listen 127.0.0.1:0 --vpc-netns "$VPC_NS" --config "$WORK/region.json" \
    --node-configs "$WORK/nodes" > "$WORK/emulate.out" 2> "$WORK/emulate.log"
EMU_PID=$BG_PID
wait_emulator "$X_A" "$X_B" "$S_A" "$S_B"

# ENIOnly: a full pool (min = max = all 7 ENIs the instance type allows) on the node measured,
# one spare ENI on the other; shared: min_pool_size 2 x CONC addresses.
set_node_keys "$X_A" "{\"daemon_mode\": \"ENIOnly\", \"service_cidr\": \"$SERVICE_CIDR\", \"min_pool_size\": 7, \"max_pool_size\": 7}"
set_node_keys "$X_B" "{\"daemon_mode\": \"ENIOnly\", \"service_cidr\": \"$SERVICE_CIDR\", \"min_pool_size\": 1, \"max_pool_size\": 7}"
set_node_keys "$S_A" "{\"min_pool_size\": $((2 * CONC)), \"max_pool_size\": $((2 * CONC + 10))}"
set_node_keys "$S_B" '{"min_pool_size": 1}'
for i in $X_A $X_B $S_A $S_B; do start_daemon "$i"; terway_conf "$i"; done
wait_idle "$X_A" 7
wait_idle "$X_B" 1
wait_idle "$S_A" $((2 * CONC))
wait_idle "$S_B" 1
echo "{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"ptp\",\"ipMasq\":false,\"mtu\":1500,
  \"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.253.0.0/16\",\"dataDir\":\"$WORK/host-local\"}}" > "$WORK/ptp.conf"

# Everything timed runs inside a node namespace, so nothing but the plugin execs is measured.
cat > "$WORK/inner.sh" <<'INNER'
set -euo pipefail
# inner.sh WORK REF LABEL PLUGIN CONF FIRST LAST: ADDs for pods FIRST..LAST, then their DELs;
# prints "LABEL ADD|DEL microseconds" per exec.
WORK=$1 REF=$2 label=$3 plugin=$4 conf=$5 first=$6 last=$7
run() { # run CMD I -> microseconds of the plugin exec
    local t0 t1
    t0=$EPOCHREALTIME
    CNI_COMMAND=$1 CNI_CONTAINERID="$label-$2" CNI_NETNS="/run/netns/twmodes-$label$2" CNI_IFNAME=eth0 \
        CNI_PATH=$REF CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$label-$2" \
        "$plugin" < "$conf" > "$WORK/out" || { echo "$label $1 $2 failed: $(cat "$WORK/out")" >&2; exit 1; }
    t1=$EPOCHREALTIME
    echo $(( ${t1/./} - ${t0/./} ))
}
for op in ADD DEL; do
    for i in $(seq "$first" "$last"); do echo "$label $op $(run $op "$i")"; done
done
INNER

# ---------------------------------------------------------------------------------------------
echo "==> 1/2 warm pool: $N ADDs and $N DELs per plugin, batches of $CONC pods, plugins interleaved"
for i in $(seq "$N"); do for l in x s p; do ip netns add "twmodes-$l$i"; done; done
admin DELETE /admin/calls > /dev/null
for first in $(seq 1 "$CONC" "$N"); do
    last=$((first + CONC - 1 < N ? first + CONC - 1 : N))
    run_bg ip netns exec "$X_A" bash "$WORK/inner.sh" "$WORK" "$REF" x "$BIN" "$WORK/$X_A.conf" "$first" "$last"
    run_bg ip netns exec "$S_A" bash "$WORK/inner.sh" "$WORK" "$REF" s "$BIN" "$WORK/$S_A.conf" "$first" "$last"
    run_bg ip netns exec "$S_A" bash "$WORK/inner.sh" "$WORK" "$REF" p "$REF/ptp" "$WORK/ptp.conf" "$first" "$last"
done > "$WORK/warm.times"
admin GET /admin/calls > "$WORK/warm.calls"
for i in $(seq "$N"); do for l in x s p; do ip netns del "twmodes-$l$i"; done; done

# ---------------------------------------------------------------------------------------------
echo "==> 2/2 pod to pod across nodes: iperf3 ${SECS}s x $ROUNDS and $PINGS pings per path"
declare -A POD_IP
add_pod() { # add_pod POD INSTANCE: a pod namespace with a terway CNI ADD from that node
    ip netns add "$1"
    run_bg ip netns exec "$2" env CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" \
        CNI_IFNAME=eth0 CNI_PATH="$REF" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$1" \
        "$BIN" < "$WORK/$2.conf" > "$WORK/$1.add" || fail "ADD $1 on $2 failed: $(cat "$WORK/$1.add")"
    POD_IP[$1]=$(json_get 'd["ips"][0]["address"].split("/")[0]' < "$WORK/$1.add")
}
del_pod() { # del_pod POD INSTANCE
    ip netns exec "$2" env CNI_COMMAND=DEL CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" \
        CNI_IFNAME=eth0 CNI_PATH="$REF" "$BIN" < "$WORK/$2.conf" > /dev/null || echo "DEL $1 failed" >&2
    ip netns del "$1"
}
add_pod twmodes-xa "$X_A"
add_pod twmodes-xb "$X_B"
add_pod twmodes-sa "$S_A"
add_pod twmodes-sb "$S_B"
ip netns add twmodes-rawa
ip netns add twmodes-rawb
ip -n twmodes-rawa link add eth0 type veth peer name eth0 netns twmodes-rawb
ip -n twmodes-rawa addr add 10.254.0.1/30 dev eth0
ip -n twmodes-rawb addr add 10.254.0.2/30 dev eth0
for ns in twmodes-rawa twmodes-rawb; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
POD_IP[twmodes-rawb]=10.254.0.2

# The paths: label, client namespace, server namespace.
PATHS=("raw twmodes-rawa twmodes-rawb" "x twmodes-xa twmodes-xb" "s twmodes-sa twmodes-sb")
for p in "${PATHS[@]}"; do
    read -r label src dst <<< "$p"
    ip netns exec "$src" ping -c 3 -W 2 -q "${POD_IP[$dst]}" > /dev/null || fail "$src cannot reach $dst (${POD_IP[$dst]})"
    echo "$label $(ip -n "$src" -o link show eth0 | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')" >> "$WORK/mtu"
done
iperf() { # iperf LABEL SRC DST ROUND: one TCP run SRC -> DST, JSON in $WORK
    local out="$WORK/iperf-$1-$4" srv
    start_bg ip netns exec "$3" timeout $((SECS + 30)) iperf3 -s -1 -B "${POD_IP[$3]}" -p 5201 --logfile "$out.server"
    srv=$BG_PID
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$3" ss -Hltn 'sport = :5201')" ] && break
        sleep 0.05
    done
    run_bg ip netns exec "$2" timeout $((SECS + 20)) iperf3 -c "${POD_IP[$3]}" -p 5201 -t "$SECS" -J > "$out.json" ||
        fail "iperf3 $2 -> $3 failed: $(cat "$out.json" "$out.server")"
    wait "$srv" || true
}
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
del_pod twmodes-xa "$X_A"
del_pod twmodes-xb "$X_B"
del_pod twmodes-sa "$S_A"
del_pod twmodes-sb "$S_B"

# ---------------------------------------------------------------------------------------------
T_END=$EPOCHREALTIME
python3 - "$WORK" <<PY
import glob, json, re, statistics, sys
work = sys.argv[1]
names = {"x": "ENIOnly", "s": "shared ENI", "p": "ptp+host-local"}

print()
print("terway ENI modes side by side (terway emulate --netns: ecs.g7.4xlarge nodes, no emulated cloud latency)")
print("machine: $MACHINE; load average at start: $LOAD")
print()
times = {}
for line in open(f"{work}/warm.times"):
    plugin, op, us = line.split()
    times.setdefault((plugin, op), []).append(int(us) / 1000)
print("1. warm-pool CNI latency: medians of $N plugin execs (ms), fresh pod netns each, "
      "at most $CONC pods alive, plugins interleaved per batch")
print(f"   {'op':<4} {'ENIOnly':>9} {'shared ENI':>11} {'ptp+host-local':>15} {'ENIOnly/ptp':>12} {'shared/ptp':>11}")
for op in ("ADD", "DEL"):
    x, s, p = (statistics.median(times[(k, op)]) for k in ("x", "s", "p"))
    print(f"   {op:<4} {x:>9.2f} {s:>11.2f} {p:>15.2f} {x / p:>12.2f} {s / p:>11.2f}")
# The daemons' periodic resyncs (Describe*) are not the pools' doing.
calls = {a: c["total"] for a, c in json.load(open(f"{work}/warm.calls")).items() if not a.startswith("Describe")}
print("   OpenAPI calls meanwhile (Describe* left out): " + (", ".join(f"{a} {c}" for a, c in calls.items()) or "none")
      + ("" if not calls else "  (background top-ups of the shared pool back to min_pool_size)"))
print()

mtu = dict(l.split() for l in open(f"{work}/mtu"))
rows = []
for label, name, hops in (("raw", "raw veth pair, 2 plain namespaces", "1 veth"),
                          ("x", "ENIOnly pod -> ENIOnly pod", "2 veth, 1 routing ns"),
                          ("s", "shared ENI pod -> pod (veth)", "4 veth, 3 routing ns")):
    gbits = []
    for f in sorted(glob.glob(f"{work}/iperf-{label}-*.json")):
        gbits.append(json.load(open(f))["end"]["sum_received"]["bits_per_second"] / 1e9)
    m = re.search(r"= [\d.]+/([\d.]+)/", open(f"{work}/ping-{label}").read())
    rows.append((name, hops, statistics.median(gbits), min(gbits), max(gbits), float(m.group(1)) * 1000, mtu[label]))
print("2. pod to pod across two nodes through the emulated VPC: iperf3 TCP ${SECS} s (median of $ROUNDS, "
      "min-max), ping -c $PINGS -i 0.01 average RTT")
print(f"   {'path':<34} {'emulated as':<21} {'Gbit/s':>7} {'(min-max)':>12} {'vs raw':>7} {'RTT us':>7} {'vs raw':>7} {'MTU':>5}")
raw_g, raw_rtt = rows[0][2], rows[0][5]
for name, hops, g, lo, hi, rtt, m in rows:
    print(f"   {name:<34} {hops:<21} {g:>7.2f} {f'({lo:.1f}-{hi:.1f})':>12} {g / raw_g:>7.2f} {rtt:>7.0f} {rtt / raw_rtt:>7.2f} {m:>5}")
print()
print(f"total run time {(${T_END/./} - ${T_START/./}) / 1e6:.0f} s")
PY
