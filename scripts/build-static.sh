#!/usr/bin/env bash
# Builds one static terway binary for /opt/cni/bin (and terwayd / terway-cli symlinks to it):
# the musl target when it can be had, otherwise glibc with crt-static. Prints path and size.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_cargo
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl ||
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then ensure_packages musl-tools; fi
    TARGET=x86_64-unknown-linux-musl
    cargo build --release --target "$TARGET"
else
    echo "musl target unavailable: building a static glibc binary instead" >&2
    TARGET=x86_64-unknown-linux-gnu
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET"
fi
OUT="target/$TARGET/release/terway"
file "$OUT" 2>/dev/null || true
if ldd "$OUT" >/dev/null 2>&1; then echo "warning: $OUT is dynamically linked" >&2; fi
echo "$OUT: $(du -h "$OUT" | cut -f1) ($(stat -c %s "$OUT") bytes)"
