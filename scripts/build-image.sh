#!/usr/bin/env bash
# Builds the suite's OCI image with podman, offline (`FROM scratch`, nothing pulled):
#   scripts/build-image.sh TAG BIN_DIR BINARY...
# (`make image` passes the Makefile's PLUGINS and TOOLS.)
# The image holds every binary in /opt/cni/bin; its entrypoint, cnirs-install (statically
# linked, so it runs in an empty image), copies them to the host dir mounted at
# /host/opt/cni/bin. The per-pod plugins are static; the few dynamic ones (the etcd and DNS
# clients, the admin tool and its agent: glibc's resolver needs NSS, which a static glibc
# cannot load) get the exact glibc files they were linked against, found with ldd, so
# `cnirs agent` runs in the image too (the DaemonSet's agent container).
# PODMAN overrides the podman command line (e.g. a private --root for tests).
set -euo pipefail
# shellcheck source=scripts/stage-lib.sh
. "$(dirname "$0")/stage-lib.sh"

stage_usage 3 "TAG BIN_DIR BINARY..." "$@"
tag=$1 bindir=$2
shift 2
stage_init
rootfs="$stage/rootfs"
install -d "$rootfs/opt/cni/bin" "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

if ! ldd "$bindir/cnirs-install" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    echo "build-image: $bindir/cnirs-install is not statically linked (use make build)" >&2
    exit 1
fi
install_bins build-image "$bindir" "$rootfs/opt/cni/bin" "$@"
libs=()
for b in "$@"; do
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do libs+=("$lib"); done < <(ldd "$bindir/$b" 2>/dev/null \
        | sed -n -e 's/.*=> \(\/[^ ]*\) .*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) .*/\1/p')
done
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"

cat > "$stage/Containerfile" <<CONF
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="cnirs" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.description="CNI plugins in Rust; the entrypoint installs them into /host/opt/cni/bin"
ENTRYPOINT ["/opt/cni/bin/cnirs-install"]
CONF
read -r -a podman <<< "${PODMAN:-podman}"
"${podman[@]}" build --pull=never --network=none -q -t "$tag" -f "$stage/Containerfile" "$stage" >/dev/null
echo "$tag"
