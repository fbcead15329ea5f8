#!/usr/bin/env bash
# make demo-overlay: the seed's multi-host scenario ("docker network create --driver overlay";
# "services on different hosts can communicate"; an internal network stays sealed) played with
# the suite's binaries through cnitool on three simulated hosts:
#
#   underlay netns: a bridge (the switch), 10.240.0.254 (router), 198.51.100.1 ("internet")
#   h1, h2, h3:     netns on the switch, ul0 = 10.240.0.N/24, an etcd member each, cnirs-agent
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
U="$id-ul"
tmp="$(mktemp -d /tmp/cnirs-ovdemo.XXXXXX)"
hosts=(h1 h2 h3)
declare -A where=([api]=h1 [db]=h2 [web]=h3 [store]=h2 [cache]=h3)
declare -A netof=([api]=app-net [db]=app-net [web]=app-net [store]=data-net [cache]=data-net)
pods=(api db web store cache)
pids=()
endpoints="http://10.240.0.1:2379,http://10.240.0.2:2379,http://10.240.0.3:2379"

say() { printf '%s\n' "$*" >&2; }
hn() { echo "${1#h}"; } # h2 -> 2

cnitool() { # cnitool VERB NET POD
    local h=${where[$3]}
    ip netns exec "$id-$h" env NETCONFPATH="$tmp/net.d" CNI_PATH="$BIN" CNI_CONTAINERID="$3" \
        CNI_IFNAME=eth0 CNI_CACHE_DIR="$tmp/cache-$h" CNIRS_RUN_DIR="$tmp/run-$h" \
        CNIRS_NODE_NAME="$h" "$CNITOOL" "$1" "$2" "/run/netns/$id-$3"
}

cleanup() {
    set +e
    for p in "${pods[@]}"; do
        [[ -e "/run/netns/$id-$p" ]] && cnitool del "${netof[$p]}" "$p" >/dev/null 2>&1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for ns in "${pods[@]/#/$id-}" "${hosts[@]/#/$id-}" "$U"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

[[ "$(id -u)" -eq 0 ]] || { say "make demo-overlay must run as root (it creates network namespaces)"; exit 1; }
[[ -x "$CNITOOL" ]] || { say "cnitool missing at $CNITOOL (make cnitool)"; exit 1; }
for b in overlay etcd-ipam cnirs-agent; do
    [[ -x "$BIN/$b" ]] || { say "$BIN/$b missing (make build)"; exit 1; }
done
command -v etcd >/dev/null || { say "etcd missing (apt-get install etcd-server)"; exit 1; }

# --- the underlay: a switch that also routes to the "internet" ---
ip netns add "$U"; ip -n "$U" link set lo up
ip -n "$U" link add ulbr type bridge; ip -n "$U" link set ulbr up
ip -n "$U" addr add 10.240.0.254/24 dev ulbr
ip -n "$U" addr add 198.51.100.1/32 dev lo

# --- three hosts, an etcd member on each ---
cluster=""
for h in "${hosts[@]}"; do cluster+="${cluster:+,}$h=http://10.240.0.$(hn "$h"):2380"; done
for h in "${hosts[@]}"; do
    n=$(hn "$h")
    ip netns add "$id-$h"; ip -n "$id-$h" link set lo up
    ip -n "$U" link add "ul$h" type veth peer name ul0 netns "$id-$h"
    ip -n "$U" link set "ul$h" master ulbr up
    ip -n "$id-$h" addr add "10.240.0.$n/24" dev ul0; ip -n "$id-$h" link set ul0 up
    ip -n "$id-$h" route add default via 10.240.0.254
    ip netns exec "$id-$h" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$id-$h" etcd --name "$h" --data-dir "$tmp/etcd-$h" \
        --listen-client-urls "http://10.240.0.$n:2379" --advertise-client-urls "http://10.240.0.$n:2379" \
        --listen-peer-urls "http://10.240.0.$n:2380" --initial-advertise-peer-urls "http://10.240.0.$n:2380" \
        --initial-cluster "$cluster" --initial-cluster-token "$id" --initial-cluster-state new \
        >"$tmp/etcd-$h.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 100); do
    ip netns exec "$id-h1" etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
for h in "${hosts[@]}"; do
    ip netns exec "$id-$h" env CNIRS_LOG=info "$BIN/cnirs-agent" --etcd-endpoints "$endpoints" \
        --underlay ul0 --node-name "$h" >"$tmp/agent-$h.log" 2>&1 &
    pids+=($!)
done
say "3 hosts, 3 etcd members, 3 agents up"

# --- the same two conflists on every host ---
mkdir -p "$tmp/net.d"
conf() { # name vni subnet extra-json
    jq -n --arg n "$1" --argjson v "$2" --arg s "$3" --arg e "$endpoints" --argjson x "$4" \
        '{cniVersion:"1.0.0", name:$n, plugins:[({type:"overlay", vni:$v, underlay:"ul0",
          isGateway:true, ipam:{type:"etcd-ipam", etcdEndpoints:($e|split(",")),
          ranges:[[{subnet:$s}]]}} + $x), {type:"isolation"}]}' > "$tmp/net.d/$1.conflist"
}
conf app-net 4001 10.251.0.0/16 '{"isDefaultGateway":true,"ipMasq":true}'
conf data-net 4002 10.252.0.0/16 '{"internal":true}'

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
