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
