#!/usr/bin/env bash
# Datapath benchmark in the VM of scripts/vm-test.sh: pod <-> pod TCP throughput (iperf3) and
# ping RTT across nodes for terway's ipvlan and veth + policy routing, against a raw veth pair
# between two plain namespaces (scripts/vm/bench-datapaths.sh, one boot). Software emulation:
# read the ratios, not the numbers. BENCH_SECONDS is not passed into the VM; edit the script's
# default (5 s per iperf3 run) to change it. Prints the table from the serial console.
set -euo pipefail
cd "$(dirname "$0")/.."
rc=0
VM_RUN=bench-datapaths VM_IPERF3=1 bash scripts/vm-test.sh || rc=$?
echo "==> datapath benchmark (TCG; ratios to the raw veth pair)"
tr -d '\r' <target/vm-test.log | sed -n 's/^  \[bench-datapaths\] BENCH //p'
exit "$rc"
