#!/usr/bin/env bash
# Shared-ENI mode (ENIMultiIP) benchmarks on the emulated VPC (`terway emulate --netns`), all in
# one run, one report:
#   1. warm-pool CNI ADD/DEL latency of terway vs Debian's reference ptp + host-local (medians of
#      N fresh pod namespaces, every plugin exec'd from a shell inside the node namespace);
#   2. a cold node (empty pool) hit by BURST parallel ADDs with emulated ENI attach and
#      AssignPrivateIpAddresses latency: time until all succeeded vs the floor
#      ceil(BURST / IPs per ENI) x attach + one assign;
#   3. OpenAPI calls per pod over a CHURN-ADD churn with the daemon's default watermarks;
#   4. daemon RSS, idle and with RSS_PODS pods.
# Each part runs its own daemon on its own emulated ecs.g7.4xlarge instance of one emulator.
# Run as root (the variables below, shown with their defaults, are optional; RAW_DIR=DIR keeps the
# raw data: times, call counts, daemon and emulator logs):
#   [TERWAY_BIN=path] [PARTS=1234] [DAEMON_ENV="VAR=value"] N=50 BURST=40 ATTACH_MS=2000 ASSIGN_MS=300 CHURN=500 RSS_PODS=200 scripts/bench-eni.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 containernetworking-plugins procps python3 curl util-linux

N=${N:-50}                      # warm-pool iterations per plugin
WARM_MIN=${WARM_MIN:-50}        # warm pool: min_pool_size (the pool is warm once idle >= this)
WARM_MAX=${WARM_MAX:-60}        #            max_pool_size
BURST=${BURST:-40}              # cold-node burst size
ATTACH_MS=${ATTACH_MS:-2000}    # burst: emulated ENI attach (and detach) delay
ASSIGN_MS=${ASSIGN_MS:-300}     # burst: AssignPrivateIpAddresses latency
CREATE_MS=${CREATE_MS:-0}       # burst: CreateNetworkInterface latency
LAG_MS=${LAG_MS:-0}             # burst: metadata lag (not part of the issue's floor)
CHURN=${CHURN:-500}             # churn: ADDs in total
CHURN_LOW=${CHURN_LOW:-20}      # churn: live pods kept within [LOW, HIGH]
CHURN_HIGH=${CHURN_HIGH:-30}
SEED=${SEED:-1}                 # churn: random pattern
CHURN_RECLAIM=${CHURN_RECLAIM:-} # churn: idle_ip_reclaim_after (e.g. 1s); empty: the daemon default
RSS_PODS=${RSS_PODS:-200}       # memory: pods allocated when VmRSS is read
PARTS=${PARTS:-1234}            # which parts to run (e.g. PARTS=14: latency and memory only)
DAEMON_ENV=${DAEMON_ENV:-}      # extra environment of the daemons (e.g. MALLOC_ARENA_MAX=1)
want() { case $PARTS in *$1*) return 0;; esac; return 1; }
# What a part that does not run leaves for the report.
burst_us=0 burst_failed=0 churn_ms=0 rss_churn=0 churn_pool="0 0 0 0 0" rss_idle=0 threads_idle=0
capacity=0 rss_pods=0 hwm_pods=0 threads_pods=0 rss_in_use=0
REF=/usr/lib/cni
[ -x "$REF/ptp" ] && [ -x "$REF/host-local" ] || { echo "reference plugins not found in $REF" >&2; exit 1; }
[ "$CHURN_LOW" -lt "$CHURN_HIGH" ] || { echo "CHURN_LOW must be below CHURN_HIGH" >&2; exit 1; }

T_START=$EPOCHREALTIME
bench_binary
kernel_floor_binary

# Fixed names (all start with twbench / i-twbench, never used by the tests) so that leftovers of
# a crashed run can be found and removed; a lock keeps two runs apart.
VPC_NS=twbench-vpc
I_WARM=i-twbench1 I_BURST=i-twbench2 I_CHURN=i-twbench3 I_RSS=i-twbench4
bench_harness twbench

# ---------------------------------------------------------------------------------------------
# The emulated region: four ecs.g7.4xlarge instances (one per part), big vSwitches so no part
# runs out of addresses, no latency (the burst part sets its own).
"$BIN" emulate --print-config | python3 -c '
import json, sys
c = json.load(sys.stdin)
ids = sys.argv[2:]
inst = next(i for i in c["instances"] if i["instance_type"] == "ecs.g7.4xlarge")
c["instances"] = [dict(inst, id=i) for i in ids]
c["vswitches"][0]["cidr"] = "172.16.0.0/20"
c["vswitches"][1]["cidr"] = "172.16.16.0/24"
c["timing"] = {"attach_delay_ms": 0, "detach_delay_ms": 0, "metadata_lag_ms": 0}
json.dump(c, open(sys.argv[1], "w"), indent=1)
' "$WORK/region.json" "$I_WARM" "$I_BURST" "$I_CHURN" "$I_RSS"
IPS_PER_ENI=$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(next(t for t in c["instance_types"] if t["id"] == "ecs.g7.4xlarge")["eni_private_ip_address_quantity"])
' "$WORK/region.json")

echo "==> starting the emulated VPC ($VPC_NS; instances $I_WARM $I_BURST $I_CHURN $I_RSS)"
start_bg "$BIN" emulate --netns --listen 127.0.0.1:0 --vpc-netns "$VPC_NS" --config "$WORK/region.json" \
    --node-configs "$WORK/nodes" > "$WORK/emulate.out" 2> "$WORK/emulate.log"
EMU_PID=$BG_PID
wait_emulator "$I_WARM" "$I_BURST" "$I_CHURN" "$I_RSS"

stop_daemon() {
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID" || true
    DAEMON_PID=
}

# save_metrics INSTANCE: "count sum" of the daemon's state saves (terway_state_save_seconds),
# then of its successful alloc RPCs (terway_rpc_latency: request decoded -> reply handed back)
save_metrics() {
    "$BIN" metrics --config "$(node_conf "$1")" | awk '
        $1 == "terway_state_save_seconds_count" {c = $2}
        $1 == "terway_state_save_seconds_sum" {s = $2}
        /^terway_rpc_latency_count/ && /rpc_api="alloc"/ && /result="ok"/ {ac = $2}
        /^terway_rpc_latency_sum/ && /rpc_api="alloc"/ && /result="ok"/ {as = $2}
        END {print c + 0, s + 0, ac + 0, as + 0}'
}
rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"ptp\",\"ipMasq\":false,\"mtu\":1500,
  \"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.253.0.0/16\",\"dataDir\":\"$WORK/host-local\"}}" > "$WORK/ptp.conf"

# Everything timed runs inside the node namespace, so nothing but the plugins is measured.
cat > "$WORK/inner.sh" <<'INNER'
set -euo pipefail
WORK=$1 BIN=$2 REF=$3 what=$4
shift 4
cni() { # cni PLUGIN CONF CMD ID NETNS-NAME [OUT]
    CNI_COMMAND=$3 CNI_CONTAINERID=$4 CNI_NETNS=/run/netns/$5 CNI_IFNAME=eth0 CNI_PATH=$REF \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$4" "$1" < "$2" > "${6:-$WORK/out}"
}
run() { # run ... -> microseconds of the plugin exec
    local t0 t1
    t0=$EPOCHREALTIME
    cni "$@" || { echo "$1 $3 $4 failed: $(cat "$WORK/out")" >&2; exit 1; }
    t1=$EPOCHREALTIME
    echo $(( ${t1/./} - ${t0/./} ))
}
case $what in
warm) # warm N TERWAY-CONF: interleaved terway / ptp ADDs, then DELs
    n=$1 tconf=$2
    for i in $(seq "$n"); do
        echo "terway ADD $(run "$BIN" "$tconf" ADD "warm-t$i" "twbench-wt$i")"
        echo "ptp ADD $(run "$REF/ptp" "$WORK/ptp.conf" ADD "warm-p$i" "twbench-wp$i")"
    done
    for i in $(seq "$n"); do
        echo "terway DEL $(run "$BIN" "$tconf" DEL "warm-t$i" "twbench-wt$i")"
        echo "ptp DEL $(run "$REF/ptp" "$WORK/ptp.conf" DEL "warm-p$i" "twbench-wp$i")"
    done
    ;;
burst) # burst N TERWAY-CONF: N ADDs at once; prints the time until all returned and failures
    n=$1 tconf=$2
    mkdir -p "$WORK/burst"
    t0=$EPOCHREALTIME
    for i in $(seq "$n"); do
        ( rc=0; cni "$BIN" "$tconf" ADD "burst-$i" "twbench-b$i" "$WORK/burst/$i.out" || rc=$?
          echo "$rc $EPOCHREALTIME" > "$WORK/burst/$i.rc" ) &
    done
    wait
    t1=$EPOCHREALTIME
    failed=0
    for i in $(seq "$n"); do read -r rc _ < "$WORK/burst/$i.rc"; [ "$rc" = 0 ] || failed=$((failed + 1)); done
    echo "$(( ${t1/./} - ${t0/./} )) $failed"
    ;;
churn) # churn PLAN TERWAY-CONF: runs "ADD|DEL SLOT ID" lines
    plan=$1 tconf=$2
    while read -r op slot id; do
        cni "$BIN" "$tconf" "$op" "$id" "twbench-c$slot" || { echo "churn $op $id failed: $(cat "$WORK/out")" >&2; exit 1; }
    done < "$plan"
    ;;
fill) # fill N TERWAY-CONF: N ADDs one after another
    n=$1 tconf=$2
    for i in $(seq "$n"); do
        cni "$BIN" "$tconf" ADD "rss-$i" "twbench-r$i" || { echo "ADD rss-$i failed: $(cat "$WORK/out")" >&2; exit 1; }
    done
    ;;
esac
INNER
inner() { # inner NODE-NS WHAT ARGS...
    local ns=$1
    shift
    run_bg ip netns exec "$ns" bash "$WORK/inner.sh" "$WORK" "$BIN" "$REF" "$@"
}
add_netns() { for n in "$@"; do ip netns add "$n"; done; }
del_netns() { for n in "$@"; do ip netns del "$n" 2>/dev/null || true; done; }

# ---------------------------------------------------------------------------------------------
if want 1; then
    echo "==> 1/4 warm pool: min_pool_size $WARM_MIN, max_pool_size $WARM_MAX on $I_WARM"
    set_node_keys "$I_WARM" "{\"min_pool_size\": $WARM_MIN, \"max_pool_size\": $WARM_MAX}"
    start_daemon "$I_WARM"
    idle=0
    for _ in $(seq 600); do
        idle=$(pool_field "$I_WARM" idle)
        [ "$idle" -ge "$WARM_MIN" ] && break
        sleep 0.1
    done
    [ "$idle" -ge "$WARM_MIN" ] || { echo "pool did not warm up: idle $idle" >&2; exit 1; }
    echo "    pool warm (idle $idle); $N ADDs and $N DELs per plugin, interleaved"
    terway_conf "$I_WARM"
    for i in $(seq "$N"); do add_netns "twbench-wt$i" "twbench-wp$i"; done
    save_metrics "$I_WARM" > "$WORK/saves.before"
    inner "$I_WARM" warm "$N" "$WORK/$I_WARM.conf" > "$WORK/warm.times"
    save_metrics "$I_WARM" > "$WORK/saves.after"
    stop_daemon
    # The same operations from one running program, in the same node namespace.
    ip netns exec "$I_WARM" "$FLOOR" "$N" > "$WORK/floor" 9>&-
    for i in $(seq "$N"); do del_netns "twbench-wt$i" "twbench-wp$i"; done

fi
# ---------------------------------------------------------------------------------------------
if want 2; then
    echo "==> 2/4 cold-node burst: $BURST parallel ADDs on $I_BURST (empty pool)"
    set_node_keys "$I_BURST" '{"min_pool_size": 0}'
    start_daemon "$I_BURST"
    pre_idle=$(pool_field "$I_BURST" idle)
    [ "$pre_idle" = 0 ] || { echo "the burst node's pool is not empty: idle $pre_idle" >&2; exit 1; }
    admin PUT /admin/timing "{\"attach_delay_ms\": $ATTACH_MS, \"detach_delay_ms\": $ATTACH_MS, \"metadata_lag_ms\": $LAG_MS}" > /dev/null
    admin PUT /admin/faults "{\"latency_ms\": {\"AssignPrivateIpAddresses\": $ASSIGN_MS, \"CreateNetworkInterface\": $CREATE_MS}}" > /dev/null
    admin DELETE /admin/calls > /dev/null
    terway_conf "$I_BURST"
    for i in $(seq "$BURST"); do add_netns "twbench-b$i"; done
    inner "$I_BURST" burst "$BURST" "$WORK/$I_BURST.conf" > "$WORK/burst.result"
    read -r burst_us burst_failed < "$WORK/burst.result"
    admin GET /admin/calls > "$WORK/burst.calls"
    if [ "$burst_failed" != 0 ]; then
        echo "    $burst_failed of $BURST ADDs failed; first error:" >&2
        for i in $(seq "$BURST"); do
            read -r rc _ < "$WORK/burst/$i.rc"
            [ "$rc" = 0 ] || { cat "$WORK/burst/$i.out" >&2; break; }
        done
    fi
    stop_daemon
    admin PUT /admin/faults '{}' > /dev/null
    admin PUT /admin/timing '{"attach_delay_ms": 0, "detach_delay_ms": 0, "metadata_lag_ms": 0}' > /dev/null
    for i in $(seq "$BURST"); do del_netns "twbench-b$i"; done

fi
# ---------------------------------------------------------------------------------------------
if want 3; then
    echo "==> 3/4 churn: $CHURN ADDs with default watermarks on $I_CHURN, live pods in [$CHURN_LOW, $CHURN_HIGH]"
    SLOTS=$((CHURN_HIGH + 1))
    python3 - "$WORK/churn.plan" "$CHURN" "$CHURN_LOW" "$CHURN_HIGH" "$SLOTS" "$SEED" <<'PY'
import random, sys
path, total, low, high, slots, seed = sys.argv[1], *map(int, sys.argv[2:])
r = random.Random(seed)
free, live, adds, lines = list(range(1, slots + 1)), {}, 0, []
while adds < total:
    n = len(live)
    add = n < low or (n < high and r.random() < 0.5)
    if add:
        slot = free.pop(r.randrange(len(free)))
        adds += 1
        live[slot] = f"churn-{adds}"
        lines.append(f"ADD {slot} {live[slot]}")
    else:
        slot = r.choice(sorted(live))
        lines.append(f"DEL {slot} {live.pop(slot)}")
        free.append(slot)
open(path, "w").write("\n".join(lines) + "\n")
PY
    if [ -n "$CHURN_RECLAIM" ]; then
        set_node_keys "$I_CHURN" "{\"idle_ip_reclaim_after\": \"$CHURN_RECLAIM\"}"
    fi
    start_daemon "$I_CHURN"
    sleep 1   # let startup settle, then count only what the churn causes
    admin DELETE /admin/calls > /dev/null
    terway_conf "$I_CHURN"
    for i in $(seq "$SLOTS"); do add_netns "twbench-c$i"; done
    t0=$EPOCHREALTIME
    inner "$I_CHURN" churn "$WORK/churn.plan" "$WORK/$I_CHURN.conf"
    t1=$EPOCHREALTIME
    churn_ms=$(( (${t1/./} - ${t0/./}) / 1000 ))
    admin GET /admin/calls > "$WORK/churn.calls"
    rss_churn=$(rss_kib "$DAEMON_PID" VmRSS)
    churn_pool=$(pool_json "$I_CHURN" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["in_use"], d["idle"], len(d["eni"]["enis"]), d["min_pool_size"], d["max_pool_size"])')
    stop_daemon
    for i in $(seq "$SLOTS"); do del_netns "twbench-c$i"; done

fi
# ---------------------------------------------------------------------------------------------
if want 4; then
    echo "==> 4/4 memory: idle daemon, then $RSS_PODS pods on $I_RSS"
    start_daemon "$I_RSS"
    sleep 1
    rss_idle=$(rss_kib "$DAEMON_PID" VmRSS)
    threads_idle=$(rss_kib "$DAEMON_PID" Threads)
    capacity=$(pool_field "$I_RSS" capacity)
    terway_conf "$I_RSS"
    for i in $(seq "$RSS_PODS"); do add_netns "twbench-r$i"; done
    inner "$I_RSS" fill "$RSS_PODS" "$WORK/$I_RSS.conf"
    sleep 1
    rss_pods=$(rss_kib "$DAEMON_PID" VmRSS)
    hwm_pods=$(rss_kib "$DAEMON_PID" VmHWM)
    threads_pods=$(rss_kib "$DAEMON_PID" Threads)
    rss_in_use=$(pool_field "$I_RSS" in_use)
    stop_daemon
    for i in $(seq "$RSS_PODS"); do del_netns "twbench-r$i"; done

fi
# ---------------------------------------------------------------------------------------------
T_END=$EPOCHREALTIME
python3 - "$WORK" <<PY
import json, math, statistics, sys
work = sys.argv[1]
def verdict(ok): return "ok" if ok else "MISSES TARGET"

print()
print("terway ENIMultiIP benchmarks (terway emulate --netns, ecs.g7.4xlarge: $IPS_PER_ENI IPs per ENI)")
print()
if "1" in "$PARTS":
    times = {}
    for line in open(f"{work}/warm.times"):
        plugin, op, us = line.split()
        times.setdefault((plugin, op), []).append(int(us))
    print("1. warm-pool CNI latency: medians of $N plugin execs, fresh pod netns each, pool idle >= $WARM_MIN")
    print(f"   {'op':<4} {'terway (us)':>12} {'ptp+host-local (us)':>20} {'terway/ptp':>11}  target")
    for op in ("ADD", "DEL"):
        t = statistics.median(times[("terway", op)])
        p = statistics.median(times[("ptp", op)])
        limit = 0.35 if op == "ADD" else 0.50
        target = f"<= {limit:.2f}  {verdict(t / p <= limit)}"
        print(f"   {op:<4} {t:>12.0f} {p:>20.0f} {t / p:>11.2f}  {target}")
    floor = dict((l.split()[1], int(l.split()[2])) for l in open(f"{work}/floor") if l.startswith("floor "))
    print(f"   kernel floor (netlink only, one running program, median of $N): ADD {floor['ADD']} us, DEL {floor['DEL']} us")
    for op in ("ADD", "DEL"):
        t = statistics.median(times[("terway", op)])
        p = statistics.median(times[("ptp", op)])
        print(f"   {op}: terway / floor {t / floor[op]:.2f}, ptp / floor {p / floor[op]:.2f}")
    (c0, s0, a0, as0), (c1, s1, a1, as1) = [map(float, open(f"{work}/saves.{w}").read().split()) for w in ("before", "after")]
    if c1 > c0:
        print(f"   daemon state saves during the runs: {c1 - c0:.0f}, mean {(s1 - s0) / (c1 - c0) * 1e6:.0f} us (terway_state_save_seconds)")
    if a1 > a0:
        print(f"   alloc RPCs in the daemon: {a1 - a0:.0f}, mean {(as1 - as0) / (a1 - a0) * 1e3:.0f} us from request to reply, save included (terway_rpc_latency, in ms)")
    print()

if "2" in "$PARTS":
    calls = json.load(open(f"{work}/burst.calls"))
    enis = math.ceil($BURST / $IPS_PER_ENI)
    floor = enis * $ATTACH_MS / 1000 + $ASSIGN_MS / 1000
    took = $burst_us / 1e6
    print(f"2. cold-node burst: $BURST parallel ADDs, empty pool; attach $ATTACH_MS ms, "
          f"AssignPrivateIpAddresses $ASSIGN_MS ms, CreateNetworkInterface $CREATE_MS ms, metadata lag $LAG_MS ms")
    if $burst_failed:
        print(f"   FAILED: $burst_failed of $BURST ADDs failed (after {took:.2f} s)")
    else:
        addrs = set()
        for i in range(1, $BURST + 1):
            addrs.update(ip["address"] for ip in json.load(open(f"{work}/burst/{i}.out")).get("ips", []))
        print(f"   all $BURST ready in  {took:6.2f} s   ({len(addrs)} distinct addresses)")
    print(f"   floor            {floor:6.2f} s  = {enis} ENIs x {$ATTACH_MS / 1000:.2f} s attach (sequential, as the issue defines it) + one {$ASSIGN_MS / 1000:.2f} s assign")
    print(f"   time / floor     {took / floor:6.2f}    target <= 1.50  {verdict(not $burst_failed and took / floor <= 1.5)}")
    print("   calls: " + ", ".join(f"{a} {c['total']}" for a, c in calls.items()))
    print()

if "3" in "$PARTS":
    calls = json.load(open(f"{work}/churn.calls"))
    pool_calls = {a: c["total"] for a, c in calls.items() if not a.startswith("Describe")}
    describe = {a: c["total"] for a, c in calls.items() if a.startswith("Describe")}
    errors = sum(c["total"] - c["ok"] for c in calls.values())
    mut = sum(pool_calls.values())
    d = sum(describe.values())
    in_use, idle, neni, wmin, wmax = "$churn_pool".split()
    reclaim = "idle_ip_reclaim_after $CHURN_RECLAIM" if "$CHURN_RECLAIM" else "default idle_ip_reclaim_after"
    print("3. OpenAPI calls over a churn of $CHURN ADDs (live pods kept in [$CHURN_LOW, $CHURN_HIGH], seed $SEED, "
          f"default watermarks (min_pool_size {wmin}, max_pool_size {wmax}), {reclaim}, no emulated latency; took {$churn_ms / 1000:.1f} s)")
    print(f"   pool calls      {mut:5d}  " + (", ".join(f"{a} {c}" for a, c in pool_calls.items()) or "none"))
    print(f"   Describe calls  {d:5d}  " + (", ".join(f"{a} {c}" for a, c in describe.items()) or "none"))
    print(f"   failed calls    {errors:5d}")
    print(f"   pool calls per pod      {mut / $CHURN:.3f}   target <= 0.2  {verdict(mut / $CHURN <= 0.2)}")
    print(f"   Describe calls per pod  {d / $CHURN:.3f}")
    print(f"   after the churn: {in_use} pods, {idle} idle addresses, {neni} ENIs")
    print()

if "4" in "$PARTS":
    print("4. daemon memory (VmRSS of the daemon process)")
    print(f"   idle daemon, 0 pods     {$rss_idle / 1024:6.1f} MiB   ($threads_idle threads)")
    print(f"   $rss_in_use pods (capacity $capacity)  {$rss_pods / 1024:6.1f} MiB   (peak VmHWM {$hwm_pods / 1024:.1f} MiB, $threads_pods threads)")
    print(f"   targets: idle <= 5 MiB {verdict($rss_idle <= 5 * 1024)}, $RSS_PODS pods <= 10 MiB {verdict($rss_pods <= 10 * 1024)}")
    if "3" in "$PARTS":
        print(f"   (part 3's daemon after its churn, {in_use} pods: {$rss_churn / 1024:.1f} MiB)")
    print()
print(f"total run time {(${T_END/./} - ${T_START/./}) / 1e6:.0f} s")
PY
