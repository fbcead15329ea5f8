# Sourced by demo/overlay.sh and bench/overlay.sh: three simulated hosts on an underlay.
#
#   underlay netns $U: a bridge (the switch), 10.240.0.254 (router), 198.51.100.1 ("internet")
#   $id-h1..h3: netns on the switch, ul0 = 10.240.0.N/24, an etcd member each, cnirs-agent
#
# etcd speaks TLS with client certificates (--client-cert-auth), from a CA made on the fly by
# scripts/make-test-ca.sh into $tmp/pki; CNIRS_ETCD_TLS=0 runs it on plain http (the bench's
# "before" figure).
#
# Needs: BIN, CNITOOL, id, tmp set by the caller; pods[] and where[] (pod -> host) and
# netof[] (pod -> network) for cleanup. Defines cnitool(), cluster_up, cluster_down.

hosts=(h1 h2 h3)
U="$id-ul"
pids=()
declare -A agent_pid=()
tls="${CNIRS_ETCD_TLS:-1}"
scheme=http; [[ "$tls" == 1 ]] && scheme=https
endpoints="$scheme://10.240.0.1:2379,$scheme://10.240.0.2:2379,$scheme://10.240.0.3:2379"
pki="$tmp/pki"
etcd_tls=() agent_tls=() etcdctl_tls=()
if [[ "$tls" == 1 ]]; then
    etcd_tls=(--cert-file "$pki/server.pem" --key-file "$pki/server-key.pem"
        --trusted-ca-file "$pki/ca.pem" --client-cert-auth)
    agent_tls=(--etcd-cafile "$pki/ca.pem" --etcd-certfile "$pki/agent.pem"
        --etcd-keyfile "$pki/agent-key.pem")
    etcdctl_tls=(--cacert "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client-key.pem")
fi

say() { printf '%s\n' "$*" >&2; }
hn() { echo "${1#h}"; } # h2 -> 2

cnitool() { # cnitool VERB NET POD
    local h=${where[$3]}
    ip netns exec "$id-$h" env NETCONFPATH="$tmp/net.d" CNI_PATH="$BIN" CNI_CONTAINERID="$3" \
        CNI_IFNAME=eth0 CNI_CACHE_DIR="$tmp/cache-$h" CNIRS_RUN_DIR="$tmp/run-$h" \
        CNIRS_NODE_NAME="$h" "$CNITOOL" "$1" "$2" "/run/netns/$id-$3"
}

cluster_down() {
    set +e
    for p in "${pods[@]}"; do
        [[ -e "/run/netns/$id-$p" ]] && cnitool del "${netof[$p]}" "$p" >/dev/null 2>&1
        ip netns del "$id-$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for ns in "${hosts[@]/#/$id-}" "$U"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$tmp"
    if [[ -n "${ETCD_DATA_ROOT:-}" ]]; then rm -rf "$ETCD_DATA_ROOT/$id-etcd-"*; fi
}

cluster_up() {
    [[ "$(id -u)" -eq 0 ]] || { say "must run as root (it creates network namespaces)"; exit 1; }
    [[ -x "$CNITOOL" ]] || { say "cnitool missing at $CNITOOL (make cnitool)"; exit 1; }
    local b h n cluster=""
    for b in overlay etcd-ipam cnirs-agent isolation; do
        [[ -x "$BIN/$b" ]] || { say "$BIN/$b missing (make build)"; exit 1; }
    done
    command -v etcd >/dev/null || { say "etcd missing (apt-get install etcd-server)"; exit 1; }
    if [[ "$tls" == 1 ]]; then
        "$(dirname "${BASH_SOURCE[0]}")/../scripts/make-test-ca.sh" "$pki" \
            --ip 10.240.0.1,10.240.0.2,10.240.0.3 --client agent 2>/dev/null
    fi
    ip netns add "$U"; ip -n "$U" link set lo up
    ip -n "$U" link add ulbr type bridge; ip -n "$U" link set ulbr up
    ip -n "$U" addr add 10.240.0.254/24 dev ulbr
    ip -n "$U" addr add 198.51.100.1/32 dev lo
    # ETCD_DATA_ROOT: where the members keep their data (default: $tmp, on disk; a tmpfs such
    # as /dev/shm shows what the members' fsyncs cost an ADD: a diagnostic, never durable).
    local etcd_data="$tmp/etcd"
    if [[ -n "${ETCD_DATA_ROOT:-}" ]]; then etcd_data="$ETCD_DATA_ROOT/$id-etcd"; fi
    for h in "${hosts[@]}"; do cluster+="${cluster:+,}$h=http://10.240.0.$(hn "$h"):2380"; done
    for h in "${hosts[@]}"; do
        n=$(hn "$h")
        ip netns add "$id-$h"; ip -n "$id-$h" link set lo up
        ip -n "$U" link add "ul$h" type veth peer name ul0 netns "$id-$h"
        ip -n "$U" link set "ul$h" master ulbr up
        ip -n "$id-$h" addr add "10.240.0.$n/24" dev ul0; ip -n "$id-$h" link set ul0 up
        ip -n "$id-$h" route add default via 10.240.0.254
        ip netns exec "$id-$h" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$id-$h" etcd --name "$h" --data-dir "$etcd_data-$h" \
            --listen-client-urls "$scheme://10.240.0.$n:2379" --advertise-client-urls "$scheme://10.240.0.$n:2379" \
            "${etcd_tls[@]}" \
            --listen-peer-urls "http://10.240.0.$n:2380" --initial-advertise-peer-urls "http://10.240.0.$n:2380" \
            --initial-cluster "$cluster" --initial-cluster-token "$id" --initial-cluster-state new \
            >"$tmp/etcd-$h.log" 2>&1 &
        pids+=($!)
    done
    for _ in $(seq 100); do
        ip netns exec "$id-h1" etcdctl "${etcdctl_tls[@]}" --endpoints "$endpoints" endpoint health \
            >/dev/null 2>&1 && break
        sleep 0.1
    done
    for h in "${hosts[@]}"; do
        ip netns exec "$id-$h" env CNIRS_LOG=info CNIRS_RUN_DIR="$tmp/run-$h" \
            "$BIN/cnirs-agent" --etcd-endpoints "$endpoints" "${agent_tls[@]}" \
            --underlay ul0 --node-name "$h" >"$tmp/agent-$h.log" 2>&1 &
        pids+=($!); agent_pid[$h]=$!
    done
    mkdir -p "$tmp/net.d"
    say "3 hosts, 3 etcd members ($scheme${etcd_tls:+, client certificates required}), 3 agents up"
}

# overlay_conf NAME VNI SUBNET EXTRA-JSON [more plugins JSON array]: the same file for every host.
overlay_conf() {
    local tlskeys='{}'
    [[ "$tls" == 1 ]] && tlskeys=$(jq -n --arg d "$pki" '{etcdCACertFile:($d+"/ca.pem"),
        etcdCertFile:($d+"/client.pem"), etcdKeyFile:($d+"/client-key.pem")}')
    jq -n --arg n "$1" --argjson v "$2" --arg s "$3" --arg e "$endpoints" --argjson x "$4" \
        --argjson more "${5:-[]}" --argjson t "$tlskeys" \
        '{cniVersion:"1.0.0", name:$n, plugins:([({type:"overlay", vni:$v, underlay:"ul0",
          isGateway:true, ipam:({type:"etcd-ipam", etcdEndpoints:($e|split(",")),
          ranges:[[{subnet:$s}]]} + $t)} + $x)] + $more)}' > "$tmp/net.d/$1.conflist"
}
