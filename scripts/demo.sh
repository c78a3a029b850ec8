#!/usr/bin/env bash
# The demo, as root on a fresh Debian machine.
#
#   scripts/demo.sh [shared]  shared ENI mode (ENIMultiIP, the default): `terway emulate --netns`
#                          builds a VPC with two ECS instances in network namespaces; a terway
#                          daemon per node creates, attaches and fills ENIs through the signed
#                          OpenAPI; six pods (a Deployment's replicas) get VPC addresses through
#                          real CNI ADDs and ping each other across nodes through the VPC;
#                          `terway mapping` on each node; DEL and a full clean-up.
#   scripts/demo.sh eni    exclusive ENI mode (ENIOnly) on the same emulated VPC: four pods, two
#                          per node, each takes a whole ENI whose device becomes its eth0, plus
#                          veth1 to its node for the service CIDR and node traffic; pings across
#                          nodes, to the node and to a service address; `terway pool`/`mapping`.
#   scripts/demo.sh vpc    VPC mode on the same emulated VPC: each node owns a pod CIDR and its
#                          daemon keeps the VPC route entry to it (vpc_route); four pods ping
#                          across nodes; terway pool shows the routes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 iputils-ping procps gcc
MODE=${1:-shared}
case "$MODE" in shared | eni | vpc) ;; *) echo "usage: $0 [shared|eni|vpc]" >&2; exit 2 ;; esac
[ "$MODE" = shared ] || ensure_packages python3   # edits the emulator's node configs

echo "==> building terway"
cargo build --quiet
BIN="$PWD/target/debug/terway"
WORK=$(mktemp -d /tmp/terway-demo.XXXXXX)
DAEMONS=()
PODS=()
EMU_PID=

cleanup() {
    set +e
    for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for p in "${PODS[@]}"; do ip netns del "$p" 2>/dev/null; done
    # TERM: the emulator removes the VPC and node namespaces it built.
    [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null && wait "$EMU_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
# Leftovers of an interrupted earlier run.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^twdemo-' || true); do ip netns del "$ns"; done
"$BIN" emulate --vpc-netns twdemo-vpc --cleanup >/dev/null 2>&1 || true

# cni COMMAND NODE_NS SOCKET POD_NS POD_NAME
cni() {
    echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$3\"}" |
        ip netns exec "$2" env CNI_COMMAND="$1" CNI_CONTAINERID="$5" CNI_NETNS="/run/netns/$4" \
            CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$5" "$BIN"
}

# start_daemon NODE_NS CONFIG SOCKET LOG
start_daemon() {
    echo "==> ip netns exec $1 terway daemon --config $2"
    ip netns exec "$1" "$BIN" daemon --config "$2" 2>"$4" &
    DAEMONS+=($!)
    for _ in $(seq 300); do
        "$BIN" pool --socket "$3" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$4"
    return 1
}

ping_from() { # ping_from NS TARGET LABEL
    if ip netns exec "$1" ping -c 1 -W 2 "$2" >/dev/null; then echo "    ok   $3"; else echo "    FAIL $3"; return 1; fi
}

declare -A IP NODE SOCK
add_pod() { # add_pod NAME NODE_NS SOCKET
    ip netns add "$1"
    PODS+=("$1")
    local out
    if ! out=$(cni ADD "$2" "$3" "$1" "${1#twdemo-}"); then
        echo "ADD for $1 failed: $out"; cat "$WORK"/*.log; exit 1
    fi
    IP[$1]=$(echo "$out" | sed -n 's/.*"address":"\([0-9.]*\)\/[0-9]*".*/\1/p')
    NODE[$1]=$2
    SOCK[$1]=$3
}

print_pods() {
    printf '\n%-24s %-7s %-9s %-14s %s\n' NAME READY STATUS IP NODE
    for p in "${PODS[@]}"; do printf '%-24s %-7s %-9s %-14s %s\n' "${p#twdemo-}" 1/1 Running "${IP[$p]}" "${NODE[$p]}"; done
    echo
}

# The emulated VPC: `terway emulate --netns` with two ECS instances; sets NODES to their
# namespaces (one daemon config per node in $WORK/nodes).
start_emulated_vpc() {
    echo "==> terway emulate --netns: a VPC with two ECS instances in network namespaces"
    "$BIN" emulate --netns --vpc-netns twdemo-vpc --listen 127.0.0.1:0 \
        --node-configs "$WORK/nodes" >"$WORK/emulate.out" 2>"$WORK/emulate.log" &
    EMU_PID=$!
    local confs=() c
    for _ in $(seq 100); do
        confs=("$WORK"/nodes/*.json)
        [ -e "${confs[1]:-}" ] && break
        sleep 0.1
    done
    if [ ! -e "${confs[1]:-}" ]; then
        echo "the emulator did not start:"; cat "$WORK/emulate.log"; exit 1
    fi
    sed 's/^/    /' "$WORK/emulate.out"
    NODES=()
    for c in "${confs[@]}"; do c=${c##*/}; NODES+=("${c%.json}"); done
}
node_sock() { echo "$WORK/nodes/$1/terway.sock"; }
node_ip() { ip -n "$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }
# set_node_keys NODE JSON: merges keys into the daemon config the emulator wrote for NODE.
set_node_keys() {
    python3 -c '
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c.update(json.loads(sys.argv[2]))
json.dump(c, open(p, "w"), indent=1)' "$WORK/nodes/$1.json" "$2"
}
start_node_daemons() {
    for n in "${NODES[@]}"; do
        start_daemon "$n" "$WORK/nodes/$n.json" "$(node_sock "$n")" "$WORK/daemon-$n.log"
    done
}
# add_replicas DEPLOYMENT SUFFIX...: one pod per suffix, round robin over the nodes.
add_replicas() {
    local name=$1 i=0 n
    shift
    for suffix in "$@"; do
        n=${NODES[$((i % ${#NODES[@]}))]}
        add_pod "twdemo-$name-$suffix" "$n" "$(node_sock "$n")"
        i=$((i + 1))
    done
}
ping_pod() { # ping_pod FROM TO: pod to pod, labelled with both nodes
    ping_from "$1" "${IP[$2]}" "${1#twdemo-} (${NODE[$1]}) -> ${2#twdemo-} (${NODE[$2]}) ${IP[$2]}"
}
mapping_on() {
    echo "==> terway mapping on $1"
    ip netns exec "$1" "$BIN" mapping --socket "$(node_sock "$1")"
}
pool_on() {
    echo "==> terway pool on $1"
    "$BIN" pool --socket "$(node_sock "$1")"
}

demo_vpc() {
    # Each node owns a pod CIDR, and its daemon keeps the VPC route entry "pod CIDR -> this
    # instance" itself (vpc_route): no hand-made routes.
    start_emulated_vpc
    local i=1 n
    for n in "${NODES[@]}"; do
        set_node_keys "$n" "{\"daemon_mode\": \"VPC\", \"pod_cidr\": \"10.244.$i.0/24\", \"vpc_route\": true}"
        echo "==> $n: pod CIDR 10.244.$i.0/24, the daemon keeps its VPC route entry (vpc_route: true)"
        i=$((i + 1))
    done
    start_node_daemons
    for n in "${NODES[@]}"; do
        grep -h "VPC route entry" "$WORK/daemon-$n.log" | sed 's/^.*\] /    /'
    done
    echo "==> CNI ADD for four replicas of Deployment \"web\", spread over both nodes"
    add_replicas web 7f9c2 b4kx8 m2q5z x8h3d
    print_pods
    echo "==> inside ${PODS[0]#twdemo-} (on ${NODE[${PODS[0]}]}):"
    ip -n "${PODS[0]}" -4 addr show eth0 | sed 's/^/    /'
    ip -n "${PODS[0]}" route | sed 's/^/    /'
    echo "==> the VPC router: each pod CIDR goes to its node (route entries the daemons made)"
    ip -n twdemo-vpc route | grep '^10\.244\.' | sed 's/^/    /'
    echo "==> pings across the VPC"
    ping_pod "${PODS[0]}" "${PODS[1]}"
    ping_pod "${PODS[1]}" "${PODS[2]}"
    ping_pod "${PODS[3]}" "${PODS[0]}"
    local node_ip
    node_ip=$(node_ip "${NODES[1]}")
    ping_from "${PODS[0]}" "$node_ip" "${PODS[0]#twdemo-} -> node ${NODES[1]} ($node_ip)"
    ping_from "${NODES[1]}" "${IP[${PODS[0]}]}" "node ${NODES[1]} -> ${PODS[0]#twdemo-} (${IP[${PODS[0]}]})"
    mapping_on "${NODES[0]}"
    for n in "${NODES[@]}"; do pool_on "$n"; done
}

demo_shared() {
    start_emulated_vpc
    start_node_daemons
    echo "==> CNI ADD for six replicas of Deployment \"example\", spread over both nodes"
    add_replicas example 54v7g 6dzx5 gq7xs h9rvb s9fts swq6q
    print_pods
    echo "==> inside ${PODS[0]#twdemo-} (on ${NODE[${PODS[0]}]}):"
    ip -n "${PODS[0]}" -4 addr show eth0 | sed 's/^/    /'
    ip -n "${PODS[0]}" route | sed 's/^/    /'
    echo "==> on node ${NODES[0]}: the pod's traffic leaves through its ENI"
    ip -n "${NODES[0]}" rule | sed 's/^/    /'
    echo "==> pings across the VPC"
    local j a b
    for j in 0 1 2; do
        a=${PODS[$j]} b=${PODS[$((j + 3))]}
        [ "${NODE[$a]}" != "${NODE[$b]}" ] || b=${PODS[$(((j + 1) % 6))]}
        ping_pod "$a" "$b"
    done
    node_ip=$(node_ip "${NODES[1]}")
    ping_from "${PODS[0]}" "$node_ip" "${PODS[0]#twdemo-} -> node ${NODES[1]} ($node_ip)"
    for n in "${NODES[@]}"; do mapping_on "$n"; done
    pool_on "${NODES[0]}"
}

SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.10
demo_eni() {
    start_emulated_vpc
    echo "==> daemon configs: daemon_mode ENIOnly, service_cidr $SERVICE_CIDR"
    for n in "${NODES[@]}"; do
        set_node_keys "$n" "{\"daemon_mode\": \"ENIOnly\", \"service_cidr\": \"$SERVICE_CIDR\"}"
        # kube-proxy's part, played by an address in the node's own stack.
        ip -n "$n" addr add "$SERVICE_IP/32" dev lo
    done
    echo "    and service $SERVICE_IP on each node's lo (standing in for kube-proxy)"
    start_node_daemons
    echo "==> CNI ADD for four replicas of Deployment \"db\", two per node: each takes a whole ENI"
    echo "    (an empty pool: each ADD waits while the daemon creates and attaches an ENI)"
    add_replicas db 7f9c2 kq4mz r2xwd t8bnl
    print_pods
    local a=${PODS[0]} b=${PODS[1]} c=${PODS[2]} mac
    mac=$(ip -n "$a" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    echo "==> inside ${a#twdemo-} (on ${NODE[$a]}): eth0 is the ENI with MAC $mac"
    "$BIN" pool --json --socket "${SOCK[$a]}" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["eni"]["enis"]:
    if e["mac"] == sys.argv[1]:
        print("    (%s in the pool of %s, primary IP %s)" % (e["id"], sys.argv[2], e["primary_ip"]))' "$mac" "${NODE[$a]}"
    ip -n "$a" addr show eth0 | sed 's/^/    /'
    ip -n "$a" addr show veth1 | sed 's/^/    /'
    ip -n "$a" route | sed 's/^/    /'
    echo "==> pings"
    ping_pod "$a" "$b"
    ping_pod "$b" "$c"
    ping_pod "$a" "$c"
    node_ip=$(node_ip "${NODE[$a]}")
    ping_from "$a" "$node_ip" "${a#twdemo-} -> its node ${NODE[$a]} ($node_ip) via veth1"
    ping_from "$a" "$SERVICE_IP" "${a#twdemo-} -> service $SERVICE_IP (${NODE[$a]}'s lo) via veth1"
    ping_from "${NODE[$b]}" "${IP[$b]}" "node ${NODE[$b]} -> ${b#twdemo-} ${IP[$b]}"
    pool_on "${NODES[0]}"
    mapping_on "${NODES[0]}"
}

"demo_$MODE"

echo "==> CNI DEL"
for p in "${PODS[@]}"; do cni DEL "${NODE[$p]}" "${SOCK[$p]}" "$p" "${p#twdemo-}"; done
echo "==> done; cleaning up"
