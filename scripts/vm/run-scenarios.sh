#!/bin/sh
# shellcheck shell=dash
# Runs inside the VM (busybox sh): every /vm/scenario-*.sh in name order, each under its own
# time limit, its output prefixed with its name. Prints `VM-SCENARIO <name> PASS|FAIL` per
# scenario and a last `VM-RESULT pass|fail`. A scenario fails when it exits non-zero, runs
# over its time, or leaves a network namespace or a terway process behind (those are then
# removed, so the next scenario starts clean).
#
# Adding a scenario: drop scripts/vm/scenario-<name>.sh (busybox sh; exit 0 = pass; it is
# sourced after /vm/prelude.sh, which makes `ip` iproute2's). The
# ipvlan datapath's scenarios go in as scenario-ipvlan*.sh. Whatever files exist are run: the
# host (scripts/vm-test.sh) expects one result line per file it packed.
SCENARIO_TIMEOUT=${SCENARIO_TIMEOUT:-300}
result=pass
for f in /vm/scenario-*.sh; do
    [ -e "$f" ] || continue
    name=${f##*/scenario-}
    name=${name%.sh}
    echo "VM-SCENARIO $name START"
    start=$(cut -d. -f1 /proc/uptime)
    rm -f /tmp/rc
    # shellcheck disable=SC2016
    { timeout -s TERM "$SCENARIO_TIMEOUT" sh -c '. /vm/prelude.sh && . "$0"' "$f"; echo $? >/tmp/rc; } 2>&1 | sed "s/^/  [$name] /"
    rc=$(cat /tmp/rc 2>/dev/null || echo 255)
    verdict=PASS
    if [ "$rc" != 0 ]; then
        [ "$rc" = 143 ] && echo "  [$name] timed out after $SCENARIO_TIMEOUT s"
        echo "  [$name] exit code $rc"
        verdict=FAIL
    fi
    procs=$(pidof terway)
    if [ -n "$procs" ]; then
        echo "  [$name] left terway processes behind: $procs"
        verdict=FAIL
        # shellcheck disable=SC2086
        kill -9 $procs
        sleep 1
    fi
    left=$(/bin/ip netns list 2>/dev/null | cut -d' ' -f1)
    if [ -n "$left" ]; then
        echo "  [$name] left namespaces behind: $(echo "$left" | tr '\n' ' ')"
        verdict=FAIL
        for ns in $left; do /bin/ip netns del "$ns"; done
    fi
    echo "VM-SCENARIO $name $verdict ($(($(cut -d. -f1 /proc/uptime) - start)) s)"
    [ "$verdict" = PASS ] || result=fail
done
echo "VM-RESULT $result"
