#!/usr/bin/env bash
# Makes a throwaway CA and the certificates an etcd cluster with client-certificate
# authentication needs, with openssl (ECDSA P-256: the cheapest handshake for a plugin that
# starts a new TLS connection in every CNI call). For tests, demos and trying things out; a
# production cluster's CA belongs in your PKI (see docs/security.md).
#
#   scripts/make-test-ca.sh DIR [--ip IP[,IP...]] [--dns NAME[,NAME...]] [--client NAME]... [--days N]
#
# Writes into DIR (created, mode 0700; keys 0600):
#   ca.pem ca-key.pem            the CA (CN "cnirs test CA <date>")
#   server.pem server-key.pem    the members' certificate: every --ip and --dns as a
#                                subjectAltName (default 127.0.0.1 and localhost), usable for
#                                serverAuth and clientAuth (so members may also use it as peers)
#   client.pem client-key.pem    a client certificate (CN "cnirs"), clientAuth only
#   <NAME>.pem <NAME>-key.pem    one more client certificate per --client NAME (CN NAME)
#
# Then, for example:
#   etcd --cert-file DIR/server.pem --key-file DIR/server-key.pem \
#        --trusted-ca-file DIR/ca.pem --client-cert-auth \
#        --listen-client-urls https://10.0.0.1:2379 --advertise-client-urls https://10.0.0.1:2379
#   cnirs agent --etcd-endpoints https://10.0.0.1:2379 --etcd-cafile DIR/ca.pem \
#        --etcd-certfile DIR/client.pem --etcd-keyfile DIR/client-key.pem --underlay eth0
#   conflist ipam: "etcdCACertFile": "DIR/ca.pem", "etcdCertFile": "DIR/client.pem",
#                  "etcdKeyFile": "DIR/client-key.pem"
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 && "$1" != -* ]] || usage
dir=$1
shift
ips=127.0.0.1
dns=localhost
clients=()
days=365
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ip) ips=$2; shift 2 ;;
        --dns) dns=$2; shift 2 ;;
        --client) clients+=("$2"); shift 2 ;;
        --days) days=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "make-test-ca.sh: unknown argument $1" >&2; usage ;;
    esac
done
command -v openssl >/dev/null || { echo "make-test-ca.sh: openssl not found" >&2; exit 1; }

umask 077
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days "$((days + 1))" \
    -subj "/CN=cnirs test CA $(date -u +%Y%m%dT%H%M%S)-$$" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null

# leaf NAME CN EXTENSIONS
leaf() {
    key "$1-key.pem"
    openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$days" -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

san=""
IFS=, read -ra ip_list <<< "$ips"
for ip in "${ip_list[@]}"; do [[ -n "$ip" ]] && san+="IP:$ip,"; done
IFS=, read -ra dns_list <<< "$dns"
for name in "${dns_list[@]}"; do [[ -n "$name" ]] && san+="DNS:$name,"; done
leaf server etcd "subjectAltName=${san%,}
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth"

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
leaf client cnirs "$client_ext"
for c in "${clients[@]}"; do
    [[ "$c" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "make-test-ca.sh: bad client name $c" >&2; exit 2; }
    leaf "$c" "$c" "$client_ext"
done
rm -f ca.srl
chmod 0600 ./*-key.pem
chmod 0644 ca.pem server.pem client.pem
echo "make-test-ca.sh: CA and certificates in $(pwd) (server SANs: ${san%,})" >&2
