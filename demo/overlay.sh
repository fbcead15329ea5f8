#!/usr/bin/env bash
# make demo-overlay: the seed's multi-host scenario ("docker network create --driver overlay";
# "services on different hosts can communicate"; an internal network stays sealed) played with
# the suite's binaries through cnitool on three simulated hosts (demo/overlay-cluster.sh):
#
#   app-net   overlay, VNI 4001, 10.251.0.0/16, ipMasq:   api (h1), db (h2), web (h3)
#   data-net  overlay, VNI 4002, 10.252.0.0/16, internal: store (h2), cache (h3)
#
# The same two conflists on every host. Prints the reachability matrix it measures next to the
# expected one and exits non-zero if a cell differs. Leaves nothing behind.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
id="cnirs-ovd$$"
tmp="$(mktemp -d /tmp/cnirs-ovdemo.XXXXXX)"
declare -A where=([api]=h1 [db]=h2 [web]=h3 [store]=h2 [cache]=h3)
declare -A netof=([api]=app-net [db]=app-net [web]=app-net [store]=data-net [cache]=data-net)
pods=(api db web store cache)
# shellcheck source=demo/overlay-cluster.sh
source "$repo/demo/overlay-cluster.sh"
trap cluster_down EXIT
cluster_up

overlay_conf app-net 4001 10.251.0.0/16 '{"isDefaultGateway":true,"ipMasq":true}' '[{"type":"isolation"}]'
overlay_conf data-net 4002 10.252.0.0/16 '{"internal":true}' '[{"type":"isolation"}]'

# --- pods ---
declare -A ip
for p in "${pods[@]}"; do
    ip netns add "$id-$p"
    ip["$p"]=$(cnitool add "${netof[$p]}" "$p" | jq -r '.ips[0].address | split("/")[0]')
    say "$p on ${where[$p]} (${netof[$p]}): ${ip[$p]}"
done
ip[h1]=10.240.0.1 ip[h2]=10.240.0.2 ip[internet]=198.51.100.1

# --- the matrix: ping (one retry: the first packet may wait for ARP across the overlay) ---
reach() { # from-ns addr
    ip netns exec "$1" busybox ping -c1 -W1 "$2" >/dev/null 2>&1 ||
        ip netns exec "$1" busybox ping -c1 -W1 "$2" >/dev/null 2>&1
}
declare -A expect=(
    [api,db]=yes [api,web]=yes [db,web]=yes [web,api]=yes [api,internet]=yes [db,internet]=yes
    [api,store]=no [api,cache]=no [store,api]=no
    [store,cache]=yes [cache,store]=yes
    [store,internet]=no [store,h1]=no [store,h2]=no [cache,internet]=no [cache,h1]=no
)
# An internal pod that adds its own default route still gets nowhere.
for p in store cache; do ip -n "$id-$p" route add default via 10.252.0.1; done
fail=0
printf '%-8s %-10s %-9s %-9s %s\n' from to expected measured "" >&2
for k in $(printf '%s\n' "${!expect[@]}" | sort); do
    from=${k%,*} to=${k#*,}
    got=no; reach "$id-$from" "${ip[$to]}" && got=yes
    mark=ok; [[ "$got" == "${expect[$k]}" ]] || { mark=DIFFERS; fail=1; }
    printf '%-8s %-10s %-9s %-9s %s\n' "$from@${where[$from]}" "$to" "${expect[$k]}" "$got" "$mark"
done
if [[ $fail -ne 0 ]]; then
    say "demo-overlay: the measured matrix differs from the expected one"
    for h in "${hosts[@]}"; do say "--- agent $h"; tail -5 "$tmp/agent-$h.log" >&2; done
    exit 1
fi
say "demo-overlay: all cells as expected"
