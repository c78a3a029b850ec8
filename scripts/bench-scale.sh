#!/usr/bin/env bash
# Cluster scale by simulation (benches/scale): the real shared-ENI pool on every node, the
# daemon's cloud jobs call for call, the emulator's cloud model in process behind region-wide
# per-action rate limits (upstream Terway's per-minute budgets), all in virtual time. A cold
# scale-up, a rolling update of every pod, a node-pool drain; then the same for a naive
# one-call-per-pod policy. Needs no root and no network. Arguments go to the bench, e.g.
#   scripts/bench-scale.sh --nodes 2000 --pods 50 --seed 1 --policy both \
#       [--limit DescribeNetworkInterfaces=800]… [--resync-ms 120000] [--rollout-s 600]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_cargo
exec cargo bench --quiet --bench scale -- "$@"
