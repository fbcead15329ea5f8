#!/usr/bin/env bash
# Where the CPU of cross-host pod TCP goes, against host-to-host TCP on the same underlay, in ms
# of CPU per GB moved (docs/overlay.md, "What the VXLAN path costs"). The 3 simulated hosts of
# `make bench-overlay` (demo/overlay-cluster.sh), a pod on h1 and one on h2; ROUNDS times (default
# 2), alternating: iperf3 pod -> pod, then h1 -> h2 on the underlay, IPERF_S seconds each
# (default 5), `perf record -a -g` for the middle IPERF_S - 2 seconds; bench/stages.py keeps the
# iperf3 threads' samples and all network softirq (on these hosts every hop of both hosts runs
# in softirq, mostly in the two iperf3 threads' context) and puts each in one stage.
# Per GB, unlike Gbit/s, the figures hold up on a loaded machine except for the copies to and
# from user space (memory bandwidth shared with other work). Needs perf (linux-perf), iperf3,
# root. Writes target/bench/overlay-stages.md. Leaves nothing behind.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
OUT="${BENCH_OUT:-$repo/target/bench}"
ROUNDS="${ROUNDS:-2}"
IPERF_S="${IPERF_S:-5}"
HZ=2000
id="cnirs-ovs$$"
tmp="$(mktemp -d /tmp/cnirs-ovstages.XXXXXX)"
declare -A where=() netof=()
pods=()
# shellcheck source=demo/overlay-cluster.sh
source "$repo/demo/overlay-cluster.sh"
for t in perf iperf3 python3; do
    command -v "$t" >/dev/null || { say "$t missing (scripts/install-deps.sh)"; exit 1; }
done
(( IPERF_S >= 4 )) || { say "IPERF_S must be >= 4"; exit 1; }
trap cluster_down EXIT
cluster_up
overlay_conf ovs 4101 10.245.0.0/16 '{}'
for p in o1:h1 o2:h2; do
    n=${p%%:*}; pods+=("$n"); where[$n]=${p#*:}; netof[$n]=ovs
    ip netns add "$id-$n"; ip -n "$id-$n" link set lo up
    cnitool add ovs "$n" >/dev/null
done
o2=$(ip -n "$id-o2" -j addr show dev eth0 | jq -r '[.[0].addr_info[] | select(.family == "inet")][0].local')
serve() { # netns addr
    ip netns exec "$1" iperf3 -s -B "$2" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do ip netns exec "$1" ss -ltn | grep -q ":5201 " && break; sleep 0.1; done
}
serve "$id-o2" "$o2"
serve "$id-h2" 10.240.0.2

run() { # label client-netns server-addr
    local json="$tmp/$1.json" data="$tmp/$1.data" cpid gb
    ip netns exec "$2" iperf3 -c "$3" -t "$IPERF_S" -J > "$json" &
    cpid=$!
    sleep 1
    perf record -q -a -g -F "$HZ" -o "$data" -- sleep $((IPERF_S - 2)) >/dev/null 2>&1
    wait "$cpid"
    # Bytes received in the recorded window: iperf3's intervals 2 .. IPERF_S-1 (1 s each).
    gb=$(jq --argjson s "$IPERF_S" '[.intervals[1:($s - 1)][].sum.bytes] | add / 1e9' "$json")
    echo "gbit $(jq '.end.sum_received.bits_per_second / 1e9' "$json")" > "$tmp/$1.tsv"
    perf script -i "$data" -F comm,ip,sym 2>/dev/null | python3 "$repo/bench/stages.py" "$gb" "$HZ" >> "$tmp/$1.tsv"
    rm -f "$data"
}
for r in $(seq "$ROUNDS"); do
    run "pod$r" "$id-o1" "$o2"
    run "ul$r" "$id-h1" 10.240.0.2
done

mkdir -p "$OUT"
python3 - "$tmp" "$ROUNDS" "$IPERF_S" <<'EOF' | tee "$OUT/overlay-stages.md"
import sys
tmp, rounds, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(label):
    rows = [l.rstrip("\n").split("\t") if "\t" in l else l.split() for l in open(f"{tmp}/{label}.tsv")]
    return {k: float(v) for k, v in rows}
pod = [load(f"pod{r}") for r in range(1, rounds + 1)]
ul = [load(f"ul{r}") for r in range(1, rounds + 1)]
mean = lambda runs, k: sum(r[k] for r in runs) / len(runs)
print(f"| CPU per GB moved (perf: iperf3 and network softirq, {rounds} x {secs} s, alternating) "
      "| pod -> pod, h1 -> h2 | underlay h1 -> h2 | extra |")
print("|---|---|---|---|")
for k in [k for k in pod[0] if k not in ("gbit", "total")] + ["total"]:
    a, b = mean(pod, k), mean(ul, k)
    print(f"| {k} | {a:.0f} ms | {b:.0f} ms | {a - b:+.0f} ms |")
print(f"| throughput (mean of the rounds) | {mean(pod, 'gbit'):.2f} Gbit/s "
      f"| {mean(ul, 'gbit'):.2f} Gbit/s | ratio {mean(pod, 'gbit') / mean(ul, 'gbit'):.2f} |")
print(f"| underlay / pod CPU per GB | | | {mean(ul, 'total') / mean(pod, 'total'):.2f} |")
EOF
