#!/usr/bin/env bash
# make demo: the seed scenario (shared/seeds: "Docker network isolation") played with the
# suite's binaries through cnitool (libcni), inside throw-away network namespaces:
#
#   frontend  (bridge + host-local + portmap + isolation          web, api
#              + dnsname: web finds api by name)
#   backend   (internal-bridge + host-local + isolation,          api, db
#              subnet 172.20.0.0/16, range 172.20.0.2-254, gw 172.20.0.1)
#   web publishes 127.0.0.1:8080 -> :80;  "outside" is a netns routed beyond the host netns.
#
# Prints the reachability matrix it measures next to the expected one and exits non-zero if a
# cell differs. Leaves nothing behind: every namespace, file and rule lives in what it creates.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CNIRS_BIN_DIR:-$repo/target/release}"
CNITOOL="${CNITOOL:-$repo/conformance/cnitool/bin/cnitool}"
id="cnirs-demo$$"
H="$id-host" O="$id-out"
tmp="$(mktemp -d /tmp/cnirs-demo.XXXXXX)"
pods=(web api db)

say() { printf '%s\n' "$*" >&2; }

cnitool() { # cnitool VERB NET POD IFNAME [CAP_ARGS]
    ip netns exec "$H" env NETCONFPATH="$tmp/net.d" CNI_PATH="$BIN" CNI_CONTAINERID="$3" \
        CNI_IFNAME="$4" CNI_CACHE_DIR="$tmp/cache" CNIRS_RUN_DIR="$tmp/run" \
        CAP_ARGS="${5:-}" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$3" \
        CNIRS_DNS_RESOLV_CONF="$tmp/resolv.conf" "$CNITOOL" "$1" "$2" "/run/netns/$id-$3"
}

cleanup() {
    set +e
    for a in "web frontend eth0" "api frontend eth0" "api backend eth1" "db backend eth0"; do
        set -- $a
        [[ -e "/run/netns/$id-$1" ]] && cnitool del "$2" "$1" "$3" >/dev/null 2>&1
    done
    for ns in "${pods[@]/#/$id-}" "$O" "$H"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$tmp" "/etc/netns/$id-web"
    rmdir /etc/netns 2>/dev/null
}
trap cleanup EXIT

[[ "$(id -u)" -eq 0 ]] || { say "make demo must run as root (it creates network namespaces)"; exit 1; }
[[ -x "$CNITOOL" ]] || { say "cnitool missing at $CNITOOL (make cnitool)"; exit 1; }

# --- the "host" and the "outside" (internet stand-in: TEST-NET-3 addresses) ---
ip netns add "$H"; ip -n "$H" link set lo up
ip netns add "$O"; ip -n "$O" link set lo up
ip -n "$H" link add uplink type veth peer name wan netns "$O"
ip -n "$H" addr add 203.0.113.1/24 dev uplink; ip -n "$H" link set uplink up
ip -n "$O" addr add 203.0.113.2/24 dev wan; ip -n "$O" link set wan up
ip -n "$H" route add default via 203.0.113.2

# --- networks: the shipped seed conflists, with dataDir moved into the temp dir ---
mkdir -p "$tmp/net.d" "$tmp/cache" "$tmp/run"
# dnsname's resolver forwards other names to the "outside" (nothing answers there): no query
# of the demo ever reaches a real resolver.
echo "nameserver 203.0.113.2" > "$tmp/resolv.conf"
for f in "$repo"/conf-examples/seed/*.conflist; do
    jq --arg d "$tmp/ipam" '(.plugins[] | select(.ipam) | .ipam.dataDir) = $d' "$f" \
        > "$tmp/net.d/$(basename "$f")"
done

# --- pods ---
for p in "${pods[@]}"; do ip netns add "$id-$p"; done
addr() { jq -r '.ips[0].address | split("/")[0]'; }
web_result=$(cnitool add frontend web eth0 \
    '{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]}')
web=$(addr <<<"$web_result")
# What a runtime does with the result's dns: web's resolv.conf (ip netns exec mounts
# /etc/netns/NAME/resolv.conf over /etc/resolv.conf for the commands it runs in web).
mkdir -p "/etc/netns/$id-web"
jq -r '(.dns.nameservers[] | "nameserver \(.)"), "search \(.dns.search | join(" "))"' \
    <<<"$web_result" > "/etc/netns/$id-web/resolv.conf"
api_front=$(cnitool add frontend api eth0 | addr)
api_back=$(cnitool add backend api eth1 | addr)
db=$(cnitool add backend db eth0 | addr)
say "web $web (frontend), api $api_front (frontend) + $api_back (backend), db $db (backend)"

# --- an HTTP server in every pod and outside ---
serve() { # netns name
    mkdir -p "$tmp/www-$2"; echo "$2" > "$tmp/www-$2/index.html"
    ip netns exec "$1" busybox httpd -p 80 -h "$tmp/www-$2"
}
for p in "${pods[@]}"; do serve "$id-$p" "$p"; done
serve "$O" outside

# --- the matrix ---
reach() { # from-netns url -> 0 if the page comes back; curl's exit code otherwise
    ip netns exec "$1" curl -s -m 2 -o /dev/null "$2"
}
why() { # curl exit code -> what happened
    case "$1" in
        0) echo "answered" ;; 7) echo "refused/unreachable" ;; 28) echo "timed out (dropped)" ;;
        *) echo "curl exit $1" ;;
    esac
}
fails=0
row() { # label from-netns url expected(yes/no)
    local got=no rc=0
    reach "$2" "$3" || rc=$?
    [[ $rc -eq 0 ]] && got=yes
    local mark="ok"
    [[ "$got" == "$4" ]] || { mark="DIFFERS"; fails=$((fails + 1)); }
    printf '  %-36s expected %-4s measured %-4s %-8s %s\n' "$1" "$4" "$got" "$mark" "$(why $rc)"
}
echo "Reachability (HTTP), seed scenario:"
row "web -> api (frontend)"           "$id-web" "http://$api_front/" yes
row "web -> http://api/ (by name)"    "$id-web" "http://api/"        yes
row "api -> db (backend)"             "$id-api" "http://$db/"        yes
row "web -> db"                       "$id-web" "http://$db/"        no
row "db -> web"                       "$id-db"  "http://$web/"       no
row "db -> api (frontend address)"    "$id-db"  "http://$api_front/" no
row "db -> outside"                   "$id-db"  "http://203.0.113.2/" no
row "web -> outside"                  "$id-web" "http://203.0.113.2/" yes
row "api -> outside"                  "$id-api" "http://203.0.113.2/" yes
row "outside -> web"                  "$O"      "http://$web/"       no
row "outside -> db"                   "$O"      "http://$db/"        no
# The internal network is sealed on the host, not by the pod's routing table: give db a
# default route via the bridge and try again.
ip -n "$id-db" route add default via 172.20.0.1
row "db (own default route) -> outside" "$id-db" "http://203.0.113.2/" no
row "db (own default route) -> web"   "$id-db"  "http://$web/"       no
dnsrow() { # label from-netns name server expected(yes/no)
    local got=no mark=ok
    ip netns exec "$2" busybox nslookup "$3" "$4" >/dev/null 2>&1 && got=yes
    [[ "$got" == "$5" ]] || { mark="DIFFERS"; fails=$((fails + 1)); }
    printf '  %-36s expected %-4s measured %-4s %-8s %s\n' "$1" "$5" "$got" "$mark" "DNS query"
}
dnsrow "db (own route) -> api, frontend DNS" "$id-db" api 10.89.0.1 no
row "host -> 127.0.0.1:8080 (web)"    "$H"      "http://127.0.0.1:8080/" yes
row "host -> 203.0.113.1:8080"        "$H"      "http://203.0.113.1:8080/" no
row "outside -> 203.0.113.1:8080"     "$O"      "http://203.0.113.1:8080/" no
if [[ $fails -eq 0 ]]; then
    echo "All cells as expected."
else
    echo "$fails cell(s) differ from the expected matrix."
    exit 1
fi
