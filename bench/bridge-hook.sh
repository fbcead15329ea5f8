#!/usr/bin/env bash
# What filtering traffic between two pods on one bridge costs (#31: bridge-family table or the
# bridge's netfilter hook). One host namespace with a bridge and two pod namespaces (veth
# pairs), three modes alternated in the same run:
#   none          bridge-nf-call-iptables=0, no table: the bridge alone
#   br_netfilter  bridge-nf-call-iptables=1 and an inet table whose forward chain does what
#                 netpol's does per packet (conntrack: established passes; a set lookup of the
#                 destination and port for new connections; drop the rest to an isolated pod)
#   bridge        bridge-nf-call-iptables=0 and the same chain in a bridge-family table,
#                 without conntrack (this kernel has no nf_conntrack_bridge, so replies could
#                 only be allowed statelessly: a lower bound of that design's cost)
# Cells: iperf3 TCP (1 stream, Gbit/s) and UDP 64-byte datagrams (receiver's packets/s),
# ROUNDS rounds of SECS s each. Needs root, iperf3, nft. Prints a markdown table.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-4}"
id="cnirs-bh$$"
h="$id-h" p1="$id-p1" p2="$id-p2"
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "$p1" "$p2" "$h"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

ip netns add "$h"
ip netns add "$p1"
ip netns add "$p2"
ip -n "$h" link add br0 type bridge
ip -n "$h" link set br0 up
i=2
for p in "$p1" "$p2"; do
    ip -n "$h" link add "v$i" type veth peer name eth0 netns "$p"
    ip -n "$h" link set "v$i" master br0 up
    ip -n "$p" addr add "10.99.0.$i/24" dev eth0
    ip -n "$p" link set eth0 up
    ip -n "$p" link set lo up
    i=$((i + 1))
done

chain='
        ct state established,related accept
        ip daddr @pods tcp dport 5201 accept
        ip daddr @pods udp dport 5201 accept
        ip daddr @isolated drop'
chain_bridge='
        ip daddr @pods tcp dport 5201 accept
        ip saddr @pods tcp sport 5201 accept
        ip daddr @pods udp dport 5201 accept
        ip daddr @isolated drop'
sets='
    set pods { type ipv4_addr; flags interval; elements = { 10.99.0.3 } }
    set isolated { type ipv4_addr; elements = { 10.99.0.3 } }'

# table FAMILY CHAIN-BODY: the sets and a forward chain in the host namespace.
table() {
    ip netns exec "$h" nft -f - <<EOF
table $1 t {$sets
    chain filter_forward { type filter hook forward priority 0; policy accept;$2
    }
}
EOF
}

mode() {
    ip netns exec "$h" nft flush ruleset
    local hook=0
    [[ "$1" == br_netfilter ]] && hook=1
    ip netns exec "$h" sysctl -qw net.bridge.bridge-nf-call-iptables=$hook
    case "$1" in
    br_netfilter) table inet "$chain" ;;
    bridge) table bridge "$chain_bridge" ;;
    esac
}

ip netns exec "$p2" iperf3 -s -D -p 5201 --pidfile "/tmp/$id.pid" >/dev/null
sleep 0.5
pids+=("$(cat "/tmp/$id.pid")")
rm -f "/tmp/$id.pid"

declare -A tcp udp
for m in none br_netfilter bridge; do tcp[$m]=""; udp[$m]=""; done
for r in $(seq "$ROUNDS"); do
    for m in none br_netfilter bridge; do
        mode "$m"
        t=$(ip netns exec "$p1" iperf3 -c 10.99.0.3 -p 5201 -t "$SECS" -J |
            jq '.end.sum_received.bits_per_second / 1e9')
        u=$(ip netns exec "$p1" iperf3 -c 10.99.0.3 -p 5201 -u -b 0 -l 64 -t "$SECS" -J |
            jq '.end.sum.packets / .end.sum.seconds * (1 - .end.sum.lost_percent / 100)')
        tcp[$m]+=" $t"
        udp[$m]+=" $u"
        echo "round $r $m: tcp $t Gbit/s, udp $u pkt/s" >&2
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| mode (${ROUNDS} rounds x ${SECS} s, median; load $(cut -d' ' -f1-3 /proc/loadavg)) | TCP 1 stream | UDP 64 B delivered |"
echo "|---|---|---|"
for m in none br_netfilter bridge; do
    t=$(echo "${tcp[$m]}" | median)
    u=$(echo "${udp[$m]}" | median)
    printf '| %s | %.2f Gbit/s | %.0f kpkt/s |\n' "$m" "$t" "$(echo "$u / 1000" | bc -l)"
done
