#!/usr/bin/env bash
# make bench-scale: the overlay's control plane at cluster scale (docs/scale.md).
#   - a real 3-member etcd 3.4 in a private netns (clients on 10.240.0.254:23790-23792 there);
#   - one REAL host: a netns on a veth to it, the real cnirs-agent, REAL_PODS pods added by the
#     real overlay plugin (its kernel entries are counted, its agent's CPU and RSS sampled);
#   - N-1 simulated hosts in one process (target/release/cnirs-scale, in the etcd netns): the
#     real agent loop and the real overlay/etcd-ipam ADD/DEL, fake kernels; fill P pods per
#     host, then CHURN pod replacements per second for DURATION seconds.
# Knobs (env): N (hosts, default 1000), P (110), CHURN (100), DURATION (60), WORKERS (16),
# FILL_BUDGET_S (540, cut to what the 13-min run budget leaves), MAX_RSS_MIB (8192), REAL_PODS (2).
# Writes target/bench/scale.json (and scale-n<N>.json), and target/bench/scale.png from every
# scale-n*.json there. Leaves nothing behind (processes stopped by PID, netns and dirs deleted).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
OUT="${BENCH_OUT:-$repo/target/bench}"
N="${N:-1000}" P="${P:-110}" CHURN="${CHURN:-100}" DURATION="${DURATION:-60}"
REAL_PODS="${REAL_PODS:-2}"
id="cnirs-sc$$"
S="$id-s" R="$id-r"
tmp="$(mktemp -d /dev/shm/cnirs-scale.XXXXXX)"
etcd_pids=() agent_pid="" real=()
eps="http://10.240.0.254:23790,http://10.240.0.254:23791,http://10.240.0.254:23792"

conf() { # the overlay's config, the same on every host
    jq -n --arg eps "$eps" '{cniVersion:"1.0.0", name:"scale", type:"overlay", vni:4242,
        underlay:"ul0", ipam:{type:"etcd-ipam", etcdEndpoints:($eps | split(",")),
        ranges:[[{subnet:"10.64.0.0/12"}]]}}'
}
real_cni() { # COMMAND pod
    ip netns exec "$R" env -i PATH="$PATH" CNI_COMMAND="$1" CNI_CONTAINERID="real-$2" \
        CNI_NETNS="/run/netns/$id-$2" CNI_IFNAME=eth0 CNI_PATH="$BIN" CNIRS_NODE_NAME=real \
        CNIRS_RUN_DIR="$tmp/run" CNIRS_LOG=warn "$BIN/overlay" < "$tmp/conf.json"
}
cleanup() {
    set +e
    for p in "${real[@]}"; do real_cni DEL "$p" >/dev/null 2>&1; ip netns del "$id-$p"; done
    [[ -n "$agent_pid" ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    for p in "${etcd_pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    ip netns del "$R" 2>/dev/null; ip netns del "$S" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
for t in etcd jq ip bridge; do command -v "$t" >/dev/null || { echo "scale.sh: needs $t" >&2; exit 1; }; done
[[ -x "$BIN/cnirs-scale" ]] || { echo "scale.sh: no $BIN/cnirs-scale (make build)" >&2; exit 1; }
# A thousand agents hold ~3 connections each: raise the descriptor limit for etcd and the sim.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
conf > "$tmp/conf.json"

ip netns add "$S"; ip -n "$S" link set lo up
ip netns add "$R"; ip -n "$R" link set lo up
ip -n "$S" link add ulr type veth peer name ul0 netns "$R"
ip -n "$S" addr add 10.240.0.254/24 dev ulr; ip -n "$S" link set ulr up
ip -n "$R" addr add 10.240.0.1/24 dev ul0; ip -n "$R" link set ul0 up

# etcd: data on tmpfs (this measures the design, not this VM's disk); the members' flags as in
# the tests (conformance/src/etcd.rs), compaction every 5 min as an apiserver would.
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((23800 + i))"; done
for i in 0 1 2; do
    ip netns exec "$S" etcd --name "m$i" --data-dir "$tmp/m$i" \
        --listen-client-urls "http://10.240.0.254:$((23790 + i))" \
        --advertise-client-urls "http://10.240.0.254:$((23790 + i))" \
        --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$id" \
        --heartbeat-interval 100 --election-timeout 1000 \
        --experimental-watch-progress-notify-interval 5s \
        --auto-compaction-mode periodic --auto-compaction-retention 5m \
        --quota-backend-bytes $((8 << 30)) \
        --logger zap --log-outputs stderr --log-level warn > "$tmp/etcd$i.log" 2>&1 &
    etcd_pids+=($!)
done
for _ in $(seq 100); do
    ok=0
    for i in 0 1 2; do
        ip netns exec "$S" curl -sf "http://10.240.0.254:$((23790 + i))/health" | grep -q true && ok=$((ok + 1))
    done
    [[ $ok -eq 3 ]] && break
    sleep 0.2
done
[[ $ok -eq 3 ]] || { echo "scale.sh: etcd did not come up" >&2; tail -5 "$tmp"/etcd*.log >&2; exit 1; }

# The real host: its agent, then its pods through the real plugin (the first creates the
# network's bridge and VXLAN device, which the agent then programs).
ip netns exec "$R" env -i PATH="$PATH" CNIRS_LOG=warn CNIRS_RUN_DIR="$tmp/run" \
    "$BIN/cnirs-agent" --etcd-endpoints "$eps" \
    --underlay ul0 --node-name real > "$tmp/agent.log" 2>&1 &
agent_pid=$!
for k in $(seq "$REAL_PODS"); do
    ip netns add "$id-p$k"; ip -n "$id-p$k" link set lo up; real+=("p$k")
    real_cni ADD "p$k" > /dev/null
done

echo "scale.sh: N=$N P=$P CHURN=$CHURN/s DURATION=${DURATION}s; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ip netns exec "$S" env SCALE_ETCD="$eps" SCALE_N="$N" SCALE_P="$P" SCALE_CHURN="$CHURN" \
    SCALE_CHURN_S="$DURATION" SCALE_WORKERS="${WORKERS:-16}" SCALE_FILL_BUDGET_S="${FILL_BUDGET_S:-540}" \
    SCALE_MAX_RSS_MIB="${MAX_RSS_MIB:-8192}" SCALE_REAL_AGENT_PID="$agent_pid" SCALE_REAL_NETNS="$R" \
    SCALE_REAL_PODS="$REAL_PODS" SCALE_ETCD_PIDS="$(IFS=,; echo "${etcd_pids[*]}")" \
    SCALE_OUT="$OUT/scale.json" CNIRS_LOG="${CNIRS_LOG:-warn}" CNIRS_RUN_DIR="$tmp/run-sim" \
    "$BIN/cnirs-scale"
kill -0 "$agent_pid" 2>/dev/null || { echo "scale.sh: the real agent died:" >&2; tail -20 "$tmp/agent.log" >&2; exit 1; }
cp "$OUT/scale.json" "$OUT/scale-n$N.json"
grep -c . "$tmp/agent.log" > /dev/null && echo "scale.sh: real agent log tail:" >&2 && tail -3 "$tmp/agent.log" >&2

# The plot: convergence and the real agent's CPU against N, from every run kept here.
"$repo/bench/scale-plot.sh" "$OUT" "$OUT/scale.png"
jq . "$OUT/scale.json"
