#!/usr/bin/env bash
# NetworkPolicy on one host (docs/netpol.md), in a scratch network namespace:
#   - the netpol plugin's ADD with 0 and with 200 policies in force (same run, 500 pods known):
#     two scratch hosts with the same objects and pods, one without policies and one with
#     them, their ADDs alternated (so both series see the same load and cache state);
#   - `cnirs policy apply` of 200 policies over 500 attached pods: the command returns after
#     the kernel transaction, so its duration is the time from apply to enforcement;
#   - the table's size (rules, np_* elements).
# The plugin runs alone with a prevResult (no bridge): this is its own cost. Writes
# target/bench/netpol.md. Knobs: PODS (500), POLICIES (200), SAMPLES (100); PROFILE=FILE also
# times one more ADD (/usr/bin/time: user vs sys) and writes its `strace -c` to FILE; PERF=FILE
# records ten more ADDs with `perf record -g` to FILE.0..9.
set -euo pipefail
BIN=$(realpath "${CNIRS_BIN_DIR:-target/release}")
PODS=${PODS:-500} POLICIES=${POLICIES:-200} SAMPLES=${SAMPLES:-100}
NS0=cnirs-npbench0-$$ NS200=cnirs-npbench-$$
TMP=$(mktemp -d)
cleanup() { ip netns del "$NS0" 2>/dev/null || true; ip netns del "$NS200" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
ip netns add "$NS0"
ip netns add "$NS200"
RUN0=$TMP/run0 POL0=$TMP/policy0
# The host with policies; add and cnirs act on NS, RUN, POL (NS0's when prefixed so).
NS=$NS200 RUN=$TMP/run POL=$TMP/policy
on0() { NS=$NS0 RUN=$RUN0 POL=$POL0 "$@"; }
ip_of() { local a=$(($1 + 1)); echo "10.$((64 + a / 65536)).$((a / 256 % 256)).$((a % 256))"; }

# add CID IP NAMESPACE NAME
add() {
  printf '{"cniVersion":"1.0.0","name":"bench","type":"netpol","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"%s/8"}]}}' "$2" |
    ip netns exec "$NS" env -i CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS=/run/netns/"$NS" \
      CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=$3;K8S_POD_NAME=$4" \
      CNIRS_RUN_DIR="$RUN" CNIRS_POLICY_DIR="$POL" "$BIN/netpol" >/dev/null
}
cnirs() { ip netns exec "$NS" env CNIRS_RUN_DIR="$RUN" CNIRS_POLICY_DIR="$POL" CNIRS_LOG=warn "$BIN/cnirs" "$@"; }
now() { date +%s%N; }

# Objects: 10 namespaces, PODS pods (labels app=a0..a19), their attachments.
{
  for n in $(seq 0 9); do printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns%d, labels: {tier: t%d}}\n' "$n" $((n % 3)); done
  for i in $(seq 0 $((PODS - 1))); do
    printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns%d, labels: {app: a%d}}\nspec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}\n' "$i" $((i % 10)) $((i % 20))
  done
} > "$TMP/objects.yaml"
for host in "" on0; do
  $host cnirs policy apply -f "$TMP/objects.yaml"
  for i in $(seq 0 $((PODS - 1))); do $host add "c$i" "$(ip_of "$i")" ns$((i % 10)) p$i; done
done

# ADD cost, SAMPLES pods on each host, alternated: wall ms per ADD (median) and CPU ms (user
# + sys of the plugin process, mean: on a shared machine the wall time mostly measures the
# others' load).
one_add() { # HOST-PREFIX I -> "WALL_NS CPU_S"
  local t0 t1 cpu
  t0=$(now)
  cpu=$( { TIMEFORMAT='%3U %3S'; time $1 add "c$2" "$(ip_of "$2")" ns$(($2 % 10)) p$2 2>>"$TMP/add.err"; } 2>&1 )
  t1=$(now)
  read -r u s <<<"$cpu"
  echo "$((t1 - t0)) $(echo "$u + $s" | bc)"
}
summary() { # FILE of "WALL_NS CPU_S" lines
  local med cpu
  med=$(cut -d' ' -f1 "$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  cpu=$(awk '{c+=$2} END {printf "%.2f", c*1000/NR}' "$1")
  echo "$(echo "scale=2; $med / 1000000" | bc) ms (CPU $cpu ms)"
}
measure_adds() {
  : >"$TMP/s0"; : >"$TMP/s200"
  for k in $(seq 0 $((SAMPLES - 1))); do
    one_add on0 $((100000 + k)) >>"$TMP/s0"
    one_add "" $((100000 + k)) >>"$TMP/s200"
  done
}

# POLICIES policies: each selects one app in one namespace; ingress from an app of its
# namespace on a named port and from a tier of namespaces on a range; some egress.
{
  for j in $(seq 0 $((POLICIES - 1))); do
    printf -- '---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np%d, namespace: ns%d}\nspec:\n  podSelector: {matchLabels: {app: a%d}}\n' "$j" $((j % 10)) $((j % 20))
    printf '  ingress:\n  - from: [{podSelector: {matchLabels: {app: a%d}}}]\n    ports: [{port: http}]\n' $(((j + 1) % 20))
    printf '  - from: [{namespaceSelector: {matchLabels: {tier: t%d}}, podSelector: {matchLabels: {app: a%d}}}, {ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]\n    ports: [{port: 9000, endPort: 9100}]\n' $((j % 3)) $(((j + 3) % 20))
    if [ $((j % 4)) = 0 ]; then
      printf '  egress:\n  - to: [{namespaceSelector: {}}]\n    ports: [{port: 53, protocol: UDP}]\n'
    fi
  done
} > "$TMP/policies.yaml"
t0=$(now); cnirs policy apply -f "$TMP/policies.yaml"; t1=$(now)
apply_ms=$(echo "scale=1; ($t1 - $t0) / 1000000" | bc)
measure_adds
add0=$(summary "$TMP/s0") add200=$(summary "$TMP/s200")
if [ -n "${PROFILE:-}" ]; then
  i=300000
  printf '{"cniVersion":"1.0.0","name":"bench","type":"netpol","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"%s/8"}]}}' "$(ip_of $i)" >"$TMP/stdin"
  ip netns exec "$NS" env -i CNI_COMMAND=ADD CNI_CONTAINERID=c$i CNI_NETNS=/run/netns/"$NS" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=ns0;K8S_POD_NAME=p$i" \
    CNIRS_RUN_DIR="$RUN" CNIRS_POLICY_DIR="$POL" strace -f -c -o "$PROFILE" "$BIN/netpol" <"$TMP/stdin" >/dev/null
  ip netns exec "$NS" env -i CNI_COMMAND=ADD CNI_CONTAINERID=c$((i+1)) CNI_NETNS=/run/netns/"$NS" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=ns0;K8S_POD_NAME=p$((i+1))" \
    CNIRS_RUN_DIR="$RUN" CNIRS_POLICY_DIR="$POL" /usr/bin/time -f "one ADD: %e s elapsed, %U user, %S sys" "$BIN/netpol" <"$TMP/stdin" >/dev/null
fi
if [ -n "${PERF:-}" ]; then
  i=310000
  printf '{"cniVersion":"1.0.0","name":"bench","type":"netpol","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"%s/8"}]}}' "$(ip_of $i)" >"$TMP/stdin"
  for k in 0 1 2 3 4 5 6 7 8 9; do
    ip netns exec "$NS" env -i CNI_COMMAND=ADD CNI_CONTAINERID=c$((i+k)) CNI_NETNS=/run/netns/"$NS" \
      CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=ns0;K8S_POD_NAME=p$((i+k))" \
      CNIRS_RUN_DIR="$RUN" CNIRS_POLICY_DIR="$POL" perf record -q -F 20000 -g -o "$PERF.$k" "$BIN/netpol" <"$TMP/stdin" >/dev/null 2>&1
  done
fi
read -r rules elems < <(ip netns exec "$NS" nft -j list table inet cnirs | python3 -c '
import json,sys
d=json.load(sys.stdin)["nftables"]
print(sum(1 for o in d if "rule" in o),
      sum(len(o["set"].get("elem",[])) for o in d if "set" in o and o["set"]["name"].startswith("np_")))')
json_kb=$(( $(stat -c %s "$RUN"/netns-*/netpol.json) / 1024 ))
mkdir -p target/bench
{
  echo "## NetworkPolicy (bench/netpol.sh; load: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "| what | value |"
  echo "|---|---|"
  echo "| netpol ADD, 0 policies, $PODS pods known (median of $SAMPLES, alternated with the next row) | ${add0} |"
  echo "| netpol ADD, $POLICIES policies in force, same run | ${add200} |"
  echo "| \`cnirs policy apply\` of $POLICIES policies over $PODS pods, to enforcement | ${apply_ms} ms |"
  echo "| table inet cnirs: rules (whole table) / np_* elements | $rules / $elems |"
  echo "| netpol.json (the recorded elements) | ${json_kb} KiB |"
} | tee target/bench/netpol.md
