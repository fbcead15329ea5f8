#!/usr/bin/env bash
# Installs the Debian packages the suite needs (build, tests, demo, bench). Run as root.
# `--if-missing` skips apt entirely when every tool is already there (make demo on a
# machine that has them).
set -euo pipefail

packages=(
    nftables iproute2 iptables iputils-ping
    golang-go golang-github-appc-cni-dev containernetworking-plugins
    podman containerd runc busybox-static
    jq curl ca-certificates build-essential time strace python3
    protobuf-compiler  # protoc: the k8s-cri crate (CRI client of conformance/tests/cri.rs)
    # etcd-ipam and the overlay tests start their own members (own ports and data dirs); the
    # package's etcd.service, if systemd starts it, is neither used nor disturbed.
    etcd-server etcd-client
    gnuplot-nox  # make bench-scale's plot
    dnsmasq-base  # the DHCP server of the dhcp IPAM tests, dnsname's test upstream (no service)
    python3-yaml  # conf-examples/kubernetes/*.yaml parsed by tests/examples.rs
    openssl  # scripts/make-test-ca.sh: the test CA of the etcd TLS tests and demo
    # dnsname: dig in the kernel tests, dnsperf in the bench.
    bind9-dnsutils dnsperf
    # scripts/podman-bats.sh only (podman's own networking tests; the Go dnsname as yardstick)
    bats ncat golang-github-containernetworking-plugin-dnsname
    iperf3  # bandwidth shaping measured between a pod and its host (conformance/tests/node.rs)
    tcpdump  # the overlay tests' captures on the underlay (what crosses inside VXLAN)
    bc  # bench/netpol.sh's arithmetic (make bench)
    linux-perf  # bench/overlay-stages.sh (where the VXLAN path's CPU goes), bench/netpol.sh PERF=
)
tools=(nft ip go curl jq busybox podman containerd runc strace python3 protoc etcd etcdctl gnuplot dnsmasq dpkg-deb openssl dig dnsperf iperf3 tc tcpdump bc)

if [[ "${1:-}" == "--if-missing" ]]; then
    missing=0
    for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing=1; done
    [[ -d /usr/share/gocode/src/github.com/containernetworking/cni/libcni ]] || missing=1
    [[ -x /usr/lib/cni/bridge ]] || missing=1
    [[ -x /usr/bin/time ]] || missing=1  # the package, not the shell keyword
    python3 -c 'import yaml' 2>/dev/null || missing=1
    [[ $missing -eq 0 ]] && exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-deps.sh: must run as root to install: ${packages[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${packages[@]}"
