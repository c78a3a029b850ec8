#!/usr/bin/env bash
# Dual stack's cost on the pod start path, in one run: warm-pool CNI ADD and DEL of shared ENI
# mode with `ip_stack: dual` vs the same with `ipv4`, and Debian's ptp + host-local as the
# reference; medians of N plugin execs each (fresh pod netns each, plugins interleaved pod by
# pod, min_pool_size N so no ADD waits for the cloud) on the emulated VPC (`terway emulate
# --netns`, no emulated cloud latency). Run as root:  N=40 scripts/bench-dual.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 containernetworking-plugins python3 procps

N=${N:-40}
REF=/usr/lib/cni
[ -x "$REF/ptp" ] && [ -x "$REF/host-local" ] || { echo "reference plugins not found in $REF" >&2; exit 1; }
bench_binary

# Fixed names (twdual-*, i-twdual*) so that leftovers of a crashed run are found and removed.
V4=i-twdual4 DUAL=i-twdual6 VPC_NS=twdual-vpc
WORK=
PIDS=()
cleanup() {
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done
    for ns in $(ip netns list | awk '{print $1}' | grep -E '^(twdual-|i-twdual)'); do ip netns del "$ns"; done
    [ -z "$WORK" ] || rm -rf "$WORK"
}
cleanup
WORK=$(mktemp -d /tmp/twdual.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "$*" >&2; exit 1; }
json_get() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

"$BIN" emulate --print-config | python3 -c '
import json, sys
c = json.load(sys.stdin)
inst = next(i for i in c["instances"] if i["instance_type"] == "ecs.g7.4xlarge")
c["instances"] = [dict(inst, id=i) for i in sys.argv[2:]]
c["vswitches"][0]["cidr"] = "172.16.0.0/20"
c["timing"] = {"attach_delay_ms": 0, "detach_delay_ms": 0, "metadata_lag_ms": 0}
json.dump(c, open(sys.argv[1], "w"))
' "$WORK/region.json" "$V4" "$DUAL"
"$BIN" emulate --netns --listen 127.0.0.1:0 --vpc-netns "$VPC_NS" --config "$WORK/region.json" \
    --node-configs "$WORK/nodes" > "$WORK/emulate.out" 2> "$WORK/emulate.log" &
PIDS+=($!)
for i in $V4 $DUAL; do
    for _ in $(seq 200); do [ -f "$WORK/nodes/$i.json" ] && break; sleep 0.1; done
    [ -f "$WORK/nodes/$i.json" ] || fail "emulator wrote no node config for $i: $(cat "$WORK/emulate.log")"
done
sock() { json_get 'd["socket_path"]' < "$WORK/nodes/$1.json"; }
for i in $V4 $DUAL; do
    stack=ipv4
    [ "$i" = "$DUAL" ] && stack=dual
    python3 -c '
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c.update({"ip_stack": sys.argv[2], "min_pool_size": int(sys.argv[3]), "max_pool_size": int(sys.argv[3]) + 10})
json.dump(c, open(p, "w"))' "$WORK/nodes/$i.json" "$stack" "$N"
    ip netns exec "$i" "$BIN" daemon --config "$WORK/nodes/$i.json" 2> "$WORK/daemon-$i.log" &
    PIDS+=($!)
    echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$(sock "$i")\"}" > "$WORK/$i.conf"
done
for i in $V4 $DUAL; do
    idle=0
    for _ in $(seq 600); do
        idle=$("$BIN" pool --json --socket "$(sock "$i")" 2>/dev/null | json_get 'd["idle"]' || echo 0)
        [ "$idle" -ge "$N" ] && break
        sleep 0.1
    done
    [ "$idle" -ge "$N" ] || fail "the pool of $i did not warm up ($idle of $N): $(tail -5 "$WORK/daemon-$i.log")"
done
echo "{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"ptp\",\"ipMasq\":false,
  \"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.253.0.0/16\",\"dataDir\":\"$WORK/host-local\"}}" > "$WORK/ptp.conf"

# one LABEL NODE PLUGIN CONF OP I: one timed plugin exec in NODE's namespace, "LABEL OP us"
one() {
    local t0 t1
    t0=$EPOCHREALTIME
    ip netns exec "$2" env CNI_COMMAND="$5" CNI_CONTAINERID="$1-$6" CNI_NETNS="/run/netns/twdual-$1$6" \
        CNI_IFNAME=eth0 CNI_PATH="$REF" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$1-$6" \
        "$3" < "$4" > "$WORK/out" || fail "$1 $5 $6: $(cat "$WORK/out")"
    t1=$EPOCHREALTIME
    [ "$1" != 6 ] || [ "$5" != ADD ] || grep -q '"address": *"[0-9a-f:]*:[0-9a-f:]*/' "$WORK/out" ||
        fail "dual-stack ADD without an IPv6: $(cat "$WORK/out")"
    echo "$1 $5 $(( ${t1/./} - ${t0/./} ))"
}
echo "==> $N ADDs and DELs per plugin, interleaved"
for i in $(seq "$N"); do
    for l in 4 6 p; do ip netns add "twdual-$l$i"; done
    one 4 "$V4" "$BIN" "$WORK/$V4.conf" ADD "$i"
    one 6 "$DUAL" "$BIN" "$WORK/$DUAL.conf" ADD "$i"
    one p "$V4" "$REF/ptp" "$WORK/ptp.conf" ADD "$i"
done >> "$WORK/times"
for i in $(seq "$N"); do
    one 4 "$V4" "$BIN" "$WORK/$V4.conf" DEL "$i"
    one 6 "$DUAL" "$BIN" "$WORK/$DUAL.conf" DEL "$i"
    one p "$V4" "$REF/ptp" "$WORK/ptp.conf" DEL "$i"
    for l in 4 6 p; do ip netns del "twdual-$l$i"; done
done >> "$WORK/times"
python3 - "$WORK/times" "$N" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    k, op, us = line.split()
    t.setdefault((k, op), []).append(int(us) / 1000)
print()
print(f"warm-pool CNI latency, shared ENI mode, medians of {sys.argv[2]} execs (ms)")
print(f"  {'op':<4} {'ipv4':>7} {'dual':>7} {'ptp+host-local':>15} {'dual/ipv4':>10} {'ipv4/ptp':>9} {'dual/ptp':>9}")
for op in ("ADD", "DEL"):
    v4, v6, p = (statistics.median(t[(k, op)]) for k in ("4", "6", "p"))
    print(f"  {op:<4} {v4:>7.2f} {v6:>7.2f} {p:>15.2f} {v6 / v4:>10.2f} {v4 / p:>9.2f} {v6 / p:>9.2f}")
PY
