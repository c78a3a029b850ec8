#!/usr/bin/env bash
# Builds one static terway binary for /opt/cni/bin (link it as terwayd / terway-cli for those
# roles): the musl target when it can be had, otherwise glibc with crt-static. Prints the path
# and size; the path is also written to target/terway-static.path for install scripts.
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
# A dynamic executable names its loader in a PT_INTERP header; a static one has none.
if readelf -l "$OUT" 2>/dev/null | grep -q INTERP; then
    echo "warning: $OUT is dynamically linked" >&2
fi
echo "$OUT" > target/terway-static.path
echo "$OUT: $(du -h "$OUT" | cut -f1) ($(stat -c %s "$OUT") bytes), static"
