#!/usr/bin/env bash
# make bench: our chain (bridge + host-local + portmap + isolation) against the reference Go
# plugins (bridge + host-local + portmap + firewall from /usr/lib/cni), same workload through
# cnitool (libcni), each chain in its own throw-away host netns, pods as throw-away netns.
#
#   BENCH_QUICK=1   N = 1, 20, 50 and 4 workers x 50 pods (about a minute)
#   BENCH_OUT=DIR   where results.json, summary.md and add-latency.png go (target/bench)
#   BENCH_DNS_ONLY=1  only the dnsname section (ADD with and without dnsname, query latency of
#                   our resolver and of dnsmasq run as containers/dnsname runs it): seconds
#
# The driver is bench/bench.py with its modules in bench/cnibench/ (Python 3, standard library only; matplotlib is used for the
# plot when it is installed, else a built-in PNG writer draws it). strace is optional: without
# it the breakdown of our ADD has no syscall section. Everything the bench creates (netns,
# temp dirs) is deleted at the end, on failure and on Ctrl-C too.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CNIRS_BIN_DIR="${CNIRS_BIN_DIR:-$repo/target/release}"
export CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
export BENCH_OUT="${BENCH_OUT:-$repo/target/bench}"
export BENCH_PREFIX="cnirs-bench$$"
# Both chains' files (conflists, libcni's cache, leases, run dirs) live on a tmpfs when there
# is one. On the VM the README's figures come from, the root file system is ext4 without a
# journal, where every file create scans past the inodes deleted in the last seconds
# (`recently_deleted`): with two chains of 500 pods churning files, that made our ADD at pod 500
# 2.3 ms slower than at pod 1 of a fresh host, against 0.7 ms on tmpfs (the reference pays it
# too). A journaled ext4 or xfs, where /var/lib/cni sits in production, does not do that scan,
# and /run is a tmpfs. BENCH_TMP_BASE=/tmp measures on the root file system. (The replay runs
# shim scripts from there: a noexec /dev/shm is not used.)
tmp_base=/tmp
if awk '$2 == "/dev/shm" && $3 == "tmpfs" && $4 !~ /(^|,)noexec(,|$)/ { found = 1 } END { exit !found }' /proc/mounts; then
    tmp_base=/dev/shm
fi
export BENCH_TMP
BENCH_TMP="$(mktemp -d "${BENCH_TMP_BASE:-$tmp_base}/cnirs-bench.XXXXXX")"

say() { printf '%s\n' "$*" >&2; }

cleanup() {
    set +e
    # The driver cleans up after itself; this is the backstop (driver killed hard).
    local names
    names=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$BENCH_PREFIX-" || true)
    if [[ -n "$names" ]]; then
        for ns in $names; do
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
        done
        printf 'netns del %s\n' $names | ip -force -batch - >/dev/null 2>&1
    fi
    rm -rf "$BENCH_TMP"
}
trap cleanup EXIT

[[ "$(id -u)" -eq 0 ]] || { say "make bench must run as root (it creates network namespaces)"; exit 1; }
[[ -x "$CNITOOL" ]] || { say "cnitool missing at $CNITOOL (make cnitool)"; exit 1; }
for p in bridge host-local portmap isolation; do
    [[ -x "$CNIRS_BIN_DIR/$p" ]] || { say "$CNIRS_BIN_DIR/$p missing (make build)"; exit 1; }
done
for p in bridge host-local portmap firewall; do
    [[ -x "/usr/lib/cni/$p" ]] || { say "reference plugin /usr/lib/cni/$p missing (containernetworking-plugins)"; exit 1; }
done
command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
command -v strace >/dev/null || say "note: strace not installed: the breakdown will have no syscall section (apt-get install strace)"

mkdir -p "$BENCH_OUT"
# The driver runs in the background so that Ctrl-C / TERM reach it now (a non-interactive
# shell would wait for a foreground child before running its traps): it cleans up and exits.
python3 "$repo/bench/bench.py" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM
rc=0
while :; do
    wait "$child" && rc=0 || rc=$?
    kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
