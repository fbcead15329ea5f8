#!/usr/bin/env bash
# make bench-overlay: the overlay on three simulated hosts (demo/overlay-cluster.sh), measured
# through cnitool (libcni), the way `make bench` measures the bridge:
#   - ADD p50 of an overlay pod (overlay + etcd-ipam on a 3-member etcd), pods spread on 3 hosts;
#   - ADD p50 of a local bridge pod (bridge + host-local) on one of those hosts, same cnitool;
#   - time from the start of an ADD on h1 to the first ping answered from a pod on h2.
# BENCH_N pods per series (default 30). etcd over mutual TLS (CNIRS_ETCD_TLS=0: plain http, to
# see what TLS costs). Writes target/bench/overlay.md. Leaves nothing behind.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
OUT="${BENCH_OUT:-$repo/target/bench}"
N="${BENCH_N:-30}"
id="cnirs-ovb$$"
tmp="$(mktemp -d /tmp/cnirs-ovbench.XXXXXX)"
declare -A where=() netof=()
pods=()
# shellcheck source=demo/overlay-cluster.sh
source "$repo/demo/overlay-cluster.sh"
trap cluster_down EXIT
cluster_up
overlay_conf ovb 4100 10.247.0.0/16 '{}'
jq -n --arg d "$tmp/ipam" '{cniVersion:"1.0.0", name:"brb", plugins:[{type:"bridge",
    bridge:"cnirsbrb", isGateway:true, ipam:{type:"host-local", dataDir:$d,
    ranges:[[{subnet:"10.246.0.0/16"}]]}}]}' > "$tmp/net.d/brb.conflist"

now() { date +%s%N; }
p50() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1e6}'; }
pod() { # name host net
    pods+=("$1"); where[$1]=$2; netof[$1]=$3; ip netns add "$id-$1"; ip -n "$id-$1" link set lo up
}

: > "$tmp/ov.ms"; : > "$tmp/br.ms"; : > "$tmp/reach.ms"
for i in $(seq "$N"); do
    pod "o$i" "h$(( (i % 3) + 1 ))" ovb
    t=$(now); cnitool add ovb "o$i" >/dev/null; echo $(( $(now) - t )) >> "$tmp/ov.ms"
    pod "b$i" h1 brb
    t=$(now); cnitool add brb "b$i" >/dev/null; echo $(( $(now) - t )) >> "$tmp/br.ms"
done
pod probe h2 ovb
cnitool add ovb probe >/dev/null
for i in $(seq 10); do
    pod "r$i" h1 ovb
    t=$(now)
    a=$(cnitool add ovb "r$i" | jq -r '.ips[0].address | split("/")[0]')
    until ip netns exec "$id-probe" ping -c1 -W0.05 "$a" >/dev/null 2>&1; do :; done
    echo $(( $(now) - t )) >> "$tmp/reach.ms"
done
mkdir -p "$OUT"
{
    echo "| overlay bench (3 hosts, 3-member etcd over $scheme${etcd_tls:+ with client certificates}, N=$N) | p50 |"
    echo "|---|---|"
    echo "| ADD overlay + etcd-ipam, pods on 3 hosts | $(p50 < "$tmp/ov.ms") ms |"
    echo "| ADD bridge + host-local, same host and cnitool | $(p50 < "$tmp/br.ms") ms |"
    echo "| ADD on h1 -> first ping answered from h2 (from the start of ADD) | $(p50 < "$tmp/reach.ms") ms |"
} | tee "$OUT/overlay.md"
