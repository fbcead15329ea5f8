# shellcheck shell=bash
# Shared by build-deb.sh and build-image.sh (sourced, not run): the usage check, the
# workspace's root and version, a staging directory removed on exit, and the binaries
# installed from BIN_DIR.

# stage_usage MIN USAGE "$@": the usage line on stderr and exit 2 when there are fewer than
# MIN arguments.
stage_usage() {
    local min=$1 usage=$2
    shift 2
    if [[ $# -lt $min ]]; then
        echo "usage: $0 $usage" >&2
        exit 2
    fi
}

# stage_init: sets root (the workspace), version (its [workspace.package] version) and stage
# (a new directory, removed when the script exits).
stage_init() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
}

# install_bins TOOL BIN_DIR DEST BINARY...: each BINARY from BIN_DIR into DEST, mode 0755; a
# missing one stops the build (TOOL names the script in the message).
install_bins() {
    local tool=$1 bindir=$2 dest=$3 b
    shift 3
    for b in "$@"; do
        if [[ ! -x "$bindir/$b" ]]; then
            echo "$tool: $bindir/$b missing: run make build first" >&2
            exit 1
        fi
        install -m 0755 "$bindir/$b" "$dest/$b"
    done
}
