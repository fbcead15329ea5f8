#!/usr/bin/env bash
# Builds conformance/cnitool/bin/cnitool offline, in GOPATH mode, against Debian's
# golang-github-appc-cni-dev (libcni 1.1.2 in /usr/share/gocode). Skips the build when the
# binary is newer than main.go. Pass --force to rebuild anyway.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/main.go"
out="$here/bin/cnitool"
libcni=/usr/share/gocode/src/github.com/containernetworking/cni/libcni

if [[ "${1:-}" != "--force" && -x "$out" && "$out" -nt "$src" ]]; then
    exit 0
fi
command -v go >/dev/null || { echo "build.sh: 'go' not found (apt-get install golang-go)" >&2; exit 1; }
[[ -d "$libcni" ]] || { echo "build.sh: $libcni missing (apt-get install golang-github-appc-cni-dev)" >&2; exit 1; }

gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/cnirs-cnitool" "$here/bin"
cp "$src" "$gopath/src/cnirs-cnitool/main.go"

cd "$gopath/src/cnirs-cnitool"
# go needs a build cache; HOME may be unset under some CI runners.
[[ -n "${GOCACHE:-}" || -n "${HOME:-}" ]] || export GOCACHE=/tmp/cnirs-go-build-cache
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
    go build -trimpath -o "$out.tmp" .
mv -f "$out.tmp" "$out"
echo "build.sh: built $out" >&2
