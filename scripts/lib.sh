# shellcheck shell=bash
# Shared helpers for the scripts (sourced, not run).

# Installs Debian packages that are missing; apt-get update only when something is needed.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0 must run as root: it creates network namespaces and veth pairs" >&2
        exit 1
    fi
}

# Rust via rustup when there is none (Debian's own cargo is older than the 1.89 we need).
require_cargo() {
    if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null; then
        echo "==> installing Rust with rustup (minimal profile)"
        ensure_packages curl ca-certificates build-essential
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal -c rustfmt -c clippy
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { echo "cargo not found and rustup failed" >&2; exit 1; }
}

# promtool (Prometheus's own checker; tests/metrics.rs runs `promtool check metrics`), taken out
# of Debian's prometheus package: installing the package itself would also start a Prometheus
# server. Goes to /usr/local/bin.
ensure_promtool() {
    command -v promtool >/dev/null && return 0
    echo "==> installing promtool from Debian's prometheus package"
    local tmp
    tmp="$(mktemp -d)"
    chmod 0755 "$tmp"
    chown _apt "$tmp" 2>/dev/null || true
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
    promtool --version >/dev/null
}

# The terway binary a benchmark measures, in $BIN: $TERWAY_BIN when set, otherwise the static
# binary users install (scripts/build-static.sh). What is measured is what ships: the static
# build starts in about a quarter of the time of the dynamically linked one (no loader, no
# relocation of shared libraries), and a plugin is a process started per CNI call.
bench_binary() {
    if [ -n "${TERWAY_BIN:-}" ]; then
        BIN=$(realpath "$TERWAY_BIN")
    else
        echo "==> building the static terway binary (scripts/build-static.sh)"
        scripts/build-static.sh > /dev/null
        BIN="$PWD/$(cat target/terway-static.path)"
    fi
    [ -x "$BIN" ] || { echo "terway binary $BIN is not executable" >&2; exit 1; }
    echo "==> terway binary: $BIN ($(stat -c %s "$BIN") bytes)"
}

# bench_harness PREFIX: what a benchmark on the emulated VPC needs around it, for namespaces
# named PREFIX-* / i-PREFIX* and a work directory /tmp/PREFIX.*: a lock against a second run
# (STATE_DIR=/run/PREFIX), the clean-up of a crashed earlier run and of this one (processes
# recorded in STATE_DIR/pids, namespaces, work directories; RAW_DIR keeps a copy of WORK), the
# traps, WORK, and run_bg / start_bg / fail / json_get.
bench_harness() {
    BENCH_PREFIX=$1
    STATE_DIR=/run/$BENCH_PREFIX   # pids of what we started, for the next run to clean up after a crash
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock -w 10 9 || { echo "another $(basename "$0") is running (lock $STATE_DIR/lock)" >&2; exit 1; }
    remove_leftovers
    WORK=$(mktemp -d "/tmp/$BENCH_PREFIX.XXXXXX")
    trap cleanup EXIT
    trap 'echo "interrupted" >&2; exit 130' INT
    trap 'exit 143' TERM
}
# stop_pid PID: stops a process this run or a crashed earlier one started, if it still is ours
# (our own child, or its command line names a run's work directory): TERM, wait, KILL.
proc_field() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; } # 1 state, 2 parent
stop_pid() {
    local pid=$1 st
    [ "$(proc_field "$pid" 2)" = $$ ] ||
        tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q "/tmp/$BENCH_PREFIX\." || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        st=$(proc_field "$pid" 1)
        [ -n "$st" ] && [ "$st" != Z ] || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
remove_leftovers() {
    local pid ns
    if [ -f "$STATE_DIR/pids" ]; then
        # Newest first: loops, servers and daemons; the emulator (which removes its namespaces
        # on TERM) last.
        for pid in $(tac "$STATE_DIR/pids"); do stop_pid "$pid"; done
        rm -f "$STATE_DIR/pids"
    fi
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^($BENCH_PREFIX-|i-$BENCH_PREFIX)" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "/tmp/$BENCH_PREFIX".*
}
cleanup() {
    set +e
    trap - INT TERM
    if [ -n "${RAW_DIR:-}" ] && [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        mkdir -p "$RAW_DIR" && cp -r "$WORK"/. "$RAW_DIR"/ 2>/dev/null
    fi
    remove_leftovers
}
# run_bg CMD...: runs CMD in the background and waits for it, so that Ctrl-C stops the run at
# once (the trap runs as soon as the signal arrives; the clean-up stops CMD by its pid).
run_bg() {
    local pid rc=0
    "$@" 9>&- <&0 &   # (<&0: a background command's stdin would be /dev/null)
    pid=$!
    echo "$pid" >> "$STATE_DIR/pids"
    wait "$pid" || rc=$?
    return $rc
}
# start_bg CMD...: runs CMD in the background, recorded for the clean-up; BG_PID is its pid.
start_bg() {
    "$@" 9>&- &
    BG_PID=$!
    echo "$BG_PID" >> "$STATE_DIR/pids"
}
fail() { echo "$*" >&2; exit 1; }
# json_get EXPR: evaluates a Python expression over the JSON on stdin (bound to d).
json_get() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# wait_emulator INSTANCE...: waits until `terway emulate` (EMU_PID, its stdout in
# WORK/emulate.out) listens, its address in ADDR, and has written each instance's daemon config.
wait_emulator() {
    local i
    ADDR=
    for _ in $(seq 200); do
        ADDR=$(sed -n '1s/^listening on //p' "$WORK/emulate.out" 2>/dev/null)
        [ -n "$ADDR" ] && break
        kill -0 "$EMU_PID" 2>/dev/null || fail "emulator exited: $(cat "$WORK/emulate.log")"
        sleep 0.1
    done
    [ -n "$ADDR" ] || fail "emulator did not start: $(cat "$WORK/emulate.log")"
    for i in "$@"; do
        for _ in $(seq 200); do [ -f "$WORK/nodes/$i.json" ] && break; sleep 0.1; done
        [ -f "$WORK/nodes/$i.json" ] || fail "emulator wrote no node config for $i"
    done
}
# The nodes of the emulated VPC (their daemon configs in WORK/nodes, BIN the terway binary).
admin() { curl -sS --fail-with-body -X "$1" ${3:+--data "$3"} "http://$ADDR$2"; } # admin METHOD PATH [JSON]

node_conf() { echo "$WORK/nodes/$1.json"; }
node_sock() { json_get 'd["socket_path"]' < "$(node_conf "$1")"; }
pool_json() { "$BIN" pool --json --socket "$(node_sock "$1")"; }
pool_field() { pool_json "$1" | json_get "d[\"$2\"]"; }
set_node_keys() { # set_node_keys INSTANCE JSON: merges keys into the daemon config the emulator wrote
    python3 -c '
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c.update(json.loads(sys.argv[2]))
json.dump(c, open(p, "w"), indent=1)' "$(node_conf "$1")" "$2"
}
# start_daemon INSTANCE: runs the daemon (with DAEMON_ENV, if set) in the instance namespace until
# it answers; DAEMON_PID is its pid.
start_daemon() {
    local sock
    sock=$(node_sock "$1")
    # shellcheck disable=SC2086 # DAEMON_ENV is a list of VAR=value words
    start_bg ip netns exec "$1" env ${DAEMON_ENV:-} "$BIN" daemon --config "$(node_conf "$1")" 2> "$WORK/daemon-$1.log"
    DAEMON_PID=$BG_PID
    for _ in $(seq 600); do
        "$BIN" pool --socket "$sock" > /dev/null 2>&1 && return 0
        kill -0 "$BG_PID" 2>/dev/null || fail "daemon on $1 exited: $(cat "$WORK/daemon-$1.log")"
        sleep 0.1
    done
    fail "daemon on $1 did not come up: $(cat "$WORK/daemon-$1.log")"
}
wait_idle() { # wait_idle INSTANCE COUNT: until the pool has COUNT idle (ENIs or addresses)
    local idle=0
    for _ in $(seq 300); do
        idle=$(pool_field "$1" idle)
        [ "$idle" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "the pool of $1 did not warm up: idle $idle of $2"
}
terway_conf() { # terway_conf INSTANCE: the CNI network config for that node's daemon
    echo "{\"cniVersion\":\"1.0.0\",\"name\":\"terway\",\"type\":\"terway\",\"daemon_socket\":\"$(node_sock "$1")\"}" > "$WORK/$1.conf"
}

# kernel_floor_binary: builds benches/kernel_floor.rs (the netlink operations of ADD and DEL from
# one running program) and sets FLOOR to its executable.
kernel_floor_binary() {
    echo "==> building the kernel floor (benches/kernel_floor.rs)"
    FLOOR=$(cargo bench --bench kernel_floor --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "kernel_floor" and m.get("executable"):
        print(m["executable"])' | tail -1)
    [ -x "$FLOOR" ] || { echo "could not build benches/kernel_floor.rs" >&2; exit 1; }
}
