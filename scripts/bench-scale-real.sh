#!/usr/bin/env bash
# Sanity check of the cluster-scale simulation with real processes: NODES terway daemons (one per
# emulated ecs.g7.4xlarge instance, each in its instance namespace of `terway emulate --netns`)
# against one emulator whose region-wide per-second rate limits stand for the simulation's
# per-minute budgets. PODS pods per node are asked for at once over the daemons' RPC (the address
# allocation a CNI ADD makes; no pod datapath), a failed ask is retried after 10-15 s as the
# kubelet does. Prints time to ready (p50/p99/max), calls per pod by action and throttled calls
# from the emulator's audit, then the simulation of the same scenario for comparison.
# Run as root (BIN=path uses a built terway instead of building one); it takes several minutes:
#   NODES=200 PODS=50 RATE=3 ASSIGN_RATE=4 DESCRIBE_RATE=10 scripts/bench-scale-real.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 python3 curl

NODES=${NODES:-200}
PODS=${PODS:-50}
RATE=${RATE:-3}                    # calls/s region-wide: ENI create/attach/detach/delete, DescribeVSwitches
ASSIGN_RATE=${ASSIGN_RATE:-4}      # calls/s: Assign/UnassignPrivateIpAddresses
DESCRIBE_RATE=${DESCRIBE_RATE:-10} # calls/s: DescribeNetworkInterfaces
API_MS=${API_MS:-50}               # latency of every call
ATTACH_MS=${ATTACH_MS:-1500}
VPC_NS=twscale-vpc
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=$PWD/target/release/terway
fi
STATE_DIR=/run/terway-bench-scale
mkdir -p "$STATE_DIR"

stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do [ -e "/proc/$1" ] || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    set +e
    if [ -f "$STATE_DIR/pids" ]; then
        # Daemons first, the emulator (which removes its namespaces on TERM) last.
        for pid in $(tac "$STATE_DIR/pids"); do stop_pid "$pid"; done
        rm -f "$STATE_DIR/pids"
    fi
    "$BIN" emulate --cleanup --vpc-netns "$VPC_NS" > /dev/null 2>&1
    ip netns del twscale-pods 2> /dev/null
    [ -n "${KEEP:-}" ] || rm -rf "${WORK:-/nonexistent}"
}
cleanup
WORK=$(mktemp -d /tmp/twscale.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN" emulate --print-config | python3 -c '
import json, sys
c = json.load(sys.stdin)
n = int(sys.argv[2])
inst = next(i for i in c["instances"] if i["instance_type"] == "ecs.g7.4xlarge")
c["instances"] = [dict(inst, id="i-twscale%012d" % k) for k in range(n)]
c["vswitches"][0]["cidr"] = "172.16.0.0/17"
c["timing"] = {"attach_delay_ms": int(sys.argv[3]), "detach_delay_ms": int(sys.argv[3]),
               "metadata_lag_ms": 1000, "delete_delay_ms": 1000}
json.dump(c, open(sys.argv[1], "w"), indent=1)
' "$WORK/region.json" "$NODES" "$ATTACH_MS"

echo "==> emulated VPC with $NODES instances"
"$BIN" emulate --netns --listen 127.0.0.1:0 --vpc-netns "$VPC_NS" --config "$WORK/region.json" \
    --threads 8 --max-connections 1024 --node-configs "$WORK/nodes" \
    > "$WORK/emulate.out" 2> "$WORK/emulate.log" 9>&- &
echo $! >> "$STATE_DIR/pids"
ADDR=
for _ in $(seq 600); do
    ADDR=$(sed -n '1s/^listening on //p' "$WORK/emulate.out" 2>/dev/null)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "emulator did not start: $(tail "$WORK/emulate.log")" >&2; exit 1; }
admin() { curl -sS --fail-with-body -X "$1" ${3:+--data "$3"} "http://$ADDR$2"; }

echo "==> $NODES daemons"
for c in "$WORK"/nodes/*.json; do
    i=$(basename "$c" .json)
    ip netns exec "$i" "$BIN" daemon --config "$c" 2> "$WORK/daemon-$i.log" 9>&- &
    echo $! >> "$STATE_DIR/pids"
done
for c in "$WORK"/nodes/*.json; do
    sock=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket_path"])' "$c")
    for _ in $(seq 1200); do "$BIN" pool --socket "$sock" > /dev/null 2>&1 && break; sleep 0.1; done
    "$BIN" pool --socket "$sock" > /dev/null || { echo "daemon of $c did not come up" >&2; exit 1; }
done

# The region-wide limits (per second) and latency only now: daemon start-up is not measured.
admin PUT /admin/faults "{\"latency_ms\": {\"*\": $API_MS}, \"rate_limits\": {
  \"CreateNetworkInterface\": $RATE, \"AttachNetworkInterface\": $RATE,
  \"DetachNetworkInterface\": $RATE, \"DeleteNetworkInterface\": $RATE,
  \"DescribeVSwitches\": $RATE, \"DescribeNetworkInterfaces\": $DESCRIBE_RATE,
  \"AssignPrivateIpAddresses\": $ASSIGN_RATE, \"UnassignPrivateIpAddresses\": $ASSIGN_RATE}}" > /dev/null
admin DELETE /admin/calls > /dev/null

ip netns add twscale-pods   # the one namespace every pod names (no datapath is wired)
echo "==> $((NODES * PODS)) pods at once"
python3 - "$WORK/nodes" "$PODS" > "$WORK/ready.txt" <<'PY'
import json, os, random, socket, sys, threading, time
nodes = sorted(os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]) if f.endswith(".json"))
pods = int(sys.argv[2])
socks = [json.load(open(n))["socket_path"] for n in nodes]
t0 = time.monotonic()
out, lock = [], threading.Lock()
def alloc(sock, pod):
    req = {"op": "alloc", "key": {"network": "terway", "container_id": pod, "ifname": "eth0"},
           "pod": {"namespace": "default", "name": pod, "uid": ""},
           # A namespace that exists: the daemon's orphan sweep releases pods whose is gone.
           "netns": "/run/netns/twscale-pods"}
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)
    try:
        s.connect(sock)
        s.sendall(json.dumps(req).encode())
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
    finally:
        s.close()
    r = json.loads(buf)
    return "Ok" in r or "ok" in r or ("Err" not in r and "err" not in r and "error" not in r)
def pod(sock, name):
    adds = 0
    while True:
        adds += 1
        try:
            ok = alloc(sock, name)
        except Exception:
            ok = False
        if ok:
            with lock:
                out.append((time.monotonic() - t0, adds))
            return
        time.sleep(10 + random.random() * 5)   # the kubelet's back-off
threads = [threading.Thread(target=pod, args=(s, "p%d-%d" % (k, j)))
           for k, s in enumerate(socks) for j in range(pods)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for t, a in sorted(out):
    print("%.3f %d" % (t, a))
PY
admin GET /admin/calls > "$WORK/calls.json"
python3 - "$WORK/ready.txt" "$WORK/calls.json" "$((NODES * PODS))" <<'PY'
import json, sys
ready = [float(l.split()[0]) for l in open(sys.argv[1])]
adds = sum(int(l.split()[1]) for l in open(sys.argv[1]))
n = int(sys.argv[3])
pct = lambda p: ready[round((len(ready) - 1) * p)]
print("real daemons: %d pods ready of %d; p50 %.1f s, p99 %.1f s, max %.1f s; kubelet ADDs %d"
      % (len(ready), n, pct(0.5), pct(0.99), ready[-1], adds))
calls = json.load(open(sys.argv[2]))
calls = calls.get("calls", calls)
print("%-28s %8s %9s %9s" % ("action", "accepted", "per_pod", "throttled"))
tot = 0
for action, c in sorted(calls.items()):
    thr = c.get("errors", {}).get("Throttling.User", 0)
    ok = c["total"] - thr
    tot += ok
    print("%-28s %8d %9.4f %9d" % (action, ok, ok / n, thr))
print("%-28s %8d %9.4f" % ("all", tot, tot / n))
PY
# Ramp 0: a node's 50 asks come from threads started one after another, within milliseconds, so
# all of them wait when its first create is planned and the creates carry the whole claim (the
# real run makes ~0.01 assigns per pod); a ramp of seconds would spread them and cost assigns.
echo "==> the simulation of the same scenario (cold scale-up rows compare)"
PER_MIN() { echo $(( $1 * 60 )); }
cargo bench --quiet --bench scale -- --nodes "$NODES" --pods "$PODS" --policy pool \
    --ramp-s "${RAMP_S:-0}" --api-ms "$API_MS" --attach-ms "$ATTACH_MS" --emulator-windows \
    --limit CreateNetworkInterface="$(PER_MIN "$RATE")" --limit AttachNetworkInterface="$(PER_MIN "$RATE")" \
    --limit DetachNetworkInterface="$(PER_MIN "$RATE")" --limit DeleteNetworkInterface="$(PER_MIN "$RATE")" \
    --limit DescribeVSwitches="$(PER_MIN "$RATE")" \
    --limit DescribeNetworkInterfaces="$(PER_MIN "$DESCRIBE_RATE")" \
    --limit AssignPrivateIpAddresses="$(PER_MIN "$ASSIGN_RATE")" \
    --limit UnassignPrivateIpAddresses="$(PER_MIN "$ASSIGN_RATE")" | sed -n '1,8p;/^cold scale-up  /p'
