#!/usr/bin/env bash
# The demo, as root on a fresh Debian machine.
#
#   scripts/demo.sh        shared ENI mode (default): `terway emulate --netns` builds a VPC with
#                          two ECS instances in network namespaces; a terway daemon per node
#                          creates, attaches and fills ENIs through the signed OpenAPI; six pods
#                          (a Deployment's replicas) get VPC addresses through real CNI ADDs and
#                          ping each other across nodes through the VPC; `terway mapping` on
#                          each node; DEL and a full clean-up.
#   scripts/demo.sh vpc    VPC mode: one node, pods from the node's pod CIDR.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 iputils-ping procps gcc
MODE=${1:-eni}
case "$MODE" in eni | vpc) ;; *) echo "usage: $0 [eni|vpc]" >&2; exit 2 ;; esac

echo "==> building terway"
cargo build --quiet
BIN="$PWD/target/debug/terway"
WORK=$(mktemp -d /tmp/terway-demo.XXXXXX)
DAEMONS=()
PODS=()
EMU_PID=
VPC_NODE=twdemo-node

cleanup() {
    set +e
    for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for p in "${PODS[@]}"; do ip netns del "$p" 2>/dev/null; done
    # TERM: the emulator removes the VPC and node namespaces it built.
    [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null && wait "$EMU_PID" 2>/dev/null
    ip netns del "$VPC_NODE" 2>/dev/null
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
    IP[$1]=$(echo "$out" | sed -n 's/.*"address":"\([0-9.]*\)\/32".*/\1/p')
    NODE[$1]=$2
    SOCK[$1]=$3
}

print_pods() {
    printf '\n%-24s %-7s %-9s %-14s %s\n' NAME READY STATUS IP NODE
    for p in "${PODS[@]}"; do printf '%-24s %-7s %-9s %-14s %s\n' "${p#twdemo-}" 1/1 Running "${IP[$p]}" "${NODE[$p]}"; done
    echo
}

if [ "$MODE" = vpc ]; then
    # VPC mode on the emulated VPC: each node owns a pod CIDR, and its daemon keeps the VPC
    # route entry "pod CIDR -> this instance" itself (vpc_route): no hand-made routes.
    echo "==> terway emulate --netns: a VPC with two ECS instances in network namespaces"
    "$BIN" emulate --netns --vpc-netns twdemo-vpc --listen 127.0.0.1:0 \
        --node-configs "$WORK/nodes" >"$WORK/emulate.out" 2>"$WORK/emulate.log" &
    EMU_PID=$!
    for _ in $(seq 100); do [ "$(ls "$WORK"/nodes/*.json 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.1; done
    if [ "$(ls "$WORK"/nodes/*.json 2>/dev/null | wc -l)" -lt 2 ]; then
        echo "the emulator did not start:"; cat "$WORK/emulate.log"; exit 1
    fi
    sed 's/^/    /' "$WORK/emulate.out"
    mapfile -t NODES < <(ls "$WORK"/nodes/*.json | xargs -n1 basename | sed 's/\.json$//')
    declare -A CIDR
    i=1
    for n in "${NODES[@]}"; do
        CIDR[$n]=10.244.$i.0/24
        # The emulator writes shared-ENI configs (one key a line): VPC mode instead.
        sed -i "s#\"daemon_mode\": \"ENIMultiIP\",#\"daemon_mode\": \"VPC\", \"pod_cidr\": \"${CIDR[$n]}\", \"vpc_route\": true,#" \
            "$WORK/nodes/$n.json"
        grep -q '"vpc_route": true' "$WORK/nodes/$n.json" || { echo "cannot edit $WORK/nodes/$n.json"; exit 1; }
        echo "==> $n: pod CIDR ${CIDR[$n]}, the daemon keeps its VPC route entry (vpc_route: true)"
        i=$((i + 1))
    done
    for n in "${NODES[@]}"; do
        start_daemon "$n" "$WORK/nodes/$n.json" "$WORK/nodes/$n/terway.sock" "$WORK/daemon-$n.log"
        grep -h "VPC route entry" "$WORK/daemon-$n.log" | sed 's/^.*\] /    /'
    done
    echo "==> CNI ADD for four replicas of Deployment \"web\", spread over both nodes"
    i=0
    for suffix in 7f9c2 b4kx8 m2q5z x8h3d; do
        n=${NODES[$((i % 2))]}
        add_pod "twdemo-web-$suffix" "$n" "$WORK/nodes/$n/terway.sock"
        i=$((i + 1))
    done
    print_pods
    echo "==> inside ${PODS[0]#twdemo-} (on ${NODE[${PODS[0]}]}):"
    ip -n "${PODS[0]}" -4 addr show eth0 | sed 's/^/    /'
    ip -n "${PODS[0]}" route | sed 's/^/    /'
    echo "==> the VPC router: each pod CIDR goes to its node (route entries the daemons made)"
    ip -n twdemo-vpc route | grep '^10\.244\.' | sed 's/^/    /'
    echo "==> pings across the VPC"
    for j in 0 1; do
        a=${PODS[$j]} b=${PODS[$((j + 1))]}
        ping_from "$a" "${IP[$b]}" "${a#twdemo-} (${NODE[$a]}) -> ${b#twdemo-} (${NODE[$b]}) ${IP[$b]}"
    done
    ping_from "${PODS[3]}" "${IP[${PODS[0]}]}" "${PODS[3]#twdemo-} (${NODE[${PODS[3]}]}) -> ${PODS[0]#twdemo-} (${NODE[${PODS[0]}]}) ${IP[${PODS[0]}]}"
    node_ip=$(ip -n "${NODES[1]}" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
    ping_from "${PODS[0]}" "$node_ip" "${PODS[0]#twdemo-} -> node ${NODES[1]} ($node_ip)"
    ping_from "${NODES[1]}" "${IP[${PODS[0]}]}" "node ${NODES[1]} -> ${PODS[0]#twdemo-} (${IP[${PODS[0]}]})"
    echo "==> terway mapping on ${NODES[0]}"
    "$BIN" mapping --socket "$WORK/nodes/${NODES[0]}/terway.sock"
    for n in "${NODES[@]}"; do
        echo "==> terway pool on $n"
        "$BIN" pool --socket "$WORK/nodes/$n/terway.sock"
    done
else
    echo "==> terway emulate --netns: a VPC with two ECS instances in network namespaces"
    "$BIN" emulate --netns --vpc-netns twdemo-vpc --listen 127.0.0.1:0 \
        --node-configs "$WORK/nodes" >"$WORK/emulate.out" 2>"$WORK/emulate.log" &
    EMU_PID=$!
    for _ in $(seq 100); do [ "$(ls "$WORK"/nodes/*.json 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.1; done
    if [ "$(ls "$WORK"/nodes/*.json 2>/dev/null | wc -l)" -lt 2 ]; then
        echo "the emulator did not start:"; cat "$WORK/emulate.log"; exit 1
    fi
    sed 's/^/    /' "$WORK/emulate.out"
    mapfile -t NODES < <(ls "$WORK"/nodes/*.json | xargs -n1 basename | sed 's/\.json$//')
    for n in "${NODES[@]}"; do
        start_daemon "$n" "$WORK/nodes/$n.json" "$WORK/nodes/$n/terway.sock" "$WORK/daemon-$n.log"
    done
    echo "==> CNI ADD for six replicas of Deployment \"example\", spread over both nodes"
    i=0
    for suffix in 54v7g 6dzx5 gq7xs h9rvb s9fts swq6q; do
        n=${NODES[$((i % 2))]}
        add_pod "twdemo-example-$suffix" "$n" "$WORK/nodes/$n/terway.sock"
        i=$((i + 1))
    done
    print_pods
    echo "==> inside ${PODS[0]#twdemo-} (on ${NODE[${PODS[0]}]}):"
    ip -n "${PODS[0]}" -4 addr show eth0 | sed 's/^/    /'
    ip -n "${PODS[0]}" route | sed 's/^/    /'
    echo "==> on node ${NODES[0]}: the pod's traffic leaves through its ENI"
    ip -n "${NODES[0]}" rule | sed 's/^/    /'
    echo "==> pings across the VPC"
    for j in 0 1 2; do
        a=${PODS[$j]} b=${PODS[$((j + 3))]}
        [ "${NODE[$a]}" != "${NODE[$b]}" ] || b=${PODS[$(((j + 1) % 6))]}
        ping_from "$a" "${IP[$b]}" "${a#twdemo-} (${NODE[$a]}) -> ${b#twdemo-} (${NODE[$b]}) ${IP[$b]}"
    done
    node_ip=$(ip -n "${NODES[1]}" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
    ping_from "${PODS[0]}" "$node_ip" "${PODS[0]#twdemo-} -> node ${NODES[1]} ($node_ip)"
    for n in "${NODES[@]}"; do
        echo "==> terway mapping on $n"
        ip netns exec "$n" "$BIN" mapping --socket "$WORK/nodes/$n/terway.sock"
    done
    echo "==> terway pool on ${NODES[0]}"
    "$BIN" pool --socket "$WORK/nodes/${NODES[0]}/terway.sock"
fi

echo "==> CNI DEL"
for p in "${PODS[@]}"; do cni DEL "${NODE[$p]}" "${SOCK[$p]}" "$p" "${p#twdemo-}"; done
echo "==> done; cleaning up"
