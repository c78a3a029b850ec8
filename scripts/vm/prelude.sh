# shellcheck shell=dash
# Sourced before every scenario by run-scenarios.sh (busybox sh). Debian's busybox runs its own
# applets in preference to files in PATH, so a bare `ip` in a script would be busybox's small
# `ip` (no netns, ipvlan or vlan). This makes `ip` iproute2's /bin/ip, as terway itself finds
# it through PATH. Two places need `/bin/ip` spelled out: a command string run by `sh -c`, and
# a process started in the background whose pid you keep (`/bin/ip netns exec NS terway
# daemon ... &`): through the function, $! would be a subshell, and killing it would leave the
# process running.
ip() { /bin/ip "$@"; }

# What the scenarios on the emulated VPC share. They set BIN, WORK, EMU_PID and PODS.
fail() { echo "FAIL: $*"; exit 1; }
sock() { echo "$WORK/nodes/$1/terway.sock"; }

# wait_nodes: waits until the emulator (EMU_PID) wrote two node configs; sets N0 and N1.
wait_nodes() {
    i=0
    while :; do
        NODES=
        for c in "$WORK"/nodes/*.json; do
            [ -e "$c" ] || continue
            c=${c##*/}
            NODES="$NODES ${c%.json}"
        done
        [ "$(echo "$NODES" | wc -w)" -lt 2 ] || break
        i=$((i + 1))
        [ "$i" -le 600 ] || fail "the emulator wrote no node configs in 60 s"
        kill -0 "$EMU_PID" 2>/dev/null || fail "the emulator exited"
        sleep 0.1
    done
    # shellcheck disable=SC2086
    set -- $NODES
    N0=$1
    N1=$2
    echo "   nodes $N0 $N1"
}

cni() { # cni COMMAND NODE POD: the plugin exec'd in the node's namespace, as the runtime does
    echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$(sock "$2")\"}" |
        ip netns exec "$2" env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="/run/netns/$3" \
            CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$3" "$BIN"
}

add_pod() { # add_pod POD NODE: a pod namespace and its CNI ADD; sets ADDR to its address
    ip netns add "$1"
    PODS="$PODS $1"
    out=$(cni ADD "$2" "$1") || fail "ADD $1 on $2: $out"
    ADDR=$(echo "$out" | sed -n 's/.*"address": *"\([0-9.]*\)\/[0-9]*".*/\1/p' | head -n 1)
    [ -n "$ADDR" ] || fail "ADD $1 on $2 returned no IPv4 address: $out"
}

ping_ok() { # ping_ok NS TARGET LABEL
    if ip netns exec "$1" ping -c 1 -W 5 "$2" >/dev/null; then
        echo "   ok   $3"
    else
        fail "ping $3"
    fi
}

# What a scenario on the emulated VPC starts, stopped on exit: DAEMON_PIDS, PODS, EMU_PID (a
# scenario may define stop_extra for more, and clears them itself as it goes). On failure it
# names the step and shows the logs in WORK.
EMU_PID=
DAEMON_PIDS=
PODS=
STEP=start
stop_extra() { :; }
cleanup() {
    rc=$?
    set +e
    stop_extra
    for p in $DAEMON_PIDS; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for p in $PODS; do ip netns del "$p" 2>/dev/null; done
    # TERM: the emulator removes the VPC and node namespaces it built.
    if [ -n "$EMU_PID" ]; then kill "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; fi
    if [ "$rc" != 0 ]; then
        echo "FAIL in step: $STEP"
        for f in "$WORK"/*.log; do echo "---- $f"; tail -n 30 "$f"; done
    fi
    rm -rf "$WORK"
}
# on_exit: the scenario's traps (call once WORK is set)
on_exit() {
    trap cleanup EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
}
step() {
    STEP=$*
    echo "-- $*"
}

# start_emulator VPC_NS: `terway emulate --netns` with its node configs in WORK/nodes, then
# wait_nodes (sets NODES, N0, N1)
start_emulator() {
    step "terway emulate --netns"
    "$BIN" emulate --netns --vpc-netns "$1" --listen 127.0.0.1:0 \
        --node-configs "$WORK/nodes" >"$WORK/emulate.out" 2>"$WORK/emulate.log" &
    EMU_PID=$!
    wait_nodes
}

# start_daemon NODE: sets DAEMON_PID (also appended to DAEMON_PIDS), waits until it answers
start_daemon() {
    # /bin/ip, not the prelude's function: $! must be the daemon itself (ip netns exec execs it).
    /bin/ip netns exec "$1" "$BIN" daemon --config "$WORK/nodes/$1.json" 2>>"$WORK/daemon-$1.log" &
    DAEMON_PID=$!
    DAEMON_PIDS="$DAEMON_PIDS $DAEMON_PID"
    i=0
    until "$BIN" pool --socket "$(sock "$1")" >/dev/null 2>&1; do
        kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon on $1 exited: $(cat "$WORK/daemon-$1.log")"
        i=$((i + 1))
        [ "$i" -le 600 ] || fail "the daemon on $1 did not answer in 60 s"
        sleep 0.1
    done
}
