#!/usr/bin/env bash
# Builds the Debian package of the suite with dpkg-deb (offline, nothing but dpkg):
#   scripts/build-deb.sh OUT_DIR BIN_DIR BINARY...
# (`make deb` passes the Makefile's PLUGINS and TOOLS, so the list stays complete.)
# Layout: every binary in /opt/cni/bin (Debian's containernetworking-plugins owns /usr/lib/cni:
# no path is shared), the systemd units of contrib/systemd in /lib/systemd/system (none
# enabled), /etc/default/cnirs-agent (a conffile), the README, docs and conf-examples under
# /usr/share/doc/cnirs. Prints the .deb's path.
set -euo pipefail
# shellcheck source=scripts/stage-lib.sh
. "$(dirname "$0")/stage-lib.sh"

stage_usage 3 "OUT_DIR BIN_DIR BINARY..." "$@"
out=$1 bindir=$2
shift 2
stage_init
arch=$(dpkg --print-architecture)
pkg=cnirs
chmod 0755 "$stage"

install -d "$stage/DEBIAN" "$stage/opt/cni/bin" "$stage/lib/systemd/system" \
    "$stage/etc/default" "$stage/usr/share/doc/$pkg"
install_bins build-deb "$bindir" "$stage/opt/cni/bin" "$@"
install -m 0644 "$root"/contrib/systemd/*.service "$root"/contrib/systemd/*.socket \
    "$stage/lib/systemd/system/"
cat > "$stage/etc/default/cnirs-agent" <<'CONF'
# Settings of cnirs-agent.service (the overlay's node agent). Set both, then
# `systemctl enable --now cnirs-agent`.
#CNIRS_ETCD_ENDPOINTS=http://10.240.0.1:2379,http://10.240.0.2:2379,http://10.240.0.3:2379
#CNIRS_UNDERLAY=eth0
#CNIRS_AGENT_ARGS=--node-name node-1
CONF
chmod 0644 "$stage/etc/default/cnirs-agent"
doc="$stage/usr/share/doc/$pkg"
install -m 0644 "$root/README.md" "$doc/README.md"
install -m 0644 "$root/contrib/systemd/README.md" "$doc/README.systemd.md"
cp -r "$root/conf-examples" "$doc/conf-examples"
if [[ -d "$root/docs" ]]; then cp -r "$root/docs" "$doc/docs"; fi
find "$doc" -type d -exec chmod 0755 {} + && find "$doc" -type f -exec chmod 0644 {} +
cat > "$doc/copyright" <<CONF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: cnirs
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
CONF

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: cnirs developers <cnirs@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), nftables
Section: net
Priority: optional
Homepage: file:///usr/share/doc/cnirs/README.md
Description: CNI plugins in Rust, a drop-in for the reference plugins
 bridge, internal-bridge, portmap, isolation, firewall, tuning, dnsname, overlay,
 host-local, etcd-ipam, static and dhcp (with its daemon), and the admin tool cnirs.
 Installed in /opt/cni/bin, beside Debian's containernetworking-plugins (/usr/lib/cni).
CONF
echo /etc/default/cnirs-agent > "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
