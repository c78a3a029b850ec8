#!/usr/bin/env bash
# Times CNI ADD and DEL of terway (VPC mode) and of Debian's reference ptp + host-local in the
# same run on this machine: a fresh pod namespace per iteration, every plugin exec'd from a
# shell inside one node namespace. Prints medians and the ratio terway/ptp. Run as root.
# BASE_BIN=path adds a second terway build (e.g. main's), with its own daemon, interleaved in
# the same loop: a before/after comparison that load changes between runs cannot skew.
#   [TERWAY_BIN=path] [BASE_BIN=path] N=50 scripts/bench-cni.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 containernetworking-plugins procps gcc
N=${N:-50}
REF=/usr/lib/cni
[ -x "$REF/ptp" ] || { echo "reference plugins not found in $REF" >&2; exit 1; }

bench_binary
kernel_floor_binary

NODE=twbench-node-$$
WORK=$(mktemp -d /tmp/terway-bench.XXXXXX)
DAEMON_PID=
BASE_PID=
BASE=${BASE_BIN:+$(realpath "$BASE_BIN")}
cleanup() {
    set +e
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    [ -n "$BASE_PID" ] && kill "$BASE_PID" 2>/dev/null && wait "$BASE_PID" 2>/dev/null
    for i in $(seq "$N"); do for l in t p b; do ip netns del "twbench-$l$i-$$" 2>/dev/null; done; done
    ip netns del "$NODE" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip -n "$NODE" addr add 192.168.251.1/32 dev lo
for i in $(seq "$N"); do for l in t p b; do ip netns add "twbench-$l$i-$$"; done; done

cat > "$WORK/eni.json" <<JSON
{"daemon_mode": "VPC", "pod_cidr": "10.252.0.0/16", "socket_path": "$WORK/terway.sock", "state_path": "$WORK/state.json"}
JSON
ip netns exec "$NODE" "$BIN" daemon --config "$WORK/eni.json" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$WORK/terway.sock" ] && break; sleep 0.05; done
if [ -n "$BASE" ]; then
    echo "==> base terway binary: $BASE ($(stat -c %s "$BASE") bytes)"
    mkdir -p "$WORK/base"   # its own directory: the metrics socket and locks live beside the socket
    cat > "$WORK/base.json" <<JSON
{"daemon_mode": "VPC", "pod_cidr": "10.251.0.0/16", "socket_path": "$WORK/base/base.sock", "state_path": "$WORK/base/state.json"}
JSON
    ip netns exec "$NODE" "$BASE" daemon --config "$WORK/base.json" 2>"$WORK/base-daemon.log" &
    BASE_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/base/base.sock" ] && break; sleep 0.05; done
    [ -S "$WORK/base/base.sock" ] || { echo "base daemon did not start: $(cat "$WORK/base-daemon.log")" >&2; exit 1; }
fi
echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$WORK/base/base.sock\"}" > "$WORK/base.conf"

echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$WORK/terway.sock\"}" > "$WORK/terway.conf"
echo "{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"ptp\",\"ipMasq\":false,\"mtu\":1500,
  \"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.253.0.0/16\",\"dataDir\":\"$WORK/host-local\"}}" > "$WORK/ptp.conf"

# The timed loop runs inside the node namespace so nothing but the plugin is measured.
cat > "$WORK/inner.sh" <<'INNER'
set -euo pipefail
N=$1 WORK=$2 BIN=$3 REF=$4 PID=$5 BASE=$6
run() { # run PLUGIN CONF CMD ID NETNS -> microseconds
    local t0 t1
    t0=$EPOCHREALTIME
    CNI_COMMAND=$3 CNI_CONTAINERID=$4 CNI_NETNS=$5 CNI_IFNAME=eth0 CNI_PATH=$REF \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$4" "$1" < "$2" > "$WORK/out" ||
        { echo "$1 $3 failed: $(cat "$WORK/out")" >&2; exit 1; }
    t1=$EPOCHREALTIME
    echo $(( (${t1/./} - ${t0/./}) ))
}
for i in $(seq "$N"); do
    echo "terway ADD $(run "$BIN" "$WORK/terway.conf" ADD "bench-t$i" "/run/netns/twbench-t$i-$PID")"
    echo "ptp ADD $(run "$REF/ptp" "$WORK/ptp.conf" ADD "bench-p$i" "/run/netns/twbench-p$i-$PID")"
    [ -z "$BASE" ] || echo "base ADD $(run "$BASE" "$WORK/base.conf" ADD "bench-b$i" "/run/netns/twbench-b$i-$PID")"
done
for i in $(seq "$N"); do
    echo "terway DEL $(run "$BIN" "$WORK/terway.conf" DEL "bench-t$i" "/run/netns/twbench-t$i-$PID")"
    echo "ptp DEL $(run "$REF/ptp" "$WORK/ptp.conf" DEL "bench-p$i" "/run/netns/twbench-p$i-$PID")"
    [ -z "$BASE" ] || echo "base DEL $(run "$BASE" "$WORK/base.conf" DEL "bench-b$i" "/run/netns/twbench-b$i-$PID")"
done
INNER
echo "==> $N ADDs and $N DELs each, interleaved"
ip netns exec "$NODE" bash "$WORK/inner.sh" "$N" "$WORK" "$BIN" "$REF" "$$" "$BASE" > "$WORK/times"
kill "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null; DAEMON_PID=
if [ -n "$BASE_PID" ]; then kill "$BASE_PID" && wait "$BASE_PID" 2>/dev/null; BASE_PID=; fi
ip netns exec "$NODE" "$FLOOR" "$N" > "$WORK/floor"

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
printf '\n%-6s %14s %14s %8s\n' op "terway (us)" "ptp+host-local" ratio
for op in ADD DEL; do
    t=$(awk -v op=$op '$1=="terway" && $2==op {print $3}' "$WORK/times" | median)
    p=$(awk -v op=$op '$1=="ptp" && $2==op {print $3}' "$WORK/times" | median)
    printf '%-6s %14s %14s %8s\n' "$op" "$t" "$p" "$(awk -v t="$t" -v p="$p" 'BEGIN {printf "%.2f", t/p}')"
done
if [ -n "$BASE" ]; then
    for op in ADD DEL; do
        b=$(awk -v op=$op '$1=="base" && $2==op {print $3}' "$WORK/times" | median)
        p=$(awk -v op=$op '$1=="ptp" && $2==op {print $3}' "$WORK/times" | median)
        printf '%-6s %14s %14s %8s  (base build)\n' "$op" "$b" "$p" "$(awk -v t="$b" -v p="$p" 'BEGIN {printf "%.2f", t/p}')"
    done
fi
echo "(medians of $N runs; ratio = terway / ptp, lower is better; targets ADD <= 0.35, DEL <= 0.50)"
for op in ADD DEL; do
    t=$(awk -v op=$op '$1=="terway" && $2==op {print $3}' "$WORK/times" | median)
    p=$(awk -v op=$op '$1=="ptp" && $2==op {print $3}' "$WORK/times" | median)
    f=$(awk -v op=$op '$1=="floor" && $2==op {print $3}' "$WORK/floor")
    echo "kernel floor $op $f us (netlink only, one running program): terway/floor $(awk -v t="$t" -v f="$f" 'BEGIN {printf "%.2f", t/f}'), ptp/floor $(awk -v p="$p" -v f="$f" 'BEGIN {printf "%.2f", p/f}')"
done
