# shellcheck shell=dash
# Sourced before every scenario by run-scenarios.sh (busybox sh). Debian's busybox runs its own
# applets in preference to files in PATH, so a bare `ip` in a script would be busybox's small
# `ip` (no netns, ipvlan or vlan). This makes `ip` iproute2's /bin/ip, as terway itself finds
# it through PATH. Two places need `/bin/ip` spelled out: a command string run by `sh -c`, and
# a process started in the background whose pid you keep (`/bin/ip netns exec NS terway
# daemon ... &`): through the function, $! would be a subshell, and killing it would leave the
# process running.
ip() { /bin/ip "$@"; }
