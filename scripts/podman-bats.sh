#!/usr/bin/env bash
# podman's own networking system tests (podman v4.3.1, test/system/500-networking.bats) against
# a chosen set of CNI plugins, confined to a private network namespace and mount namespace:
# podman's storage, network configs, netns, the plugins' state and the host's resolv.conf are
# all private, so nothing reaches the machine. Run as root, under the global test lock:
#
#   flock /tmp/cnirs-global.lock scripts/podman-bats.sh PODMAN_GIT_DIR [ours|go|mixed] [bats args]
#
#   PODMAN_GIT_DIR  a clone of github.com/containers/podman with tag v4.3.1 (its tests are read
#                   from there with `git archive`, never copied into this repository)
#   ours   our release binaries (CNIRS_BIN_DIR, default target/release) as /opt/cni/bin
#   go     Debian's reference plugins and the Go dnsname
#          (golang-github-containernetworking-plugin-dnsname), /usr/lib/cni
#   mixed  the reference plugins with our dnsname
#   UPSTREAM=refuse (default): the host's resolver (dnsmasq on 127.0.0.1, the private
#          /etc/resolv.conf) answers google.com with an A record and REFUSED for AAAA (dnsmasq
#          --address, the scenario of issue 29); UPSTREAM=nodata: NOERROR with no AAAA.
#
# Needs bats, podman 4.3 with conmon and runc, dnsmasq, ncat (the tests' host-side `nc`), curl,
# busybox-static. The test image (quay.io/libpod/testimage:20220615, an Alpine image with
# busybox-extras) is not pulled: a stand-in with the same name is imported from a directory
# holding Debian's static busybox, with `busybox-extras` and a `nc` that adds the `-n -v`
# report of busybox-extras' nc (`listening on [::]:PORT`, `connect to [..]:PORT from [..]:P`,
# the peer read from netstat) on top of busybox's `nc -l -e`: Debian's busybox lacks those
# nc flags.
# Containers run with nofile/nproc limits of 1024 (containers.conf default_ulimits, and a runc
# wrapper for the tests that replace containers.conf): root here has no CAP_SYS_RESOURCE for
# podman's 1048576. The plugin set is also mounted over /usr/lib/cni, where podman looks
# without our containers.conf.
set -euo pipefail

src="${1:?usage: $0 PODMAN_GIT_DIR [ours|go|mixed] [bats args]}"
plugins="${2:-ours}"
shift $(( $# >= 2 ? 2 : 1 ))
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CNIRS_BIN_DIR:-$repo/target/release}"
upstream="${UPSTREAM:-refuse}"
ns="cnirs-bats$$"
tmp="$(mktemp -d /tmp/cnirs-bats.XXXXXX)"
dnsmasq_pid=

cleanup() {
    set +e
    [[ -n "$dnsmasq_pid" ]] && kill "$dnsmasq_pid" 2>/dev/null && wait "$dnsmasq_pid" 2>/dev/null
    # Whatever podman left in the netns (conmon, containers, resolvers) goes with it.
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

git --git-dir="$src" archive v4.3.1 test/system | tar -x -C "$tmp"

# The plugin directory podman is given.
mkdir -p "$tmp/cni"
case "$plugins" in
    ours) cp "$bin"/{bridge,host-local,portmap,firewall,tuning,dnsname} "$tmp/cni/" ;;
    go) cp /usr/lib/cni/{bridge,host-local,portmap,firewall,tuning,dnsname,loopback} "$tmp/cni/" ;;
    mixed) cp /usr/lib/cni/{bridge,host-local,portmap,firewall,tuning,loopback} "$tmp/cni/"
           cp "$bin/dnsname" "$tmp/cni/" ;;
    *) echo "plugins: ours, go or mixed" >&2; exit 2 ;;
esac

# The stand-in test image.
root="$tmp/rootfs"
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,var/www,root}
cp /bin/busybox "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
    [[ -e "$root/bin/$a" ]] || ln -s busybox "$root/bin/$a"
done
printf '#!/bin/busybox sh\nexec /bin/busybox "$@"\n' > "$root/bin/busybox-extras"
rm -f "$root/bin/nc"
cat > "$root/bin/nc" <<'EOF'
#!/bin/busybox sh
# busybox-extras' `nc -l -n -v -p PORT` (this busybox's nc has no -n/-v): one connection, its
# data on stderr (the container log), the two reports busybox-extras prints.
case " $* " in *" -v "*) ;; *) exec /bin/busybox nc "$@" ;; esac
port=
while [ $# -gt 0 ]; do [ "$1" = -p ] && port=$2; shift; done
echo "listening on [::]:$port ..." >&2
export NC_PORT=$port
exec /bin/busybox nc -l -p "$port" -e /bin/nc-peer
EOF
cat > "$root/bin/nc-peer" <<'EOF'
#!/bin/busybox sh
# Run by nc -e on the accepted connection: who connected (from netstat), then the data.
/bin/busybox netstat -tn | while read -r proto rq sq local remote state; do
    case "$local:$state" in
        *":$NC_PORT:ESTABLISHED" | *":$NC_PORT:CLOSE_WAIT")
            l=${local#::ffff:} r=${remote#::ffff:}
            echo "connect to [::ffff:${l%:*}]:${l##*:} from [::ffff:${r%:*}]:${r##*:} (${r%:*}:${r##*:})" >&2
            break ;;
    esac
done
exec /bin/busybox cat >&2
EOF
chmod +x "$root/bin/nc" "$root/bin/nc-peer" "$root/bin/busybox-extras"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
tar -C "$root" -cf "$tmp/testimage.tar" .

# podman's configuration: CNI backend, this plugin dir, storage in the private tmpfs.
cp -a /etc/containers "$tmp/etc-containers"
cat > "$tmp/etc-containers/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$tmp/etc-containers/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
# ::1 (nobody listens there) so that "podman ipv6 in /etc/resolv.conf" runs, not skips.
printf 'nameserver 127.0.0.1\nnameserver ::1\n' > "$tmp/resolv.conf"
# Two tests replace containers.conf (CONTAINERS_CONF) and so lose default_ulimits: runc is
# wrapped to cap the nofile/nproc limits in the bundle at 1024 before it runs.
cp "$(command -v runc)" "$tmp/runc.real"
cat > "$tmp/runc" <<EOF
#!/bin/sh
prev=
for a; do case \$prev in --bundle|-b) b=\$a ;; esac; prev=\$a; done
if [ -n "\$b" ] && [ -f "\$b/config.json" ]; then
    jq '(.process.rlimits // []) |= map(if .type == "RLIMIT_NOFILE" or .type == "RLIMIT_NPROC"
        then .hard = ([.hard, 1024] | min) | .soft = ([.soft, 1024] | min) else . end)' \
        "\$b/config.json" > "\$b/config.json.cnirs" && mv "\$b/config.json.cnirs" "\$b/config.json"
fi
exec $tmp/runc.real "\$@"
EOF
chmod +x "$tmp/runc"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
case "$upstream" in
    refuse) records=(--address=/google.com/198.51.100.30) ;;
    nodata) records=(--host-record=google.com,198.51.100.30 --local=/google.com/) ;;
    *) echo "UPSTREAM: refuse or nodata" >&2; exit 2 ;;
esac
ip netns exec "$ns" dnsmasq -k --conf-file=/dev/null --pid-file= -u root --no-resolv --no-hosts \
    --listen-address=127.0.0.1 --bind-interfaces "${records[@]}" &
dnsmasq_pid=$!

bats_args=""
[[ $# -gt 0 ]] && bats_args="$(printf '%q ' "$@")"
cat > "$tmp/inner.sh" <<EOF
set -e
mount -t tmpfs cnirs-bats-run /run
mount -t tmpfs cnirs-bats-varlib /var/lib/containers
mount -t tmpfs cnirs-bats-cni /etc/cni/net.d
mount -t tmpfs cnirs-bats-opt /opt
mkdir -p /opt/cni/bin /run/netns
cp $tmp/cni/* /opt/cni/bin/
mount --bind $tmp/etc-containers /etc/containers
mount --bind $tmp/resolv.conf /etc/resolv.conf
mount --bind $tmp/runc $(command -v runc)
# The same plugins where podman looks without our containers.conf.
mount --bind $tmp/cni /usr/lib/cni
podman import -q $tmp/testimage.tar quay.io/libpod/testimage:20220615 >/dev/null
cd $tmp/test/system
PODMAN=podman bats $bats_args 500-networking.bats
EOF
# nsenter, not `ip netns exec`: that one remounts /sys, and runc needs the cgroup mounts.
nsenter --net="/run/netns/$ns" unshare --mount --propagation private bash "$tmp/inner.sh"
