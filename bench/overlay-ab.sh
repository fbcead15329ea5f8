#!/usr/bin/env bash
# An A/B of the overlay ADD in one run, on the 3-host harness of `make bench-overlay` (etcd
# over mutual TLS): A = the plugins in $A_BIN (e.g. a copy of target/release from another
# commit), B = the plugins in $CNIRS_BIN_DIR (default target/release), and the bridge +
# host-local control, interleaved pod by pod, pods spread on 3 hosts. BENCH_N per series
# (default 30). Prints the p50s, the ratios to the bridge ADD and the p90s. Leaves nothing behind.
#   A_BIN=/tmp/main-bin bench/overlay-ab.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_B="${CNIRS_BIN_DIR:-$repo/target/release}"
BIN_A="${A_BIN:?A_BIN: a directory with the A plugins (overlay, etcd-ipam, bridge, ...)}"
BIN="$BIN_B"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
N="${BENCH_N:-30}"
id="cnirs-ovab$$"
tmp="$(mktemp -d /tmp/cnirs-ovab.XXXXXX)"
declare -A where=() netof=()
pods=()
# shellcheck source=demo/overlay-cluster.sh
source "$repo/demo/overlay-cluster.sh"
trap 'cluster_down' EXIT
cluster_up
# A and B on networks of their own (their address records may differ: etcd-ipam's moved to
# the hosts in December 2026), the same hosts, etcd and agents.
overlay_conf ova 4101 10.245.0.0/16 '{}'
overlay_conf ovb 4100 10.247.0.0/16 '{}'
jq -n --arg d "$tmp/ipam" '{cniVersion:"1.0.0", name:"brb", plugins:[{type:"bridge",
    bridge:"cnirsbrb", isGateway:true, ipam:{type:"host-local", dataDir:$d,
    ranges:[[{subnet:"10.246.0.0/16"}]]}}]}' > "$tmp/net.d/brb.conflist"

now() { date +%s%N; }
p50() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1e6}'; }
p90() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.9); if (i < NR*0.9) i++; printf "%.1f", a[i]/1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
pod() { # name host net
    pods+=("$1"); where[$1]=$2; netof[$1]=$3; ip netns add "$id-$1"; ip -n "$id-$1" link set lo up
}
timed() { # file net pod
    local t; t=$(now); cnitool add "$2" "$3" >/dev/null; echo $(( $(now) - t )) >> "$1"
}

: > "$tmp/a"; : > "$tmp/b"; : > "$tmp/c"
# Every host's device exists first: the series measure the ADD of a host's later pods.
for h in "${hosts[@]}"; do
    pod "v$h" "$h" ova; BIN="$BIN_A"; cnitool add ova "v$h" >/dev/null
    pod "w$h" "$h" ovb; BIN="$BIN_B"; cnitool add ovb "w$h" >/dev/null
done
for i in $(seq "$N"); do
    h="h$(( (i % 3) + 1 ))"
    pod "a$i" "$h" ova; BIN="$BIN_A"; timed "$tmp/a" ova "a$i"
    pod "b$i" "$h" ovb; BIN="$BIN_B"; timed "$tmp/b" ovb "b$i"
    pod "c$i" h1 brb; timed "$tmp/c" brb "c$i"
done
a=$(p50 < "$tmp/a"); b=$(p50 < "$tmp/b"); c=$(p50 < "$tmp/c")
echo "| overlay ADD A/B (N=$N each, interleaved, etcd over $scheme) | p50 | / bridge ADD | p90 |"
echo "|---|---|---|---|"
echo "| A: $BIN_A | $a ms | $(ratio "$a" "$c")x | $(p90 < "$tmp/a") ms |"
echo "| B: $BIN_B | $b ms | $(ratio "$b" "$c")x | $(p90 < "$tmp/b") ms |"
echo "| bridge + host-local, same host and cnitool | $c ms | 1x | $(p90 < "$tmp/c") ms |"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
