#!/usr/bin/env bash
# Installs what the tests need and runs them all: unit tests and the root integration tests
# (network namespaces, veths, real plugin and daemon processes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
require_cargo
# python3 + venv: tests/emulate_sdk.rs drives the emulator with the official Python SDKs.
ensure_packages iproute2 iputils-ping procps gcc python3 python3-venv
ensure_promtool
# Leftovers of an interrupted earlier run would only confuse the next one.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(tw(node|pod|bench|vpc)|tw-test-|i-tw)' || true); do
    ip netns del "$ns" 2>/dev/null || true
done
cargo fmt --all -- --check
cargo test --all-targets --no-fail-fast 2>&1
# What this machine's kernel lacks (ipvlan, 802.1Q, dummy): the VM scenarios under QEMU.
bash scripts/vm-test.sh
