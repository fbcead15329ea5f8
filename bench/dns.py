#!/usr/bin/env python3
"""make bench, dnsname section: query latency and throughput of our resolver (`dnsname
--serve`, started by the plugin through cnitool) against dnsmasq configured the way the Go
dnsname (containers/dnsname) configures it, on the same bridge, from the same pod, with dnsperf.

Two names: a local one (a pod of the network, answered by the resolver itself) and a
forwarded one (answered by an upstream dnsmasq on 127.0.0.1 of the bench host netns, which
the host's resolv.conf names; TTL 300). Per resolver and name, two dnsperf runs of
BENCH_DNS_SECONDS (10; 3 with BENCH_QUICK=1):
  - throughput: up to 100 queries in flight (dnsperf's default), queries per second;
  - latency: a steady 2000 queries per second, each query's latency (p50, p99 from
    dnsperf -v). Not one query at a time: dnsperf's `-q 1` sends only ~40 queries a second
    here, too few for a p99.

The Go dnsname's dnsmasq caches (its default cache of 150 names): after the first query the
forwarded name comes from that cache. Ours has no cache: every forwarded query goes upstream.

Writes BENCH_OUT/dns.md and dns.json. Standard library only. Needs root, dnsperf, dnsmasq,
cnitool and the release binaries (bridge, host-local, dnsname). Deletes every netns and stops
every process it started, on failure and on SIGTERM/SIGINT too.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CNIRS_BIN_DIR", os.path.join(REPO, "target", "release"))
CNITOOL = os.environ.get("CNITOOL", os.path.join(REPO, "conformance", "cnitool", "bin", "cnitool"))
OUT = os.environ.get("BENCH_OUT", os.path.join(REPO, "target", "bench"))
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SECONDS = int(os.environ.get("BENCH_DNS_SECONDS", "3" if QUICK else "10"))
PREFIX = os.environ.get("BENCH_PREFIX", "cnirs-bench%d" % os.getpid()) + "-dns"

SUBNET, GW, BRIDGE = "10.211.0.0/24", "10.211.0.1", "cnibenchdns0"
DOMAIN = "dns.bench"
LOCAL = "srv.%s" % DOMAIN
FORWARDED = "fwd.bench.test"
GO_PORT = 5353  # dnsmasq beside ours on the same bridge (ours has 53)

HOST, CLIENT, SERVER = PREFIX + "-host", PREFIX + "-client", PREFIX + "-srv"
children = []
tmp = None


def log(msg):
    print("dns bench: " + msg, file=sys.stderr, flush=True)


def run(args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw)


def in_ns(ns, args):
    return ["ip", "netns", "exec", ns] + args


def cnitool(verb, pod, cid, args=""):
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NETCONFPATH": os.path.join(tmp, "net.d"),
        "CNI_PATH": BIN,
        "CNI_CONTAINERID": cid,
        "CNI_IFNAME": "eth0",
        "CNI_CACHE_DIR": os.path.join(tmp, "cache"),
        "CNIRS_RUN_DIR": os.path.join(tmp, "run"),
        "CNIRS_DNS_RESOLV_CONF": os.path.join(tmp, "resolv.conf"),
        "CNI_ARGS": args,
    }
    return subprocess.run(in_ns(HOST, [CNITOOL, verb, "dnsbench", "/run/netns/" + pod]),
                          env=env, text=True, capture_output=True)


def spawn(args):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    children.append(p)
    return p


def answers(server, port, name, ns=CLIENT):
    r = subprocess.run(in_ns(ns, ["dig", "@" + server, "-p", str(port), "+short", "+time=1",
                                  "+tries=1", name, "A"]), text=True, capture_output=True)
    return r.stdout.strip()


def wait_answer(server, port, name, ns=CLIENT):
    deadline = time.time() + 10
    while time.time() < deadline:
        if answers(server, port, name, ns):
            return
        time.sleep(0.05)
    raise RuntimeError("no answer for %s from %s:%d" % (name, server, port))


LATENCY_QPS = 2000


def dnsperf(port, name, in_flight, verbose, qps=None):
    qfile = os.path.join(tmp, "q-%s" % name)
    with open(qfile, "w") as f:
        f.write("%s A\n" % name)
    args = ["dnsperf", "-s", GW, "-p", str(port), "-d", qfile, "-l", str(SECONDS),
            "-q", str(in_flight)]
    if qps:
        args += ["-Q", str(qps)]
    if verbose:
        args.append("-v")
    r = run(in_ns(CLIENT, args))
    out = {"in_flight": in_flight}
    lat = []
    for line in r.stdout.splitlines():
        s = line.strip()
        if s.startswith("Queries per second:"):
            out["qps"] = float(s.split(":")[1])
        elif s.startswith("Queries completed:"):
            out["completed"] = int(s.split(":")[1].split()[0])
        elif s.startswith("Queries lost:"):
            out["lost"] = int(s.split(":")[1].split()[0])
        elif s.startswith("Response codes:"):
            out["rcodes"] = s.split(":", 1)[1].strip()
        elif s.startswith("Average Latency (s):"):
            out["avg_ms"] = float(s.split(":")[1].split()[0]) * 1000.0
        elif verbose and s.startswith(">"):
            # "> NOERROR name A 0.000046"
            try:
                lat.append(float(s.split()[-1]) * 1000.0)
            except ValueError:
                pass
    if lat:
        lat.sort()
        out["p50_ms"] = lat[len(lat) // 2]
        out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return out


def setup():
    global tmp
    tmp = tempfile.mkdtemp(prefix="cnirs-dnsbench.")
    for d in ("net.d", "cache", "run", "ipam", "go"):
        os.makedirs(os.path.join(tmp, d))
    for ns in (HOST, CLIENT, SERVER):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    with open(os.path.join(tmp, "resolv.conf"), "w") as f:
        f.write("nameserver 127.0.0.1\n")
    conf = {"cniVersion": "1.0.0", "name": "dnsbench", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GW}]],
                  "dataDir": os.path.join(tmp, "ipam")}},
        {"type": "dnsname", "domainName": DOMAIN}]}
    with open(os.path.join(tmp, "net.d", "dnsbench.conflist"), "w") as f:
        json.dump(conf, f)
    # The host's upstream: authoritative-style answers for bench.test, TTL 300.
    spawn(in_ns(HOST, ["dnsmasq", "-k", "--conf-file=/dev/null", "--pid-file=", "-u", "root",
                       "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
                       "--bind-interfaces", "--local-ttl=300", "--local=/bench.test/",
                       "--host-record=%s,198.51.100.40" % FORWARDED]))
    wait_answer("127.0.0.1", 53, FORWARDED, ns=HOST)
    srv_ip = None
    for pod, cid, args in ((SERVER, "dnsbench-srv", "IgnoreUnknown=1;K8S_POD_NAME=srv"),
                           (CLIENT, "dnsbench-client", "IgnoreUnknown=1;K8S_POD_NAME=client")):
        r = cnitool("add", pod, cid, args)
        if r.returncode != 0:
            raise RuntimeError("cnitool add %s: %s %s" % (pod, r.stdout, r.stderr))
        if pod == SERVER:
            srv_ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
    # dnsmasq as containers/dnsname writes its config and starts it (`dnsmasq -u root
    # --conf-file=...`), on the same bridge; the host's resolv.conf is ours (resolv-file).
    go = os.path.join(tmp, "go")
    with open(os.path.join(go, "addnhosts"), "w") as f:
        f.write("%s\tsrv\n" % srv_ip)
    with open(os.path.join(go, "dnsmasq.conf"), "w") as f:
        f.write("strict-order\nlocal=/%s/\ndomain=%s\nexpand-hosts\npid-file=%s/pid\n"
                "except-interface=lo\nbind-dynamic\nno-hosts\ninterface=%s\naddn-hosts=%s/addnhosts\n"
                "port=%d\nresolv-file=%s\n" % (DOMAIN, DOMAIN, go, BRIDGE, go, GO_PORT,
                                               os.path.join(tmp, "resolv.conf")))
    spawn(in_ns(HOST, ["dnsmasq", "-k", "-u", "root", "--conf-file=%s/dnsmasq.conf" % go]))
    for port in (53, GO_PORT):
        for name in (LOCAL, FORWARDED):
            wait_answer(GW, port, name)
    return srv_ip


def teardown():
    if tmp:
        for pod, cid in ((CLIENT, "dnsbench-client"), (SERVER, "dnsbench-srv")):
            cnitool("del", pod, cid)  # the last DEL stops our resolver
    for p in children:
        p.kill()
        p.wait()
    for ns in (CLIENT, SERVER, HOST):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def version(cmd):
    r = subprocess.run(cmd, text=True, capture_output=True)
    return (r.stdout or r.stderr).splitlines()[0].strip() if (r.stdout or r.stderr) else "?"


def main():
    stale = os.path.join(OUT, "dns.md")
    if os.path.exists(stale):
        os.remove(stale)
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            log("%s missing (scripts/install-deps.sh): skipped" % tool)
            return 0
    for b in ("bridge", "host-local", "dnsname"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            log("%s/%s missing (make build): skipped" % (BIN, b))
            return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    R = {"seconds": SECONDS, "runs": {}}
    try:
        setup()
        for label, port in (("ours", 53), ("dnsmasq", GO_PORT)):
            for kind, name in (("local", LOCAL), ("forwarded", FORWARDED)):
                tput = dnsperf(port, name, 100, False)
                lat = dnsperf(port, name, 100, True, LATENCY_QPS)
                R["runs"]["%s/%s" % (label, kind)] = {"throughput": tput, "latency": lat}
                log("%-8s %-9s %8.0f q/s (100 in flight), p50 %.3f ms p99 %.3f ms (at %d q/s)"
                    % (label, kind, tput.get("qps", 0), lat.get("p50_ms", -1),
                       lat.get("p99_ms", -1), LATENCY_QPS))
        R["dnsmasq_version"] = version(["dnsmasq", "--version"])
        R["dnsperf_version"] = version(["dnsperf", "-h"])
        R["loadavg"] = open("/proc/loadavg").read().split()[:3]
    finally:
        teardown()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "dns.json"), "w") as f:
        json.dump(R, f, indent=1)
    rows = ["## dnsname resolver: queries (dnsperf)", "",
            "dnsperf %ds per row from a pod to the network's gateway; a local name (a pod of the "
            "network) and a forwarded one (upstream: dnsmasq on the host's 127.0.0.1, TTL 300). "
            "dnsmasq runs as the Go dnsname configures it (%s), on the same bridge; it caches "
            "forwarded answers, ours does not. Load average at the end: %s." % (
                SECONDS, R.get("dnsmasq_version", "?"), " ".join(R.get("loadavg", []))), "",
            "| resolver | name | q/s, 100 in flight | p50 ms at %d q/s | p99 ms | lost |" % LATENCY_QPS,
            "|---|---|---|---|---|---|"]
    for key, r in R["runs"].items():
        label, kind = key.split("/")
        t, l = r["throughput"], r["latency"]
        rows.append("| %s | %s | %.0f | %.3f | %.3f | %d |" % (
            "ours (`dnsname --serve`)" if label == "ours" else "dnsmasq (Go dnsname)", kind,
            t.get("qps", 0), l.get("p50_ms", -1), l.get("p99_ms", -1),
            t.get("lost", 0) + l.get("lost", 0)))
    rows.append("")
    with open(os.path.join(OUT, "dns.md"), "w") as f:
        f.write("\n".join(rows))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        log("must run as root")
        sys.exit(1)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
