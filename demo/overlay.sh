#!/usr/bin/env bash
# make demo-overlay: the seed's multi-host scenario ("docker network create --driver overlay";
# "services on different hosts can communicate"; an internal network stays sealed) played with
# the suite's binaries through cnitool on three simulated hosts (demo/overlay-cluster.sh):
# the overlay routed per node block over VXLAN (docs/overlay.md),
#
#   app-net   overlay, VNI 4001, 10.251.0.0/16, ipMasq:   api (h1), db (h2), web (h3)
#   data-net  overlay, VNI 4002, 10.252.0.0/16, internal: store (h2), cache (h3)
#
# The same two conflists on every host; etcd over TLS with client certificates (a CA made on the
# fly). A stranger on the underlay (10.240.0.9, never registered) sends VXLAN with each
# overlay's VNI to h2's device (its MAC as the pod's neighbour): the matrix measures whether a UDP
# datagram of its gets into the pod. Prints the reachability matrix it measures next to the
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
trap 'ip netns del "$id-stranger" 2>/dev/null; cluster_down' EXIT
cluster_up

overlay_conf app-net 4001 10.251.0.0/16 '{"isDefaultGateway":true,"ipMasq":true}' '[{"type":"isolation"}]'
overlay_conf data-net 4002 10.252.0.0/16 '{"internal":true}' '[{"type":"isolation"}]'

# --- pods ---
declare -A ip
for p in api db web store cache; do
    ip netns add "$id-$p"
    r=$(cnitool add "${netof[$p]}" "$p")
    ip["$p"]=$(jq -r '.ips[0].address | split("/")[0]' <<< "$r")
    say "$p on ${where[$p]} (${netof[$p]}): ${ip[$p]}"
done
ip[h1]=10.240.0.1 ip[h2]=10.240.0.2 ip[internet]=198.51.100.1

# --- a stranger on the underlay: not in etcd, its own VXLAN devices towards h2 ---
S="$id-stranger"
ip netns add "$S"; ip -n "$S" link set lo up
ip -n "$U" link add ulstr type veth peer name ul0 netns "$S"
ip -n "$U" link set ulstr master ulbr up
ip -n "$S" addr add 10.240.0.9/24 dev ul0; ip -n "$S" link set ul0 up
spoof() { # dev vni src-cidr pod
    ip -n "$S" link add "$1" type vxlan id "$2" remote 10.240.0.2 local 10.240.0.9 dstport 4789 \
        dev ul0 nolearning
    ip -n "$S" addr add "$3" dev "$1"; ip -n "$S" link set "$1" up
    # Frames for h2 carry its VXLAN device's MAC (derived from the VNI and h2's VTEP: anyone
    # can compute it), which routes them to the pod.
    local vxmac
    vxmac=$(ip -n "$id-h2" -j link show "cnirsvx$2" | jq -r '.[0].address')
    ip -n "$S" neigh replace "${ip[$4]}" lladdr "$vxmac" dev "$1" nud permanent
}
spoof vxa 4001 10.251.255.250/16 db
spoof vxb 4002 10.252.255.250/16 store
# Does a UDP datagram from the stranger reach POD? A listener in the pod, three datagrams.
stranger_reaches() { # pod port
    local out="$tmp/udp-$1"
    ip netns exec "$id-$1" python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(2)
try: print(s.recv(64).decode())
except OSError: pass' "$2" > "$out" 2>/dev/null &
    local l=$!
    sleep 0.3
    ip netns exec "$S" python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3): s.sendto(b"spoofed", (sys.argv[1], int(sys.argv[2]))); time.sleep(0.1)' \
        "${ip[$1]}" "$2" 2>/dev/null || true
    wait "$l" 2>/dev/null || true
    grep -q spoofed "$out"
}

# --- the matrix: ping (one retry: the first packet may wait for ARP across the overlay) ---
reach() { # from-ns addr
    ip netns exec "$1" busybox ping -c1 -W1 "$2" >/dev/null 2>&1 ||
        ip netns exec "$1" busybox ping -c1 -W1 "$2" >/dev/null 2>&1
}
declare -A expect=(
    [stranger,db]=no [stranger,store]=no
    [api,db]=yes [api,web]=yes [db,web]=yes [web,api]=yes [api,internet]=yes [db,internet]=yes
    [api,store]=no [api,cache]=no [store,api]=no
    [store,cache]=yes [cache,store]=yes
    [store,internet]=no [store,h1]=no [store,h2]=no [cache,internet]=no [cache,h1]=no
)
# An internal pod that adds its own default route still gets nowhere.
for p in store cache; do ip -n "$id-$p" route add default via 10.252.0.1 dev eth0 onlink; done
fail=0
printf '%-8s %-10s %-9s %-9s %s\n' from to expected measured "" >&2
for k in $(printf '%s\n' "${!expect[@]}" | sort); do
    from=${k%,*} to=${k#*,}
    got=no
    if [[ "$from" == stranger ]]; then
        stranger_reaches "$to" 7000 && got=yes
    else
        reach "$id-$from" "${ip[$to]}" && got=yes
    fi
    mark=ok; [[ "$got" == "${expect[$k]}" ]] || { mark=DIFFERS; fail=1; }
    printf '%-8s %-10s %-9s %-9s %s\n' "$from@${where[$from]:-underlay}" "$to" "${expect[$k]}" "$got" "$mark"
done
# Control for the stranger rows: h2's agent stopped (it would put the rules back) and the two
# gate rules deleted, the same datagram does get into db. So the "no" above is the gate's.
kill "${agent_pid[h2]}"; wait "${agent_pid[h2]}" 2>/dev/null || true
for h in $(ip netns exec "$id-h2" nft -a list chain inet cnirs input |
    sed -n 's/.*@vtep_ports.*# handle \([0-9]*\)$/\1/p'); do
    ip netns exec "$id-h2" nft delete rule inet cnirs input handle "$h"
done
got=no; stranger_reaches db 7001 && got=yes
mark=ok; [[ "$got" == yes ]] || { mark=DIFFERS; fail=1; }
printf '%-8s %-10s %-9s %-9s %s\n' "stranger@underlay" "db (control: h2's gate rules removed)" yes "$got" "$mark"
if [[ $fail -ne 0 ]]; then
    say "demo-overlay: the measured matrix differs from the expected one"
    for h in "${hosts[@]}"; do say "--- agent $h"; tail -5 "$tmp/agent-$h.log" >&2; done
    exit 1
fi
say "demo-overlay: all cells as expected"
