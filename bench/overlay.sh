#!/usr/bin/env bash
# make bench-overlay: the overlay on three simulated hosts (demo/overlay-cluster.sh), measured
# through cnitool (libcni), the way `make bench` measures the bridge:
#   - ADD p50 of an overlay pod (overlay + etcd-ipam on a 3-member etcd), pods spread on 3 hosts;
#   - ADD p50 of a local bridge pod (bridge + host-local) on one of those hosts, same cnitool;
#   - time from the start of an ADD on h1 to the first ping answered from a pod on h2;
#   - TCP throughput (iperf3, 1 and 4 streams, both directions, IPERF_S seconds each, default
#     5): pod on h1 <-> pod on h2 against h1 <-> h2 on the underlay, and two pods on one
#     bridge against a bare veth pair between two namespaces, in the same run, with ratios.
# BENCH_N pods per series (default 30), REACH_N reachability samples (default BENCH_N; p50 and p99). etcd over mutual TLS (CNIRS_ETCD_TLS=0: plain http, to
# see what TLS costs). Writes target/bench/overlay.md. Leaves nothing behind.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
OUT="${BENCH_OUT:-$repo/target/bench}"
N="${BENCH_N:-30}"
IPERF_S="${IPERF_S:-5}"
REACH_N="${REACH_N:-$N}"
id="cnirs-ovb$$"
tmp="$(mktemp -d /tmp/cnirs-ovbench.XXXXXX)"
declare -A where=() netof=()
pods=()
# shellcheck source=demo/overlay-cluster.sh
source "$repo/demo/overlay-cluster.sh"
trap 'cluster_down; ip netns del "$id-va" 2>/dev/null; ip netns del "$id-vb" 2>/dev/null' EXIT
cluster_up
overlay_conf ovb 4100 10.247.0.0/16 '{}'
jq -n --arg d "$tmp/ipam" '{cniVersion:"1.0.0", name:"brb", plugins:[{type:"bridge",
    bridge:"cnirsbrb", isGateway:true, ipam:{type:"host-local", dataDir:$d,
    ranges:[[{subnet:"10.246.0.0/16"}]]}}]}' > "$tmp/net.d/brb.conflist"

now() { date +%s%N; }
p50() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1e6}'; }
# The nearest-rank p99: the largest sample when there are fewer than 100.
p99() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i < NR*0.99) i++; printf "%.1f", a[i]/1e6}'; }
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
for i in $(seq "$REACH_N"); do
    pod "r$i" h1 ovb
    t=$(now)
    a=$(cnitool add ovb "r$i" | jq -r '.ips[0].address | split("/")[0]')
    until ip netns exec "$id-probe" ping -c1 -W0.05 "$a" >/dev/null 2>&1; do :; done
    echo $(( $(now) - t )) >> "$tmp/reach.ms"
done

# Throughput. iperf3 servers are started in the background and stopped by PID (cluster_down
# kills pids[] and whatever still runs in the hosts' namespaces).
command -v iperf3 >/dev/null || { say "iperf3 missing (scripts/install-deps.sh)"; exit 1; }
addr_of() { ip -n "$id-$1" -j addr show dev eth0 | jq -r '[.[0].addr_info[] | select(.family == "inet")][0].local'; }
serve() { # netns addr
    ip netns exec "$1" iperf3 -s -B "$2" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do ip netns exec "$1" ss -ltn | grep -q ":5201 " && return; sleep 0.1; done
}
gbps() { # netns server-addr streams [-R]
    ip netns exec "$1" iperf3 -c "$2" -t "$IPERF_S" -P "$3" ${4:-} -J |
        jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | round / 100'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# A pod on h1 (o3: i % 3 + 1 = 1) and the probe on h2; the underlay h1 -> h2.
serve "$id-probe" "$(addr_of probe)"
serve "$id-h2" 10.240.0.2
# Two bridge pods on h1; a bare veth pair between two namespaces of their own.
ip netns add "$id-va"; ip netns add "$id-vb"
ip -n "$id-va" link add v0 type veth peer name v0 netns "$id-vb"
ip -n "$id-va" addr add 10.249.0.1/30 dev v0; ip -n "$id-va" link set v0 up
ip -n "$id-vb" addr add 10.249.0.2/30 dev v0; ip -n "$id-vb" link set v0 up
serve "$id-b2" "$(addr_of b2)"
serve "$id-vb" 10.249.0.2
tp=()
for dir in "" -R; do
    for P in 1 4; do
        way="h1 -> h2"; [[ -n "$dir" ]] && way="h2 -> h1"
        pod=$(gbps "$id-o3" "$(addr_of probe)" "$P" "$dir")
        ul=$(gbps "$id-h1" 10.240.0.2 "$P" "$dir")
        tp+=("| pod -> pod across hosts ($way, $P stream(s)) / underlay host -> host | $pod / $ul Gbit/s | $(ratio "$pod" "$ul") |")
    done
done
for P in 1 4; do
    br=$(gbps "$id-b1" "$(addr_of b2)" "$P")
    ve=$(gbps "$id-va" 10.249.0.2 "$P")
    tp+=("| pod -> pod on one bridge ($P stream(s)) / bare veth pair | $br / $ve Gbit/s | $(ratio "$br" "$ve") |")
done

mkdir -p "$OUT"
{
    echo "| overlay bench (3 hosts, 3-member etcd over $scheme${etcd_tls:+ with client certificates}, N=$N) | p50 |"
    echo "|---|---|"
    echo "| ADD overlay + etcd-ipam, pods on 3 hosts | $(p50 < "$tmp/ov.ms") ms |"
    echo "| ADD bridge + host-local, same host and cnitool | $(p50 < "$tmp/br.ms") ms |"
    echo "| ADD on h1 -> first ping answered from h2 (from the start of ADD) | $(p50 < "$tmp/reach.ms") ms |"
    echo "| the same, p99 of $REACH_N (#26's goal: <= 200 ms) | $(p99 < "$tmp/reach.ms") ms |"
    echo "| ADD overlay / ADD bridge | $(ratio "$(p50 < "$tmp/ov.ms")" "$(p50 < "$tmp/br.ms")")x |"
    echo
    echo "| TCP throughput (iperf3, ${IPERF_S} s each, same run) | measured | ratio |"
    echo "|---|---|---|"
    printf '%s\n' "${tp[@]}"
} | tee "$OUT/overlay.md"
