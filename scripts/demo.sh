#!/usr/bin/env bash
# The demo: one node (a network namespace) running the terway daemon in VPC mode, three pods
# created through real CNI ADD invocations, addresses shown, pod<->pod and node<->pod pings,
# `terway mapping` and `terway pool`, then DEL and a full clean-up. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
ensure_packages iproute2 iputils-ping procps gcc

echo "==> building terway"
cargo build --quiet
BIN="$PWD/target/debug/terway"

NODE=terway-demo-node
NODE_IP=192.168.250.1
POD_CIDR=10.244.1.0/24
WORK=$(mktemp -d /tmp/terway-demo.XXXXXX)
SOCK="$WORK/terway.sock"
PODS=(web-1 web-2 web-3)
DAEMON_PID=

cleanup() {
    set +e
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    for p in "${PODS[@]}"; do ip netns del "terway-demo-$p" 2>/dev/null; done
    ip netns del "$NODE" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup_before() { for p in "${PODS[@]}"; do ip netns del "terway-demo-$p" 2>/dev/null || true; done; ip netns del "$NODE" 2>/dev/null || true; }
cleanup_before

echo "==> node namespace $NODE (node address $NODE_IP, pod CIDR $POD_CIDR)"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip -n "$NODE" addr add "$NODE_IP/32" dev lo

cat > "$WORK/eni.json" <<JSON
{
  "version": "1",
  "daemon_mode": "VPC",
  "pod_cidr": "$POD_CIDR",
  "socket_path": "$SOCK",
  "state_path": "$WORK/state.json"
}
JSON
"$BIN" config check "$WORK/eni.json"

echo "==> starting the daemon: ip netns exec $NODE terway daemon --config $WORK/eni.json"
ip netns exec "$NODE" "$BIN" daemon --config "$WORK/eni.json" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log"; exit 1; }

cni() { # cni COMMAND POD
    local pod=$1 cmd=$2
    echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$SOCK\"}" |
        ip netns exec "$NODE" env CNI_COMMAND="$cmd" CNI_CONTAINERID="demo-$pod" \
            CNI_NETNS="/run/netns/terway-demo-$pod" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" "$BIN"
}

declare -A IP
echo "==> CNI ADD for ${PODS[*]}"
for p in "${PODS[@]}"; do
    ip netns add "terway-demo-$p"
    if ! out=$(cni "$p" ADD); then
        echo "ADD for $p failed: $out"; cat "$WORK/daemon.log"; exit 1
    fi
    IP[$p]=$(echo "$out" | sed -n 's/.*"address":"\([0-9.]*\)\/32".*/\1/p')
done
printf '\n%-8s %-14s %s\n' NAME IP NODE
for p in "${PODS[@]}"; do printf '%-8s %-14s %s\n' "$p" "${IP[$p]}" "$NODE"; done
echo
echo "==> inside web-1:"
ip -n terway-demo-web-1 -4 addr show eth0 | sed 's/^/    /'
ip -n terway-demo-web-1 route | sed 's/^/    /'

ping_from() { # ping_from NS TARGET LABEL
    if ip netns exec "$1" ping -c 1 -W 2 "$2" >/dev/null; then echo "    ok   $3"; else echo "    FAIL $3"; return 1; fi
}
echo "==> pings"
ping_from terway-demo-web-1 "${IP[web-2]}" "web-1 -> web-2 (${IP[web-2]})"
ping_from terway-demo-web-2 "${IP[web-3]}" "web-2 -> web-3 (${IP[web-3]})"
ping_from terway-demo-web-3 "$NODE_IP" "web-3 -> node ($NODE_IP)"
ping_from "$NODE" "${IP[web-1]}" "node -> web-1 (${IP[web-1]})"

echo "==> terway mapping"
TERWAY_SOCKET=$SOCK "$BIN" mapping
echo "==> terway pool"
TERWAY_SOCKET=$SOCK "$BIN" pool

echo "==> CNI DEL"
for p in "${PODS[@]}"; do cni "$p" DEL; done
TERWAY_SOCKET=$SOCK "$BIN" pool | grep 'in use'
echo "==> done; cleaning up"
