"""The floor under every call: process start (VERSION of every plugin, /bin/true, cnitool),
and the kernel's own waits (veth delete, nfnetlink release) measured in the same run."""

import json
import os
import shutil
import struct
import subprocess
import threading
import time

from cnibench.common import CNITOOL, InNs, PREFIX, QUICK, STARTUP_RUNS, TMP, ip_batch, log, netns_add, pct, spawn, summ
from cnibench.report import fmt


def bench_startup(chains):
    """VERSION cost of every plugin binary next to /bin/true; cnitool's floor."""
    log("startup: VERSION x%d per binary" % STARTUP_RUNS)
    bins = [("/bin/true", "/bin/true")]
    for c in chains:
        for n in c.names:
            bins.append(("%s/%s" % (c.key, n), os.path.join(c.bindir, n)))
    bins.append(("nft (-f /dev/null)", shutil.which("nft") or "/usr/sbin/nft"))
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    stdin = b'{"cniVersion":"1.0.0"}'
    samples = {k: [] for k, _ in bins}
    for _ in range(STARTUP_RUNS):
        for k, path in bins:
            argv = [path, "-f", "/dev/null"] if k.startswith("nft") else [path]
            samples[k].append(spawn(argv, env, stdin))
    res = {k: summ(v) for k, v in samples.items()}
    for k, path in bins:  # peak RSS, under GNU time (see spawn)
        argv = [path, "-f", "/dev/null"] if k.startswith("nft") else [path]
        kib = [spawn(argv, env, stdin, rss=True).maxrss_kib for _ in range(3)]
        res[k]["maxrss_kib"] = max((x for x in kib if x), default=None)
    # cnitool's own floor: DEL through a chain whose only plugin is /bin/true (prints nothing,
    # which libcni accepts for DEL).
    floor_dir = os.path.join(TMP, "floor")
    os.makedirs(os.path.join(floor_dir, "net.d"), exist_ok=True)
    os.makedirs(os.path.join(floor_dir, "bin"), exist_ok=True)
    os.makedirs(os.path.join(floor_dir, "cache"), exist_ok=True)
    os.symlink("/bin/true", os.path.join(floor_dir, "bin", "noop"))
    with open(os.path.join(floor_dir, "net.d", "floor.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "floor", "plugins": [{"type": "noop"}]}, f)
    fenv = {"PATH": "/usr/bin:/bin", "NETCONFPATH": os.path.join(floor_dir, "net.d"),
            "CNI_PATH": os.path.join(floor_dir, "bin"), "CNI_CONTAINERID": "floor",
            "CNI_CACHE_DIR": os.path.join(floor_dir, "cache")}
    fl = [spawn([CNITOOL, "del", "floor", "/proc/self/ns/net"], fenv)
          for _ in range(max(10, STARTUP_RUNS // 3))]
    res["cnitool floor (DEL, /bin/true chain)"] = summ(fl)
    return res


# ----------------------------------------------------------------------------- floor
# What the kernel and exec cost on this machine in this run, with nothing of ours involved:
# the lower bound of any ADD/DEL. Measured in-process over raw netlink in a throw-away netns.

def _nla(ty, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, ty) + payload + b"\0" * ((-n) % 4)


def _nlmsg(ty, flags, seq, body):
    return struct.pack("=IHHII", 16 + len(body), ty, flags, seq, 0) + body


def _nl_ack(sock, seq):
    """Read until the answer to `seq`; raise on a netlink error."""
    while True:
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            ln, ty, _, sq, _ = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                return
            if ty == 2 and sq == seq:
                err = struct.unpack_from("=i", data, off + 16)[0]
                if err:
                    raise OSError(-err, os.strerror(-err))
                return
            off += (ln + 3) & ~3


def floor_samples(ns, n):
    """(veth create, veth delete, nft add-element batch, nft delete-element batch incl. the
    socket close) in ms, n samples each, run in netns `ns`."""
    import socket
    out = {"veth create (1 rtnetlink request)": [], "veth delete (1 rtnetlink request)": [],
           "nft batch: add 1 element (open, send, ack, close)": [],
           "nft batch: delete 1 element (open, send, ack, close)": []}
    subprocess.run(["ip", "netns", "exec", ns, "nft",
                    "add table inet floor; add set inet floor s { type ipv4_addr; }"], check=True)
    NLM_F = 1 | 4  # REQUEST | ACK

    def ifinfo():
        return struct.pack("=BxHiII", 0, 0, 0, 0, 0)

    def batch(op, seq, key):
        el = _nla(1 | 0x8000, _nla(1 | 0x8000, _nla(1, key)))
        attrs = (_nla(1, b"floor\0") + _nla(2, b"s\0") + _nla(3 | 0x8000, el))
        nfgen = lambda fam, res: struct.pack("=BBH", fam, 0, socket.htons(res))
        flags = NLM_F | (0x400 if op == 12 else 0)
        return (_nlmsg(0x10, 1, seq, nfgen(0, 10)) +
                _nlmsg((10 << 8) | op, flags, seq + 1, nfgen(1, 0) + attrs) +
                _nlmsg(0x11, 1, seq + 2, nfgen(0, 10)))

    def work():
        with InNs(ns):
            rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            rt.bind((0, 0))
            seq = 100
            for i in range(n):
                name, peer = ("fl%d" % i).encode(), ("fp%d" % i).encode()
                peer_msg = ifinfo() + _nla(3, peer + b"\0")
                linkinfo = _nla(1, b"veth\0") + _nla(2 | 0x8000, _nla(1 | 0x8000, peer_msg))
                body = ifinfo() + _nla(3, name + b"\0") + _nla(18 | 0x8000, linkinfo)
                seq += 1
                t0 = time.perf_counter()
                rt.send(_nlmsg(16, NLM_F | 0x400 | 0x200, seq, body))
                _nl_ack(rt, seq)
                out["veth create (1 rtnetlink request)"].append(
                    (time.perf_counter() - t0) * 1000)
                seq += 1
                t0 = time.perf_counter()
                rt.send(_nlmsg(17, NLM_F, seq, ifinfo() + _nla(3, name + b"\0")))
                _nl_ack(rt, seq)
                out["veth delete (1 rtnetlink request)"].append(
                    (time.perf_counter() - t0) * 1000)
            rt.close()
            for i in range(n):
                key = bytes([10, 250, i // 256, i % 256])
                for op, label in ((12, "add"), (14, "delete")):
                    t0 = time.perf_counter()
                    nf = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
                    nf.bind((0, 0))
                    nf.send(batch(op, 1000, key))
                    _nl_ack(nf, 1001)
                    nf.close()
                    out["nft batch: %s 1 element (open, send, ack, close)" % label].append(
                        (time.perf_counter() - t0) * 1000)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out


def bench_floor():
    n = 20 if QUICK else 50
    log("floor: veth create/delete and one nft element batch x%d, in-process netlink" % n)
    ns = "%s-floor" % PREFIX
    netns_add([ns])
    try:
        return {k: summ_ms(v) for k, v in floor_samples(ns, n).items()}
    finally:
        ip_batch(["netns del " + ns])


def summ_ms(xs):
    xs = sorted(xs)
    return {"n": len(xs), "p50_ms": pct(xs, 50), "min_ms": xs[0] if xs else None,
            "p99_ms": pct(xs, 99)}


def build_floor(R):
    st = R["startup"]
    rows = ["## The floor (same run)", "",
            "What any plugin pays at least, nothing of ours involved: process start (fork+exec "
            "of `/bin/true`), and single netlink requests timed in-process in a throw-away netns.",
            "", "| step | p50 ms | min ms | p99 ms |", "|---|---:|---:|---:|"]
    t = st["/bin/true"]
    rows.append("| process start (`/bin/true`) | %s | %s | %s |" % (
        fmt(t["p50_ms"], nd=2), fmt(t["min_ms"], nd=2), fmt(t.get("p99_ms"), nd=2)))
    for k, v in R.get("floor", {}).items():
        rows.append("| %s | %s | %s | %s |" % (k, fmt(v["p50_ms"], nd=2), fmt(v["min_ms"], nd=2),
                                              fmt(v["p99_ms"], nd=2)))
    rows.append("")
    return "\n".join(rows)
