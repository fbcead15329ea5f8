#!/usr/bin/env bash
# The plot of make bench-scale: convergence (p50, p99: churn ADDs, and the fill's block claims
# routed by every other host, from the summary) and the real host's agent CPU and the
# achieved churn against N, from every scale-n<N>.json in DIR (default target/bench), to
# OUT (default DIR/scale.png). Runs that broke (a "BROKE" summary line) are left out.
set -euo pipefail
dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/bench}"
out="${2:-$dir/scale.png}"
command -v gnuplot > /dev/null || { echo "scale-plot.sh: no gnuplot (apt-get install gnuplot-nox)" >&2; exit 0; }
tsv="$(mktemp)"
trap 'rm -f "$tsv"' EXIT
for f in "$dir"/scale-n*.json; do
    [[ -e "$f" ]] || continue
    jq -r 'select(all(.summary[]; test("BROKE") | not))
        | ([.summary[] | capture("claims routed by every other host p50 (?<p50>[0-9.]+) ms, p99 (?<p99>[0-9.]+) ms")] | first // {p50: "NaN", p99: "NaN"}) as $c
        | [.hosts, .converge_p50_ms, .converge_p99_ms, .agent_cpu_pct, .churn_per_s, $c.p50, $c.p99] | @tsv' "$f"
done | sort -n > "$tsv"
[[ -s "$tsv" ]] || { echo "scale-plot.sh: no complete run in $dir" >&2; exit 0; }
gnuplot <<GP
set terminal pngcairo size 900,520
set output "$out"
set title "Overlay control plane vs cluster size (make bench-scale)"
set logscale x
set xlabel "hosts (N)"
set ylabel "ADD -> applied on every other host (ms)"
set y2label "real agent CPU (% of a core) / achieved churn (per s)"
set ytics nomirror
set y2tics
set grid
set key top left
plot "$tsv" using 1:2 with linespoints title "churn ADD applied everywhere, p50", \
     "$tsv" using 1:3 with linespoints title "churn ADD applied everywhere, p99", \
     "$tsv" using 1:6 with linespoints title "fill: new block routed everywhere, p50", \
     "$tsv" using 1:7 with linespoints title "fill: new block routed everywhere, p99", \
     "$tsv" using 1:4 axes x1y2 with linespoints title "agent CPU %", \
     "$tsv" using 1:5 axes x1y2 with linespoints dashtype 2 title "achieved churn /s"
GP
echo "scale-plot.sh: $out" >&2
