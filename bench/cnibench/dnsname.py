"""The dnsname section: ADD with and without dnsname, and the query latency of our resolver
against dnsmasq run as containers/dnsname runs it, for a pod's name and for a name forwarded to
the host's resolver (dnsmasq on the chain's host netns' 127.0.0.1, serving FWD_NAME)."""

import os
import shutil
import signal
import struct
import subprocess
import time

from cnibench.common import BIN_OURS, Chain, InNs, QUICK, TMP, _short, log, pct, summ
from cnibench.report import fmt


SUBNET_DNS = ("10.212.0.0/16", "10.212.0.1")
DNS_PODS = 10 if QUICK else 30
DNS_QUERIES = 300 if QUICK else 1000
# The name the bench's upstream serves, with TTL 0 (dnsmasq's default for its own records):
# ours (no cache) and dnsmasq (nothing to cache) forward every query for it.
FWD_NAME, FWD_ADDR = "fwd.bench.test", "198.51.100.7"


def dns_packet(qid, name, qtype=1):
    """A DNS query (RD set) for `name`: the bench's client, not the resolver under test."""
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


def query_latency(ns, server, port, name, n):
    """n UDP queries, one at a time, from a socket made inside netns `ns`: latencies in ms of
    the answers whose rcode is 0 and that carry at least one answer record."""
    import socket
    out, bad = [], 0
    with InNs(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(1.0)
        s.connect((server, port))
        for i in range(n):
            pkt = dns_packet(i & 0xFFFF, name)
            t0 = time.perf_counter()
            try:
                s.send(pkt)
                r = s.recv(1500)
            except OSError:
                bad += 1
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            flags, ancount = struct.unpack(">H", r[2:4])[0], struct.unpack(">H", r[6:8])[0]
            if flags & 0xF == 0 and ancount > 0:
                out.append(ms)
            else:
                bad += 1
    finally:
        s.close()
    return {"n": n, "ok": len(out), "failed": bad, "p50_ms": pct(out, 50),
            "p99_ms": pct(out, 99)}


def wait_answer(ns, server, port, name, deadline_s=5.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if query_latency(ns, server, port, name, 1)["ok"]:
            return (time.perf_counter() - t0) * 1000.0
        time.sleep(0.001)
    return None


def bench_dnsname():
    """ADD/DEL of our chain with and without dnsname (pod 1 starts the resolver, the last DEL
    stops it), query latency of our resolver, and dnsmasq driven the way containers/dnsname
    drives it (config + addn-hosts, started once per network) on the same bridge."""
    log("dnsname: %d pods per chain, %d queries" % (DNS_PODS, DNS_QUERIES))
    dns_conf = {"type": "dnsname", "domainName": "dns.bench", "capabilities": {"aliases": True}}
    with_dns = Chain("dns", "ours + dnsname", BIN_OURS, "isolation", SUBNET_DNS, "d",
                     extra=[dns_conf])
    without = Chain("nodns", "ours", BIN_OURS, "isolation", SUBNET_DNS, "d")
    resolv = os.path.join(TMP, "dns-resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\n")  # the bench host netns' own lo: nothing leaves it
    chains = [with_dns, without]
    for c in chains:
        c.setup(DNS_PODS)
    dnsmasq = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
    upstream = None
    if dnsmasq:  # the host's resolver: FWD_NAME only, on the chain's host netns' lo
        with InNs(with_dns.ns):
            upstream = subprocess.Popen(
                [dnsmasq, "-k", "-u", "root", "--conf-file=/dev/null", "--pid-file=",
                 "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
                 "--host-record=%s,%s" % (FWD_NAME, FWD_ADDR)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_answer(with_dns.ns, "127.0.0.1", 53, FWD_NAME) is None:
            log("  the upstream dnsmasq does not answer: no forwarded rows")
    adds = {c.key: [] for c in chains}
    dels = {c.key: [] for c in chains}
    for i in range(DNS_PODS):
        for c in (chains if i % 2 == 0 else chains[::-1]):
            extra = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p%d" % i,
                     "CNIRS_DNS_RESOLV_CONF": resolv}
            r = c.cnitool("add", c.pods[i], "dns%d" % i, 30000 + i, extra=extra)
            adds[c.key].append(r)
            if not r.ok:
                log("  %s ADD %d failed: %s" % (c.key, i, _short(r.err or r.out)))
    gw = SUBNET_DNS[1]
    ours_q = query_latency(with_dns.pods[0], gw, 53, "p1.dns.bench", DNS_QUERIES)
    forwarded = query_latency(with_dns.pods[0], gw, 53, FWD_NAME, DNS_QUERIES)
    R = {"pods": DNS_PODS}
    # dnsmasq as containers/dnsname drives it, on the same bridge (port 5353: ours has 53),
    # forwarding to the same upstream.
    if dnsmasq:
        d = os.path.join(TMP, "dnsmasq")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
            for i in range(DNS_PODS):
                f.write("10.212.0.%d\tp%d\n" % (i + 2, i))
        with open(os.path.join(d, "dnsmasq.conf"), "w") as f:
            f.write("strict-order\nlocal=/dns.bench/\ndomain=dns.bench\nexpand-hosts\n"
                    "pid-file=%s/pid\nexcept-interface=lo\nbind-dynamic\nno-hosts\n"
                    "interface=cnibench0\naddn-hosts=%s/hosts\nport=5353\nno-resolv\n"
                    "server=127.0.0.1\n" % (d, d))
        with InNs(with_dns.ns):
            t0 = time.perf_counter()
            p = subprocess.run([dnsmasq, "-u", "root", "--conf-file=%s/dnsmasq.conf" % d],
                               capture_output=True, text=True)
            spawn_ms = (time.perf_counter() - t0) * 1000.0
        if p.returncode == 0:
            first = wait_answer(with_dns.pods[0], gw, 5353, "p1.dns.bench")
            R["dnsmasq"] = {
                "version": subprocess.run([dnsmasq, "--version"], capture_output=True,
                                          text=True).stdout.split("  ")[0],
                "start_ms": spawn_ms, "first_answer_ms": first,
                "query": query_latency(with_dns.pods[0], gw, 5353, "p1.dns.bench",
                                       DNS_QUERIES),
                "forwarded": query_latency(with_dns.pods[0], gw, 5353, FWD_NAME, DNS_QUERIES)}
            try:
                with open(os.path.join(d, "pid")) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError) as e:
                log("  stopping dnsmasq: %s" % e)
        else:
            log("  dnsmasq did not start: %s" % _short(p.stderr))
    if upstream:
        upstream.terminate()
        upstream.wait()
    for i in range(DNS_PODS):
        for c in (chains if i % 2 == 0 else chains[::-1]):
            dels[c.key].append(c.cnitool("del", c.pods[i], "dns%d" % i, 30000 + i))
    for c in chains:
        a, dl = adds[c.key], dels[c.key]
        R[c.key] = {"add_first": summ(a[:1]), "add_rest": summ(a[1:]),
                    "del_rest": summ(dl[:-1]), "del_last": summ(dl[-1:])}
    R["ours_query"] = ours_q
    R["ours_forwarded"] = forwarded
    log("  ADD pod 1: %.1f ms with dnsname, %.1f without; ADD p50 pods 2..%d: %.1f / %.1f ms" % (
        R["dns"]["add_first"]["p50_ms"], R["nodns"]["add_first"]["p50_ms"], DNS_PODS,
        R["dns"]["add_rest"]["p50_ms"], R["nodns"]["add_rest"]["p50_ms"]))
    for what, q in (("query", ours_q), ("forwarded", forwarded)):
        log("  %s p50 %.3f ms p99 %.3f ms (%d/%d answered)" % (
            what, q["p50_ms"] or -1, q["p99_ms"] or -1, q["ok"], q["n"]))
    return R


def build_dns_summary(D):
    f = lambda x: fmt(x, "", 2)
    rows = ["## dnsname", "",
            "Our chain with and without `dnsname` (%d pods each, alternated; pod 1 starts the "
            "network's resolver, the last DEL stops it). Queries: one at a time over UDP from a "
            "pod to the gateway: an A record of a pod of the network (local), and %s, which "
            "the resolver forwards to the host's resolver, dnsmasq on 127.0.0.1 (forwarded: TTL "
            "0, so neither caches it)."
            % (D["pods"], FWD_NAME), "",
            "| | with dnsname | without |", "|---|---|---|"]
    for label, k in (("ADD, pod 1 (ms)", "add_first"), ("ADD p50, pods 2.. (ms)", "add_rest"),
                     ("DEL p50, all but the last (ms)", "del_rest"),
                     ("DEL, last pod (ms)", "del_last")):
        rows.append("| %s | %s | %s |" % (label, f(D["dns"][k]["p50_ms"]),
                                          f(D["nodns"][k]["p50_ms"])))
    rows += ["", "| resolver | start (ms) | query | p50 (ms) | p99 (ms) | answered |",
             "|---|---|---|---|---|---|"]
    row = "| %s | %s | %s | %s | %s | %d/%d |"
    for kind, q in (("local", D["ours_query"]), ("forwarded", D["ours_forwarded"])):
        rows.append(row % ("ours, `dnsname --serve`", "in ADD pod 1", kind, f(q["p50_ms"]),
                           f(q["p99_ms"]), q["ok"], q["n"]))
    m = D.get("dnsmasq")
    if m:
        start = "%s (+ %s to first answer)" % (f(m["start_ms"]), f(m["first_answer_ms"]))
        for kind, q in (("local", m["query"]), ("forwarded", m["forwarded"])):
            rows.append(row % ("%s, as containers/dnsname runs it" % m["version"], start, kind,
                               f(q["p50_ms"]), f(q["p99_ms"]), q["ok"], q["n"]))
    rows.append("")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- replay
