#!/usr/bin/env bash
# The kernel-feature tests: boots a Debian kernel under QEMU (software emulation, no KVM needed)
# with an initramfs holding the static terway, real iproute2, busybox, the kernel modules the
# datapaths need (ipvlan, 802.1Q, dummy, veth, ...) and scripts/vm/, and runs every
# scripts/vm/scenario-*.sh in one boot. Each prints `VM-SCENARIO <name> PASS|FAIL` on the serial
# console; exits 0 only if all passed and the VM said `VM-RESULT pass`; non-zero on any failure or
# on a timeout (VM_TIMEOUT seconds, default 600). VM_SCENARIOS="kernel ipvlan" runs only those
# (scripts/vm/scenario-kernel.sh, scripts/vm/scenario-ipvlan.sh). VM_RUN=NAME runs
# scripts/vm/NAME.sh alone instead (scripts/vm-bench.sh: VM_RUN=bench-datapaths); VM_IPERF3=1
# adds Debian's iperf3 to the VM.
#
# Nothing is installed into the system but qemu-system-x86, iproute2 and cpio: the kernel
# (linux-image-amd64) and busybox-static are Debian packages unpacked into target/vm-cache/,
# keyed by their versions, so a second run only rebuilds the small part of the initramfs that
# holds the current binary and scripts. The serial console is also kept in target/vm-test.log.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
require_root
require_cargo

VM_TIMEOUT=${VM_TIMEOUT:-600}
VM_MEMORY=${VM_MEMORY:-1024}
# Modules loaded at boot (their dependencies are found and loaded first). Add here what a new
# scenario needs; the cache key follows the list.
VM_MODULES=(veth dummy ipvlan 8021q macvlan)
CACHE="$PWD/target/vm-cache"
LOG="$PWD/target/vm-test.log"
# Bump when the layout of the cached base initramfs changes.
BASE_FORMAT=1

T0=$SECONDS
PHASE_START=$SECONDS
phase_done() { # phase_done NAME: prints how long the phase took
    echo "==> $1: $((SECONDS - PHASE_START)) s"
    PHASE_START=$SECONDS
}

STAGE=
QEMU_PID=
TAIL_PID=
cleanup() {
    set +e
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null   # timeout passes TERM on to qemu
        wait "$QEMU_PID" 2>/dev/null
    fi
    [ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null && wait "$TAIL_PID" 2>/dev/null
    [ -n "$STAGE" ] && rm -rf "$STAGE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- packages ----------------------------------------------------------------------------------
# qemu without its recommends (GTK/SDL front ends, UEFI firmware, block drivers): -nographic
# needs none of them, and they would triple the install.
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
    echo "==> installing qemu-system-x86 (no recommends)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi
ensure_packages iproute2 cpio gzip
# One look at the package lists (each apt-cache call costs most of a second). apt-get download
# needs them; a fresh machine may not have them yet.
pkg_lists() { apt-cache show --no-all-versions linux-image-amd64 busybox-static 2>/dev/null; }
PKG_INFO=$(pkg_lists) || { apt-get update -qq && PKG_INFO=$(pkg_lists); } || true
pkg_field() { # pkg_field PACKAGE FIELD: the candidate version's field
    echo "$PKG_INFO" | awk -v p="$1" -v f="$2: " \
        '/^Package: /{pkg=$2} pkg==p && index($0, f)==1 {print substr($0, length(f)+1); exit}'
}
# linux-image-amd64 is a metapackage: the kernel is the package it depends on, at one version.
KDEP=$(pkg_field linux-image-amd64 Depends)
KPKG=${KDEP%%[ ,]*}
KVER_PKG=$(echo "$KDEP" | sed -n 's/^[^ ,]* (= \([^)]*\)).*/\1/p')
if [ -n "$KPKG" ] && [ -z "$KVER_PKG" ]; then
    KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" | sed -n 's/^Version: //p' | head -n 1)
fi
BB_VER=$(pkg_field busybox-static Version)
if [ -z "$KPKG" ] || [ -z "$KVER_PKG" ] || [ -z "$BB_VER" ]; then
    echo "cannot find linux-image-amd64 / busybox-static in the package lists" >&2
    exit 1
fi
phase_done "packages"

# --- the kernel and its modules (cached) -------------------------------------------------------
mkdir -p "$CACHE"
STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
chmod 0755 "$STAGE"
chown _apt "$STAGE" 2>/dev/null || true   # apt-get download drops privileges to _apt

# download PACKAGE=VERSION DIR: unpacks the .deb into DIR (the system is not touched)
download() {
    local d
    d=$(mktemp -d "$STAGE/deb.XXXXXX")
    chmod 0755 "$d"
    chown _apt "$d" 2>/dev/null || true
    if ! (cd "$d" && apt-get download -qq "$1" >/dev/null); then
        echo "cannot download $1: are the package lists old? (apt-get update, then run again)" >&2
        return 1
    fi
    dpkg-deb -x "$d"/*.deb "$2"
    rm -rf "$d"
}

# A module's file as plain .ko (Debian compresses them with xz or zstd on newer kernels).
ko_plain() { # ko_plain FILE OUT
    case "$1" in
    *.ko) cp "$1" "$2" ;;
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *) echo "unknown module format: $1" >&2; return 1 ;;
    esac
}

KDIR="$CACHE/kernel-${KPKG}_${KVER_PKG//[:~]/_}"
MODKEY=$(printf '%s\n' "${VM_MODULES[@]}" | sha256sum | cut -c1-12)
if [ ! -f "$KDIR/vmlinuz" ] || [ ! -f "$KDIR/modules-$MODKEY/load-order" ]; then
    echo "==> unpacking $KPKG $KVER_PKG"
    rm -rf "$KDIR"
    download "$KPKG=$KVER_PKG" "$STAGE/k"
    kroot=$(echo "$STAGE"/k/lib/modules/*)
    [ -d "$kroot/kernel" ] || kroot=$(echo "$STAGE"/k/usr/lib/modules/*)
    [ -d "$kroot/kernel" ] || { echo "no modules in $KPKG" >&2; exit 1; }
    mkdir -p "$KDIR/modules-$MODKEY"
    # Dependency order from each module's own .modinfo `depends=`, depth first.
    declare -A SEEN=()
    add_module() {
        local name=$1 f dep
        [ -n "${SEEN[$name]:-}" ] && return 0
        SEEN[$name]=1
        f=$(find "$kroot/kernel" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) | head -n 1)
        if [ -z "$f" ]; then
            # Built into this kernel: nothing to load.
            grep -qE "/(${name}|${name//_/-})\.ko\$" "$kroot/modules.builtin" && return 0
            echo "module $name: not in $KPKG" >&2
            return 1
        fi
        ko_plain "$f" "$KDIR/modules-$MODKEY/$name.ko"
        for dep in $(tr '\0' '\n' <"$KDIR/modules-$MODKEY/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
            add_module "$dep"
        done
        echo "$name" >>"$KDIR/modules-$MODKEY/load-order"
    }
    for m in "${VM_MODULES[@]}"; do add_module "$m"; done
    cp "$(echo "$STAGE"/k/boot/vmlinuz-*)" "$KDIR/vmlinuz"
    rm -rf "$STAGE/k"
fi
# Older kernels and module sets go: the cache holds the current ones only.
for d in "$CACHE"/kernel-*; do [ "$d" = "$KDIR" ] || rm -rf "$d"; done
for d in "$KDIR"/modules-*; do [ "$d" = "$KDIR/modules-$MODKEY" ] || rm -rf "$d"; done
MODDIR="$KDIR/modules-$MODKEY"
phase_done "kernel $KPKG $KVER_PKG ($(tr '\n' ' ' <"$MODDIR/load-order"))"

# --- the base initramfs: busybox, iproute2, modules, /init (cached) ------------------------------
IP_BIN=$(readlink -f "$(command -v ip)")
mapfile -t IP_LIBS < <(ldd "$IP_BIN" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
BASE_KEY=$(
    {
        echo "format $BASE_FORMAT kernel $KPKG $KVER_PKG modules $MODKEY busybox $BB_VER"
        sha256sum "$IP_BIN" "${IP_LIBS[@]}" scripts/vm/init
    } | sha256sum | cut -c1-16
)
BASE="$CACHE/base-$BASE_KEY.cpio.gz"
if [ ! -f "$BASE" ]; then
    echo "==> building the base initramfs"
    R="$STAGE/base"
    mkdir -p "$R"/{bin,dev,proc,sys,run,tmp,etc,root,var,opt/cni/bin,lib/modules/vm,vm}
    ln -s ../run "$R/var/run"
    download "busybox-static=$BB_VER" "$STAGE/bb"
    install -m 0755 "$STAGE/bb/bin/busybox" "$R/bin/busybox"
    # Every applet as /bin/<name>, except ip: the scenarios need iproute2's (netns, ipvlan, vlan).
    for a in $("$R/bin/busybox" --list); do
        case "$a" in busybox | ip) ;; *) ln -s busybox "$R/bin/$a" ;; esac
    done
    ln -s bin "$R/sbin"
    mkdir -p "$R/usr"
    ln -s ../bin "$R/usr/bin"
    ln -s ../bin "$R/usr/sbin"
    install -m 0755 "$IP_BIN" "$R/bin/ip"
    for l in "${IP_LIBS[@]}"; do
        mkdir -p "$R$(dirname "$l")"
        cp -L "$l" "$R$l"
    done
    cp "$MODDIR"/*.ko "$MODDIR/load-order" "$R/lib/modules/vm/"
    install -m 0755 scripts/vm/init "$R/init"
    echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
    echo "root:x:0:" >"$R/etc/group"
    (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    rm -rf "$R" "$STAGE/bb"
fi
for f in "$CACHE"/base-*.cpio.gz; do [ "$f" = "$BASE" ] || rm -f "$f"; done
phase_done "base initramfs $(du -h "$BASE" | cut -f1)"

# --- the current binary and scenarios ------------------------------------------------------------
bash scripts/build-static.sh
BIN=$(cat target/terway-static.path)
[ -x "$BIN" ] || { echo "build-static.sh did not leave a binary at $BIN" >&2; exit 1; }
phase_done "static build"

A="$STAGE/app"
mkdir -p "$A/bin" "$A/opt/cni/bin" "$A/vm"
install -m 0755 "$BIN" "$A/opt/cni/bin/terway"
ln -s ../opt/cni/bin/terway "$A/bin/terway"
install -m 0755 scripts/vm/run-scenarios.sh scripts/vm/prelude.sh "$A/vm/"
SCENARIOS=()
if [ -n "${VM_RUN:-}" ]; then
    # VM_RUN=NAME: scripts/vm/NAME.sh instead of the scenarios (a benchmark, say), packed as a
    # scenario so run-scenarios.sh runs it under the same time limit and leftover checks.
    [ -f "scripts/vm/$VM_RUN.sh" ] || { echo "no scripts/vm/$VM_RUN.sh" >&2; exit 1; }
    install -m 0755 "scripts/vm/$VM_RUN.sh" "$A/vm/scenario-$VM_RUN.sh"
    SCENARIOS+=("$VM_RUN")
elif [ -n "${VM_SCENARIOS:-}" ]; then
    for s in $VM_SCENARIOS; do
        [ -f "scripts/vm/scenario-$s.sh" ] || { echo "no scripts/vm/scenario-$s.sh" >&2; exit 1; }
        SCENARIOS+=("$s")
    done
else
    for f in scripts/vm/scenario-*.sh; do
        f=${f##*/scenario-}
        SCENARIOS+=("${f%.sh}")
    done
fi
[ ${#SCENARIOS[@]} -gt 0 ] || { echo "no scenarios in scripts/vm/" >&2; exit 1; }
[ -n "${VM_RUN:-}" ] ||
    for s in "${SCENARIOS[@]}"; do install -m 0755 "scripts/vm/scenario-$s.sh" "$A/vm/"; done
INITRD="$STAGE/initrd.cpio.gz"
# The kernel unpacks concatenated archives one after the other.
cp "$BASE" "$INITRD"
# VM_IPERF3=1: Debian's iperf3 and the libraries it links (cached, keyed by its version), in
# the VM only then: the scenarios do not need it.
if [ "${VM_IPERF3:-0}" = 1 ]; then
    IPERF_VER=$(apt-cache show --no-all-versions iperf3 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [ -n "$IPERF_VER" ] || { echo "no iperf3 in the package lists" >&2; exit 1; }
    IPERF="$CACHE/iperf3-${IPERF_VER//[:~]/_}.cpio.gz"
    if [ ! -f "$IPERF" ]; then
        echo "==> unpacking iperf3 $IPERF_VER"
        download "iperf3=$IPERF_VER" "$STAGE/i3"
        download "libiperf0=$IPERF_VER" "$STAGE/i3"
        R="$STAGE/i3root"
        mkdir -p "$R/bin"
        install -m 0755 "$STAGE/i3/usr/bin/iperf3" "$R/bin/iperf3"
        # libiperf0 from the package, the rest (libssl, libsctp, libc) from this machine.
        for l in $(LD_LIBRARY_PATH="$STAGE/i3/usr/lib/x86_64-linux-gnu" ldd "$R/bin/iperf3" |
            awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'); do
            case "$l" in
            "$STAGE"/i3/*) dest=${l#"$STAGE"/i3} ;;
            *) dest=$l ;;
            esac
            mkdir -p "$R$(dirname "$dest")"
            cp -L "$l" "$R$dest"
        done
        (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$IPERF.tmp"
        mv "$IPERF.tmp" "$IPERF"
        rm -rf "$R" "$STAGE/i3"
    fi
    for f in "$CACHE"/iperf3-*.cpio.gz; do [ "$f" = "$IPERF" ] || rm -f "$f"; done
    cat "$IPERF" >>"$INITRD"
fi
(cd "$A" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >>"$INITRD"
phase_done "initramfs $(du -h "$INITRD" | cut -f1) (scenarios: ${SCENARIOS[*]})"

# --- boot ----------------------------------------------------------------------------------------
echo "==> booting $KPKG under qemu (TCG, 2 vCPUs, ${VM_MEMORY} MiB, timeout ${VM_TIMEOUT} s)"
: >"$LOG"
# No network device: the VM's traffic stays inside its own namespaces. stdin from /dev/null so an
# interactive terminal is never put in raw mode.
timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m "$VM_MEMORY" \
    -nographic -nic none -no-reboot \
    -kernel "$KDIR/vmlinuz" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 loglevel=4" \
    </dev/null >"$LOG" 2>&1 &
QEMU_PID=$!
# The console live, without carriage returns and the firmware's terminal escapes.
tail -n +1 -F --pid="$QEMU_PID" "$LOG" 2>/dev/null |
    sed -u 's/\r$//; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' &
TAIL_PID=$!
set +e
wait "$QEMU_PID"
QEMU_RC=$?
set -e
QEMU_PID=
wait "$TAIL_PID" 2>/dev/null || true
TAIL_PID=
phase_done "VM boot and scenarios"

# --- verdict -------------------------------------------------------------------------------------
# Read the console once: with pipefail, `tr <log | grep -q` fails when grep stops at an early
# match and tr dies of SIGPIPE, which reported the first scenario's PASS as missing.
CONSOLE=$(tr -d '\r' <"$LOG")
passed=0
failed=0
echo "==> VM scenarios"
for s in "${SCENARIOS[@]}"; do
    if grep -aqE "^VM-SCENARIO $s PASS( |$)" <<<"$CONSOLE"; then
        echo "    PASS $s"
        passed=$((passed + 1))
    elif grep -aqE "^VM-SCENARIO $s FAIL( |$)" <<<"$CONSOLE"; then
        echo "    FAIL $s"
        failed=$((failed + 1))
    else
        echo "    FAIL $s (no result: the VM stopped before it finished)"
        failed=$((failed + 1))
    fi
done
ok=1
[ "$failed" = 0 ] || ok=0
if [ "$QEMU_RC" = 124 ] || [ "$QEMU_RC" = 137 ]; then
    echo "    the VM timed out after ${VM_TIMEOUT} s"
    ok=0
elif [ "$QEMU_RC" != 0 ]; then
    echo "    qemu exited with $QEMU_RC"
    ok=0
fi
if ! grep -aqx "VM-RESULT pass" <<<"$CONSOLE"; then
    echo "    the VM did not report VM-RESULT pass"
    ok=0
fi
echo "==> total $((SECONDS - T0)) s; serial console in ${LOG#"$PWD"/}"
echo "vm: $passed passed, $failed failed"
[ "$ok" = 1 ]
