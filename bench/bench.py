#!/usr/bin/env python3
"""make bench driver: our CNI chain against the reference Go plugins, through cnitool (libcni).

Started by bench/run.sh (which checks the tools and owns the last-resort cleanup). Standard
library only. Each chain lives in its own throw-away "host" netns; the driver itself stays in
the init netns and moves only the thread that spawns a command into the host netns (setns on
the thread; children inherit it), so no `ip netns exec` sits inside the measured time.

Every spawn is timed with a monotonic clock around fork..wait4, and wait4 gives the CPU time
and peak RSS of the process tree. Chains alternate (A B, then B A) at every measured step so
machine noise hits both.

Workloads:
  startup   VERSION of every plugin, /bin/true as the floor, cnitool's own floor
  parallel  W workers ADD P pods, then DEL them (rounds A B A B)
  latency   ADD, CHECK, DEL of the Nth pod while N-1 exist (N in STAGES, K samples each);
            the fill ADDs are kept for the plot
  replay    every plugin of both chains run directly with the stdin libcni gave it (captured
            once through a shim), timed per process
  strace    one ADD of our chain under strace -f: where the time goes
"""

import ctypes
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
STAGES = [1, 20, 50] if QUICK else [1, 100, 500]
K = 10 if QUICK else 20  # samples per stage and verb
# Samples of the interleaved growth comparison: a ratio of two p50s near 1 needs more than a
# stage's K to stand out of this VM's noise (p50s of 20 samples drifted 10-20% run to run).
K_GROWTH = 3 * K
WORKERS, PAR_PODS = (4, 50) if QUICK else (16, 200)
PAR_ROUNDS = 2
STARTUP_RUNS = 30 if QUICK else 100
REPLAY_RUNS = 5 if QUICK else 10
STRACE_RUNS = 3 if QUICK else 5

BIN_OURS = os.environ.get("CNIRS_BIN_DIR", "target/release")
BIN_REF = "/usr/lib/cni"
CNITOOL = os.environ.get("CNITOOL", "conformance/cnitool/bin/cnitool")
OUT = os.environ.get("BENCH_OUT", "target/bench")
PREFIX = os.environ.get("BENCH_PREFIX", "cnirs-bench%d" % os.getpid())
# bench/run.sh (`make bench`) puts it on a tmpfs when there is one (see there).
TMP = os.environ.get("BENCH_TMP", "/tmp")

SUBNET_LAT = ("10.210.0.0/16", "10.210.0.1")
SUBNET_PAR = ("10.211.0.0/16", "10.211.0.1")
PORT_BASE_LAT = 20000
PORT_BASE_PAR = 40000


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- netns


def setns(path):
    """Move the calling thread into the netns at `path` (its children inherit it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns %s: %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


INIT_NS_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class InNs:
    """with InNs(name): the calling thread is in netns `name` (None = init netns)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        if self.name:
            setns("/run/netns/" + self.name)
        return self

    def __exit__(self, *exc):
        if self.name:
            if LIBC.setns(INIT_NS_FD, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the init netns")
        return False


CREATED_NS = []
NS_LOCK = threading.Lock()


def ip_batch(lines):
    if not lines:
        return
    subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                   text=True, check=True, stdout=subprocess.DEVNULL)


def netns_add(names):
    with NS_LOCK:
        CREATED_NS.extend(names)
    for i in range(0, len(names), 200):
        ip_batch(["netns add " + n for n in names[i:i + 200]])


def netns_cleanup():
    with NS_LOCK:
        names = list(CREATED_NS)
        CREATED_NS.clear()
    existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    names = [n for n in names if n in existing]
    for i in range(0, len(names), 200):
        try:
            ip_batch(["netns del " + n for n in names[i:i + 200]])
        except (subprocess.CalledProcessError, OSError) as e:
            log("cleanup: %s" % e)


# ----------------------------------------------------------------------------- spawning


class Run:
    __slots__ = ("code", "out", "err", "ms", "user", "sys", "maxrss_kib")

    def __init__(self, code, out, err, ms, user, sys_, maxrss):
        self.code, self.out, self.err, self.ms = code, out, err, ms
        self.user, self.sys, self.maxrss_kib = user, sys_, maxrss

    @property
    def ok(self):
        return self.code == 0

    @property
    def cpu_ms(self):
        return (self.user + self.sys) * 1000.0

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            return None


def _memfd(data=b""):
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
_RSS_SEQ = [0]
_RSS_LOCK = threading.Lock()


def spawn(argv, env=None, stdin=b"", timeout=120.0, rss=False):
    """Run argv; wall time fork..wait4, and wait4's CPU time (the process and its reaped tree).

    wait4's ru_maxrss is useless from here: exec records the parent's high-water mark, and the
    parent is this Python (about 19 MiB). With rss=True the command runs under GNU time, whose
    %M is the peak RSS of the command's tree as seen from a small parent; the wall time of such
    a run includes time's own fork+exec and is not used."""
    fin, fout, ferr = _memfd(stdin), _memfd(), _memfd()
    rss_path = None
    if rss and GNU_TIME:
        with _RSS_LOCK:
            _RSS_SEQ[0] += 1
            rss_path = os.path.join(TMP, "rss.%d" % _RSS_SEQ[0])
        argv = [GNU_TIME, "-f", "%M", "-o", rss_path] + list(argv)
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdin=fin, stdout=fout, stderr=ferr, close_fds=True)
        timer = threading.Timer(timeout, lambda: _kill(p.pid))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        ms = (time.perf_counter() - t0) * 1000.0
        p.returncode = os.waitstatus_to_exitcode(status)
        out = _read_all(fout)
        err = _read_all(ferr)
        maxrss = None
        if rss_path:
            try:
                with open(rss_path) as f:
                    maxrss = int(f.read().split()[-1])
                os.unlink(rss_path)
            except (OSError, ValueError, IndexError):
                maxrss = None
        return Run(p.returncode, out, err, ms, ru.ru_utime, ru.ru_stime, maxrss)
    finally:
        for fd in (fin, fout, ferr):
            os.close(fd)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks).decode("utf-8", "replace")


# ----------------------------------------------------------------------------- chains


class Chain:
    """One chain in its own host netns, with its own conf dir, cache, run dir and dataDir."""

    def __init__(self, key, label, bindir, last, subnet, phase, extra=()):
        self.key, self.label, self.last, self.phase = key, label, last, phase
        self.ns = "%s-%s%s-host" % (PREFIX, key, phase)
        self.dir = os.path.join(TMP, key + phase)
        self.bindir = os.path.join(self.dir, "bin")
        self.names = ["bridge", "host-local", "portmap", last] + [p["type"] for p in extra]
        for d in ("net.d", "cache", "run", "ipam", "bin"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        for n in self.names:  # a private copy: a concurrent rebuild cannot swap binaries mid-run
            shutil.copy2(os.path.join(bindir, n), os.path.join(self.bindir, n))
        conf = {
            "cniVersion": "1.0.0",
            "name": "bench",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cnibench0",
                    "isGateway": True,
                    "isDefaultGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet[0], "gateway": subnet[1]}]],
                        "dataDir": os.path.join(self.dir, "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": last},
            ] + list(extra),
        }
        self.conf = conf
        with open(os.path.join(self.dir, "net.d", "bench.conflist"), "w") as f:
            json.dump(conf, f, indent=1)
        self.pods = []

    def setup(self, npods):
        self.pods = ["%s-%s%s-p%d" % (PREFIX, self.key, self.phase, i) for i in range(npods)]
        netns_add([self.ns] + self.pods)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)

    def env(self, cid, port, cni_path=None, extra=None):
        e = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "NETCONFPATH": os.path.join(self.dir, "net.d"),
            "CNI_PATH": cni_path or self.bindir,
            "CNI_CONTAINERID": cid,
            "CNI_IFNAME": "eth0",
            "CNI_CACHE_DIR": os.path.join(self.dir, "cache"),
            "CNIRS_RUN_DIR": os.path.join(self.dir, "run"),
            "CAP_ARGS": json.dumps({"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}),
        }
        if extra:
            e.update(extra)
        return e

    def cnitool(self, verb, pod, cid, port, **kw):
        """One cnitool call, spawned from a thread inside this chain's host netns."""
        with InNs(self.ns):
            return spawn([CNITOOL, verb, "bench", "/run/netns/" + pod], self.env(cid, port, **kw))


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summ(runs):
    ms = [r.ms for r in runs]
    ok = [r for r in runs if r.ok]
    return {
        "n": len(runs),
        "ok": len(ok),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "min_ms": min(ms, default=None),
        "cpu_ms_p50": pct([r.cpu_ms for r in runs], 50),
        "user_ms_p50": pct([r.user * 1000 for r in runs], 50),
        "sys_ms_p50": pct([r.sys * 1000 for r in runs], 50),
        "maxrss_kib": max((r.maxrss_kib for r in runs if r.maxrss_kib), default=None),
        "first_error": next((_short(r.err or r.out) for r in runs if not r.ok), None),
    }


def _short(s):
    s = " ".join(s.split())
    return s[:300]


# ----------------------------------------------------------------------------- workloads


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


def bench_parallel(chains):
    """W workers ADD P pods, then W workers DEL them; rounds A B A B (fresh chains)."""
    log("parallel: %d workers x %d pods, %d rounds" % (WORKERS, PAR_PODS, PAR_ROUNDS))
    out = {c.key: [] for c in chains}

    def run_verb(c, verb, rnd):
        idx = iter(range(PAR_PODS))
        lock = threading.Lock()
        runs = [None] * PAR_PODS

        def worker():
            setns("/run/netns/" + c.ns)  # this thread only; it ends with the worker
            while True:
                with lock:
                    i = next(idx, None)
                if i is None:
                    return
                cid = "par%d-%d" % (rnd, i)
                try:
                    runs[i] = spawn([CNITOOL, verb, "bench", "/run/netns/" + c.pods[i]],
                                    c.env(cid, PORT_BASE_PAR + i))
                except OSError as e:
                    runs[i] = Run(-1, "", "spawn: %s" % e, 0.0, 0.0, 0.0, 0)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
        fails = [r for r in runs if not r.ok]
        rec = {"verb": verb, "round": rnd, "wall_s": wall, "per_s": PAR_PODS / wall,
               "failures": len(fails), **{k: v for k, v in summ(runs).items() if k != "ok"}}
        if verb == "add":
            addrs = []
            for r in runs:
                j = r.json() if r.ok else None
                for ipc in (j or {}).get("ips", []):
                    addrs.append(ipc.get("address", "").split("/")[0])
            rec["addresses"] = len(addrs)
            rec["duplicates"] = len(addrs) - len(set(addrs))
        out[c.key].append(rec)
        log("  %s %s round %d: %.1f/s, %d failures%s" % (
            c.key, verb, rnd, rec["per_s"], rec["failures"],
            ", %d duplicate addresses" % rec["duplicates"] if verb == "add" else ""))

    for rnd in range(PAR_ROUNDS):
        order = chains if rnd % 2 == 0 else chains[::-1]
        for verb in ("add", "del"):
            for c in order:
                run_verb(c, verb, rnd)
    out["leaks"] = {c.key: leaks(c) for c in chains}
    for c in chains:
        log("  %s after the last DEL round: %s" % (
            c.key, ", ".join("%s %d" % kv for kv in out["leaks"][c.key].items())))
    return out


def leaks(c, settle_s=5.0):
    """What a chain left behind once every pod was deleted: veths in its host netns (retired
    ones included; a detached delete gets `settle_s` to finish), lease files, and for ours the
    elements in our nft sets and maps and the attachment/port records of the state dir."""
    def veths():
        out = subprocess.run(["ip", "-n", c.ns, "-j", "link", "show", "type", "veth"],
                             capture_output=True, text=True)
        try:
            return len(json.loads(out.stdout or "[]"))
        except ValueError:
            return -1
    deadline = time.time() + settle_s
    n = veths()
    while n and time.time() < deadline:
        time.sleep(0.1)
        n = veths()
    res = {"veths": n}
    ipam = os.path.join(c.dir, "ipam", "bench")
    res["leases"] = len([f for f in (os.listdir(ipam) if os.path.isdir(ipam) else [])
                         if f not in ("lock", ".cnirs-index")
                         and not f.startswith("last_reserved_ip")])
    if c.key == "ours":
        out = subprocess.run(["ip", "netns", "exec", c.ns, "nft", "-j", "list", "table", "inet",
                              "cnirs"], capture_output=True, text=True)
        elems = 0
        try:
            for o in json.loads(out.stdout or "{}").get("nftables", []):
                for k in ("set", "map"):
                    if k in o:
                        elems += len(o[k].get("elem", []))
        except ValueError:
            elems = -1
        res["nft elements"] = elems
        recs = 0
        for root, _dirs, files in os.walk(os.path.join(c.dir, "run")):
            parent = os.path.basename(root)
            recs += len([f for f in files if parent in ("a", "ports")])
        res["state records"] = recs
    return res


def busy(c):
    """Processes still running a binary of chain `c` (ours: the detached kernel cleanup a DEL
    or ADD leaves behind after answering)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/exe" % pid).startswith(c.bindir + "/"):
                n += 1
        except OSError:
            pass
    return n


SETTLE = {"waits": 0, "ms": 0.0}


QUIET_S = 0.05


def settle(c, limit_s=2.0):
    """Wait (untimed) until chain `c`'s background work is done, then QUIET_S more, so the next
    timed call, of either chain, starts on a quiet kernel. Our detached cleanup holds the rtnl
    lock and closes nfnetlink sockets; and any chain's nf_tables commits (the reference's
    iptables-nft too) leave destroy work, freed after an RCU grace period from a list global
    to all netns, that the next nfnetlink socket release of any netns flushes. The pause is
    the same for both chains, so neither is charged for the other's leftovers."""
    t0 = time.perf_counter()
    while busy(c) and time.perf_counter() - t0 < limit_s:
        time.sleep(0.002)
    time.sleep(QUIET_S)
    waited = (time.perf_counter() - t0) * 1e3 - QUIET_S * 1e3
    if waited > 1:
        SETTLE["waits"] += 1
        SETTLE["ms"] += waited


def bench_latency(chains):
    """ADD/CHECK/DEL of the Nth pod while N-1 exist; the fill ADDs feed the plot. Each chain's
    background work settles before the next chain's calls. At the first stage, also ADD right
    after a DEL of the same pod (a pod restart), where that work is still running."""
    log("latency: stages %s, %d samples each" % (STAGES, K))
    fill = {c.key: [] for c in chains}  # (pods existing, ms, ok)
    stages = {c.key: {} for c in chains}
    existing = 0
    for n in STAGES:
        t0 = time.perf_counter()
        for i in range(existing, n - 1):
            order = chains if i % 2 == 0 else chains[::-1]
            for c in order:
                r = c.cnitool("add", c.pods[i], "fill%d" % i, PORT_BASE_LAT + i)
                fill[c.key].append((i, r.ms, r.ok))
                if not r.ok:
                    log("  %s fill ADD %d failed: %s" % (c.key, i, _short(r.err or r.out)))
        existing = max(existing, n - 1)
        for c in chains:  # the fill's own background work, before the first timed call
            settle(c)
        if existing:
            log("  filled to %d pods in %.1f s" % (existing, time.perf_counter() - t0))
        runs = {c.key: {"add": [], "check": [], "del": []} for c in chains}
        probe = len(chains[0].pods) - 1  # the probe pod's netns, reused
        for k in range(K):
            order = chains if k % 2 == 0 else chains[::-1]
            for c in order:
                cid = "probe%d-%d" % (n, k)
                port = PORT_BASE_LAT + n - 1
                for verb in ("add", "check", "del"):
                    runs[c.key][verb].append(c.cnitool(verb, c.pods[probe], cid, port))
                settle(c)
        if n == STAGES[0]:
            for c in chains:
                runs[c.key]["restart"] = []
            for k in range(K):
                order = chains if k % 2 == 0 else chains[::-1]
                for c in order:
                    port = PORT_BASE_LAT + n - 1
                    pod = c.pods[probe]
                    c.cnitool("add", pod, "old%d" % k, port)
                    c.cnitool("del", pod, "old%d" % k, port)
                    runs[c.key]["restart"].append(c.cnitool("add", pod, "new%d" % k, port))
                    c.cnitool("del", pod, "new%d" % k, port)
                    settle(c)
        for c in chains:
            stages[c.key][n] = {v: summ(rs) for v, rs in runs[c.key].items()}
            s = stages[c.key][n]
            log("  N=%d %s: ADD p50 %.1f ms, CHECK p50 %.1f ms (%d/%d ok), DEL p50 %.1f ms%s" % (
                n, c.key, s["add"]["p50_ms"], s["check"]["p50_ms"], s["check"]["ok"],
                s["check"]["n"], s["del"]["p50_ms"],
                ", ADD after DEL p50 %.1f ms" % s["restart"]["p50_ms"] if "restart" in s else ""))
    log("  settling: %d waits, %.0f ms in all (untimed)" % (SETTLE["waits"], SETTLE["ms"]))
    return stages, fill


def bench_growth(full, fresh):
    """ADD/CHECK/DEL of pod N on `full` (N-1 pods) against pod 1 on `fresh` (a host netns of
    its own, no pods), interleaved call by call, each chain settled after its calls: the
    machine's drift over the minutes between stages cancels out, which a ratio of two stages'
    p50s does not."""
    n = STAGES[-1]
    log("growth: pod %d vs pod 1 on a fresh host, interleaved, %d samples" % (n, K_GROWTH))
    runs = {c.key: {"full": [], "fresh": []} for c in full}
    pairs = list(zip(full, fresh))
    for k in range(K_GROWTH):
        order = pairs if k % 2 == 0 else pairs[::-1]
        for big, small in order:
            sides = [("full", big, big.pods[-1], PORT_BASE_LAT + n - 1),
                     ("fresh", small, small.pods[0], PORT_BASE_LAT)]
            if k % 4 >= 2:
                sides.reverse()
            for side, c, pod, port in sides:
                cid = "grow%d" % k
                runs[big.key][side].append(c.cnitool("add", pod, cid, port))
                c.cnitool("check", pod, cid, port)
                c.cnitool("del", pod, cid, port)
                settle(c)
    out = {}
    for key, r in runs.items():
        out[key] = {side: summ(rs) for side, rs in r.items()}
        log("  %s: ADD p50 pod %d %.1f ms, pod 1 (fresh host) %.1f ms" % (
            key, n, out[key]["full"]["p50_ms"], out[key]["fresh"]["p50_ms"]))
    return out


# ----------------------------------------------------------------------------- dnsname

SUBNET_DNS = ("10.212.0.0/16", "10.212.0.1")
DNS_PODS = 10 if QUICK else 30
DNS_QUERIES = 300 if QUICK else 1000


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
    forwarded = query_latency(with_dns.pods[0], gw, 53, "p1", 50)
    R = {"pods": DNS_PODS}
    # dnsmasq as containers/dnsname drives it, on the same bridge (port 5353: ours has 53).
    dnsmasq = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
    if dnsmasq:
        d = os.path.join(TMP, "dnsmasq")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
            for i in range(DNS_PODS):
                f.write("10.212.0.%d\tp%d\n" % (i + 2, i))
        with open(os.path.join(d, "dnsmasq.conf"), "w") as f:
            f.write("strict-order\nlocal=/dns.bench/\ndomain=dns.bench\nexpand-hosts\n"
                    "pid-file=%s/pid\nexcept-interface=lo\nbind-dynamic\nno-hosts\n"
                    "interface=cnibench0\naddn-hosts=%s/hosts\nport=5353\nno-resolv\n" % (d, d))
        with InNs(with_dns.ns):
            t0 = time.perf_counter()
            p = subprocess.run([dnsmasq, "-u", "root", "--conf-file=%s/dnsmasq.conf" % d],
                               capture_output=True, text=True)
            spawn_ms = (time.perf_counter() - t0) * 1000.0
        if p.returncode == 0:
            first = wait_answer(with_dns.pods[0], gw, 5353, "p1.dns.bench")
            R["dnsmasq"] = {
                "version": subprocess.run([dnsmasq, "--version"], capture_output=True,
                                          text=True).stdout.split("\n")[0],
                "start_ms": spawn_ms, "first_answer_ms": first,
                "query": query_latency(with_dns.pods[0], gw, 5353, "p1.dns.bench",
                                       DNS_QUERIES)}
            try:
                with open(os.path.join(d, "pid")) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError) as e:
                log("  stopping dnsmasq: %s" % e)
        else:
            log("  dnsmasq did not start: %s" % _short(p.stderr))
    for i in range(DNS_PODS):
        for c in (chains if i % 2 == 0 else chains[::-1]):
            dels[c.key].append(c.cnitool("del", c.pods[i], "dns%d" % i, 30000 + i))
    for c in chains:
        a, dl = adds[c.key], dels[c.key]
        R[c.key] = {"add_first": summ(a[:1]), "add_rest": summ(a[1:]),
                    "del_rest": summ(dl[:-1]), "del_last": summ(dl[-1:])}
    R["ours_query"] = ours_q
    R["forward_refused_p50_ms"] = forwarded["p50_ms"]
    log("  ADD pod 1: %.1f ms with dnsname, %.1f without; ADD p50 pods 2..%d: %.1f / %.1f ms" % (
        R["dns"]["add_first"]["p50_ms"], R["nodns"]["add_first"]["p50_ms"], DNS_PODS,
        R["dns"]["add_rest"]["p50_ms"], R["nodns"]["add_rest"]["p50_ms"]))
    log("  query p50 %.3f ms p99 %.3f ms (%d/%d answered)" % (
        ours_q["p50_ms"] or -1, ours_q["p99_ms"] or -1, ours_q["ok"], ours_q["n"]))
    return R


def build_dns_summary(D):
    f = lambda x: fmt(x, "", 2)
    rows = ["## dnsname", "",
            "Our chain with and without `dnsname` (%d pods each, alternated; pod 1 starts the "
            "network's resolver, the last DEL stops it). Queries: one at a time over UDP from a "
            "pod to the gateway, an A record of a pod of the network." % D["pods"], "",
            "| | with dnsname | without |", "|---|---|---|"]
    for label, k in (("ADD, pod 1 (ms)", "add_first"), ("ADD p50, pods 2.. (ms)", "add_rest"),
                     ("DEL p50, all but the last (ms)", "del_rest"),
                     ("DEL, last pod (ms)", "del_last")):
        rows.append("| %s | %s | %s |" % (label, f(D["dns"][k]["p50_ms"]),
                                          f(D["nodns"][k]["p50_ms"])))
    q = D["ours_query"]
    rows += ["", "| resolver | start (ms) | query p50 (ms) | query p99 (ms) | answered |",
             "|---|---|---|---|---|",
             "| ours (hickory-dns), `dnsname --serve` | in ADD pod 1 | %s | %s | %d/%d |" % (
                 f(q["p50_ms"]), f(q["p99_ms"]), q["ok"], q["n"])]
    m = D.get("dnsmasq")
    if m:
        mq = m["query"]
        rows.append("| %s, as containers/dnsname runs it | %s (+ %s to first answer) | %s | %s "
                    "| %d/%d |" % (m["version"], f(m["start_ms"]), f(m["first_answer_ms"]),
                                   f(mq["p50_ms"]), f(mq["p99_ms"]), mq["ok"], mq["n"]))
    rows.append("")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- replay


SHIM = """#!/bin/sh
# capture shim: records what libcni hands the plugin, then runs the real one
n=${0##*/}
d=%(cap)s/$CNI_COMMAND.$n
cat > "$d.stdin"
env | grep '^CNI_' > "$d.env"
exec %(real)s/$n < "$d.stdin"
"""


def capture(c, pod):
    """One ADD, CHECK, DEL through cnitool with every plugin behind a shim that records its
    stdin and CNI_* environment (host-local too: bridge finds it through CNI_PATH)."""
    cap = os.path.join(c.dir, "capture")
    shim = os.path.join(c.dir, "shim")
    os.makedirs(cap, exist_ok=True)
    os.makedirs(shim, exist_ok=True)
    for n in c.names:
        p = os.path.join(shim, n)
        with open(p, "w") as f:
            f.write(SHIM % {"cap": cap, "real": c.bindir})
        os.chmod(p, 0o755)
    port = PORT_BASE_LAT + len(c.pods)
    got = {}
    for verb in ("add", "check", "del"):
        r = c.cnitool(verb, pod, "capture", port, cni_path=shim)
        got[verb] = r.ok
    inputs = {}
    for fn in os.listdir(cap):
        if fn.endswith(".stdin"):
            cmd, name = fn[:-6].split(".", 1)
            with open(os.path.join(cap, fn), "rb") as f:
                stdin = f.read()
            env = {}
            with open(os.path.join(cap, fn[:-6] + ".env")) as f:
                for line in f:
                    k, _, v = line.rstrip("\n").partition("=")
                    env[k] = v
            env["CNI_PATH"] = c.bindir
            env["CNIRS_RUN_DIR"] = os.path.join(c.dir, "run")
            env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
            inputs[(cmd, name)] = (stdin, env)
    return inputs, got


def with_prev(stdin, prev):
    conf = json.loads(stdin)
    if prev is None:
        conf.pop("prevResult", None)
    else:
        conf["prevResult"] = prev
    return json.dumps(conf).encode()


def replay_once(c, inputs, cid, rss=False, extra_env=None):
    """ADD each plugin in order (prevResult chained as libcni does), CHECK, DEL in reverse;
    host-local alone (ADD, DEL) with the input bridge gave it. Returns {(verb, plugin): Run}."""
    chain = ["bridge", "portmap", c.last]
    runs = {}
    prev = None
    inputs = {k: (stdin, dict(env, **(extra_env or {}))) for k, (stdin, env) in inputs.items()}
    with InNs(c.ns):
        for n in chain:
            stdin, env = inputs[("ADD", n)]
            e = dict(env, CNI_CONTAINERID=cid)
            r = spawn([os.path.join(c.bindir, n)], e, with_prev(stdin, prev), rss=rss)
            runs[("ADD", n)] = r
            if r.ok:
                prev = r.json()
        for n in chain:  # libcni stops CHECK at the first failure: later plugins got none
            if ("CHECK", n) in inputs:
                stdin, env = inputs[("CHECK", n)]
                runs[("CHECK", n)] = spawn([os.path.join(c.bindir, n)],
                                           dict(env, CNI_CONTAINERID=cid), with_prev(stdin, prev),
                                           rss=rss)
        for n in reversed(chain):
            if ("DEL", n) not in inputs:
                continue
            stdin, env = inputs[("DEL", n)]
            runs[("DEL", n)] = spawn([os.path.join(c.bindir, n)],
                                     dict(env, CNI_CONTAINERID=cid), with_prev(stdin, prev),
                                     rss=rss)
        if ("ADD", "host-local") in inputs:
            for verb in ("ADD", "DEL"):
                stdin, env = inputs[(verb, "host-local")]
                runs[(verb, "host-local")] = spawn(
                    [os.path.join(c.bindir, "host-local")],
                    dict(env, CNI_CONTAINERID=cid + "-ipam"), stdin, rss=rss)
    return runs


def bench_replay(chains):
    log("replay: every plugin directly with libcni's input, x%d" % REPLAY_RUNS)
    res = {}
    inputs = {}
    for c in chains:
        inputs[c.key], got = capture(c, c.pods[-1])
        res[c.key] = {"capture_ok": got}
    samples = {c.key: {} for c in chains}
    for k in range(REPLAY_RUNS):
        order = chains if k % 2 == 0 else chains[::-1]
        for c in order:
            for key, r in replay_once(c, inputs[c.key], "replay%d" % k).items():
                samples[c.key].setdefault("%s %s" % key, []).append(r)
    # Peak RSS under GNU time: of the process tree (nft, iptables children included), and for
    # ours also of the plugin process alone, with nft replaced by /bin/true (CNIRS_NFT).
    rss = {c.key: {} for c in chains}
    own = {}
    if GNU_TIME:
        for k in range(2):
            for c in (chains if k % 2 == 0 else chains[::-1]):
                for key, r in replay_once(c, inputs[c.key], "rss%d" % k, rss=True).items():
                    d = rss[c.key]
                    d["%s %s" % key] = max(d.get("%s %s" % key) or 0, r.maxrss_kib or 0) or None
                if c.key == "ours":
                    for key, r in replay_once(c, inputs[c.key], "own%d" % k, rss=True,
                                              extra_env={"CNIRS_NFT": "/bin/true"}).items():
                        if r.ok:
                            own["%s %s" % key] = max(own.get("%s %s" % key) or 0,
                                                     r.maxrss_kib or 0) or None
    for c in chains:
        res[c.key]["plugins"] = {k: summ(v) for k, v in samples[c.key].items()}
        for k, v in res[c.key]["plugins"].items():
            v["maxrss_kib"] = rss[c.key].get(k)
            if c.key == "ours":
                v["maxrss_own_kib"] = own.get(k)
    return res, inputs


# ----------------------------------------------------------------------------- strace


def strace_overhead(strace):
    """Seconds strace adds per traced syscall: dd doing 4000 one-byte syscalls, with and
    without strace -f -T -yy (median of 5)."""
    argv = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=2000", "status=none"]
    plain = statistics.median(spawn(argv).ms for _ in range(5))
    traced = statistics.median(spawn([strace, "-f", "-ttt", "-T", "-yy", "-o", "/dev/null"]
                                     + argv).ms for _ in range(5))
    return max(0.0, (traced - plain) / 1000.0 / 4000)


def bench_strace(c, inputs):
    """Our ADD (bridge, portmap, isolation, in order) and DEL (reverse) under strace -f,
    STRACE_RUNS times; the traces of the last run are copied next to the summary."""
    strace = shutil.which("strace")
    if not strace:
        return None
    log("strace: %d ADD and DEL of our chain" % STRACE_RUNS)
    chain = ["bridge", "portmap", c.last]
    ov = strace_overhead(strace)
    out = {"ADD": [], "DEL": [], "overhead_us_per_syscall": ov * 1e6}
    with InNs(c.ns):
        for k in range(STRACE_RUNS):
            prev = None
            for verb, order in (("ADD", chain), ("DEL", chain[::-1])):
                one = {}
                for n in order:
                    stdin, env = inputs[(verb, n)]
                    trace = os.path.join(c.dir, "strace-%s-%s.txt" % (verb, n))
                    e = dict(env, CNI_CONTAINERID="strace%d" % k)
                    r = spawn([strace, "-f", "-ttt", "-T", "-yy", "-s", "4096", "-o", trace,
                               os.path.join(c.bindir, n)], e, with_prev(stdin, prev))
                    if verb == "ADD" and r.ok:
                        prev = r.json()
                    with open(trace, errors="replace") as f:
                        a = analyse_strace(f.read(), c, ov)
                    if k == STRACE_RUNS - 1:
                        shutil.copy(trace, os.path.join(OUT, os.path.basename(trace)))
                    a["ok"] = r.ok
                    one[n] = a
                out[verb].append(one)
    return out


LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
CALL = re.compile(r"^([a-z0-9_]+)\((.*)$")
DUR = re.compile(r"<(\d+\.\d+)>\s*$")
NLSOCK = re.compile(r"socket\(AF_NETLINK, [^,]*, (NETLINK_[A-Z_]+)\) = \d+<NETLINK:\[(\d+)\]>")
FDNL = re.compile(r"^\d+<NETLINK:\[(?:([A-Z_]+):)?(\d+)\]>")
LOADER = ("execve", "arch_prctl", "set_tid_address", "set_robust_list", "rseq", "prlimit64",
          "mprotect", "mmap", "munmap", "brk", "access", "newfstatat", "fstat", "pread64",
          "getrandom", "sigaltstack", "rt_sigaction", "rt_sigprocmask", "poll", "statx",
          "sched_getaffinity", "readlink", "madvise", "prctl", "uname", "getpid", "gettid")
WAITS = ("wait4", "waitid", "poll", "ppoll", "futex", "select", "pselect6")
SPAWN = ("clone", "clone3", "vfork", "fork", "pipe2", "pidfd_open", "dup2", "dup3")


def _merge(iv):
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _overlap(a, b, iv):
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in iv)


def analyse_strace(text, c, ov=0.0):
    """Exclusive wall time per process (its lifetime minus the time a child process of the
    trace was alive), split by what its syscalls touched; the rest is user space. An nft child
    counts whole as "nft process". Categories: exec + loader (execve, until the first syscall
    that is not start-up work), rtnetlink (syscalls on NETLINK_ROUTE sockets), IPAM files
    (the dataDir), state files (CNIRS_RUN_DIR, flock included), /proc/sys, setns, spawning
    children, blocked (waits not covered by a child's life), other syscalls."""
    ipam = os.path.join(c.dir, "ipam")
    run = os.path.join(c.dir, "run")
    procs = {}
    nl_proto = {}
    pending = {}
    for raw in text.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        p = procs.setdefault(pid, {"start": ts, "end": ts, "name": None, "calls": [],
                                   "loading": True})
        p["end"] = max(p["end"], ts)
        if rest.startswith("+++") or rest.startswith("---"):
            continue
        if "<unfinished ...>" in rest:
            pending[pid] = (ts, rest.split("<unfinished", 1)[0])
            continue
        if rest.startswith("<..."):
            ts0, head = pending.pop(pid, (ts, ""))
            rest = head + rest.split("resumed>", 1)[-1]
            ts = ts0
        cm = CALL.match(rest)
        dm = DUR.search(rest)
        if not cm or not dm:
            continue
        name, args, d = cm.group(1), cm.group(2), float(dm.group(1))
        p["end"] = max(p["end"], ts + d)
        if name == "execve" and " = 0" in rest and '"' in args:
            p["name"] = os.path.basename(args.split('"')[1])
        nm = NLSOCK.search(rest)
        if nm:
            nl_proto[nm.group(2)] = nm.group(1)
        fm = FDNL.match(args)
        if p["loading"] and (name in LOADER or ".so" in args or "ld.so" in args):
            cat = "exec + loader"
        else:
            if name not in ("execve",):
                p["loading"] = False
            if fm or (name == "socket" and "AF_NETLINK" in args):
                if fm and fm.group(1):
                    proto = "NETLINK_" + fm.group(1)
                else:
                    proto = nl_proto.get(fm.group(2), "") if fm else args
                cat = "rtnetlink" if "NETLINK_ROUTE" in proto else "netlink (other)"
            elif ipam in args:
                cat = "IPAM files (dataDir)"
            elif run in args:
                cat = "state files (run dir, flock)"
            elif "/proc/sys" in args:
                cat = "/proc/sys"
            elif name in ("setns", "unshare") or "ns/net" in args or "/run/netns" in args:
                cat = "setns"
            elif name in SPAWN or name == "execve":
                cat = "spawn children"
            elif name in ("epoll_wait", "epoll_pwait", "epoll_pwait2"):
                cat = "epoll_wait (async runtime)"
            elif name in WAITS or "<pipe:" in args.split(",", 1)[0]:
                cat = "blocked (wait, pipes)"
            else:
                cat = "other syscalls"
        p["calls"].append((ts, d, cat))
    if not procs:
        return {"error": "empty trace"}
    cats = {}
    plist = []
    for pid, p in procs.items():
        kids = _merge([(q["start"], q["end"]) for qp, q in procs.items()
                       if qp != pid and p["start"] < q["start"] < p["end"]])
        life = p["end"] - p["start"]
        excl = life - _overlap(p["start"], p["end"], kids)
        pc = {}
        if p["name"] == "nft":
            pc["nft process"] = excl
        else:
            for ts, d, cat in p["calls"]:
                x = d - _overlap(ts, ts + d, kids)
                if x > 0:
                    pc[cat] = pc.get(cat, 0.0) + x
            rest = max(0.0, excl - sum(pc.values()))
            pc["strace overhead (est.)"] = min(rest, len(p["calls"]) * ov)
            pc["user space (rest)"] = rest - pc["strace overhead (est.)"]
        for k, v in pc.items():
            cats[k] = cats.get(k, 0.0) + v
        counts = {}
        for _, _, cat in p["calls"]:
            counts[cat] = counts.get(cat, 0) + 1
        plist.append({"name": p["name"] or "?", "ms": life * 1000, "exclusive_ms": excl * 1000,
                      "syscalls": len(p["calls"]), "syscall_counts": counts,
                      "categories_ms": {k: v * 1000 for k, v in pc.items()}})
    t0 = min(p["start"] for p in procs.values())
    t1 = max(p["end"] for p in procs.values())
    scripts = re.findall(r'write\(\d+<pipe:\[\d+\]>, "((?:[^"\\]|\\.)*)"', text)
    scripts = [sc.encode().decode("unicode_escape", "replace") for sc in scripts]
    return {
        "wall_ms": (t1 - t0) * 1000,
        "processes": plist,
        "categories_ms": {k: v * 1000 for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "nft_scripts": [sc for sc in scripts if "table" in sc or "element" in sc][:8],
    }


# ----------------------------------------------------------------------------- report


def fmt(x, unit="", nd=1):
    if x is None:
        return "n/a"
    return ("%." + str(nd) + "f%s") % (x, unit)


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def build_summary(R):
    o, r = "ours", "ref"
    rows = []

    def row(metric, vo, vr, unit="", nd=1, target=None, met=None, rt=True):
        rr = ratio(vo, vr) if rt else None
        rows.append((metric, fmt(vo, unit, nd), fmt(vr, unit, nd),
                     fmt(rr, "x", 2) if rr is not None else "", target or "",
                     "" if met is None else ("yes" if met else "NO")))

    lat = R["latency"]
    nmin, nmax = STAGES[0], STAGES[-1]
    for n in STAGES:
        a, b = lat[o][n], lat[r][n]
        for verb in ("add", "check", "del"):
            so, sr = a[verb], b[verb]
            target, met = None, None
            q = ratio(so["p50_ms"], sr["p50_ms"])
            if verb == "add" and n == nmin:
                target, met = "<= 0.2x", q is not None and q <= 0.2
            elif verb == "add" and n == nmax:
                target, met = "<= 0.1x", q is not None and q <= 0.1
            elif verb == "add":
                target, met = "<= 0.15x", q is not None and q <= 0.15
            elif verb == "del":
                target, met = "<= 0.12x", q is not None and q <= 0.12
            elif verb == "check":
                target = "all pass, <= 0.3x"
                met = so["ok"] == so["n"] and q is not None and q <= 0.3
            row("%s p50, pod %d (ms)" % (verb.upper(), n), so["p50_ms"], sr["p50_ms"],
                target=target, met=met)
            row("%s p99, pod %d (ms)" % (verb.upper(), n), so["p99_ms"], sr["p99_ms"])
            if verb == "check":
                rows.append(("CHECK passing, pod %d" % n, "%d/%d" % (so["ok"], so["n"]),
                             "%d/%d" % (sr["ok"], sr["n"]), "", "", ""))
            if verb == "add":
                row("CPU user+sys per ADD, pod %d (ms, cnitool tree)" % n,
                    so["cpu_ms_p50"], sr["cpu_ms_p50"])
    so, sr = lat[o][nmin].get("restart"), lat[r][nmin].get("restart")
    if so and sr:
        row("ADD p50 right after a DEL of the same pod, pod %d (ms)" % nmin, so["p50_ms"],
            sr["p50_ms"])
    a1, an = lat[o][nmin]["add"]["p50_ms"], lat[o][nmax]["add"]["p50_ms"]
    rows.append(("ADD p50 pod %d / pod %d, stages minutes apart" % (nmax, nmin),
                 fmt(ratio(an, a1), "x", 2),
                 fmt(ratio(lat[r][nmax]["add"]["p50_ms"], lat[r][nmin]["add"]["p50_ms"]), "x", 2),
                 "", "", ""))
    gr = R.get("growth")
    if gr:
        g = {k: ratio(v["full"]["p50_ms"], v["fresh"]["p50_ms"]) for k, v in gr.items()}
        row("ADD p50 pod %d, interleaved with pod 1 of a fresh host (ms)" % nmax,
            gr[o]["full"]["p50_ms"], gr[r]["full"]["p50_ms"])
        row("ADD p50 pod 1 of a fresh host, interleaved (ms)", gr[o]["fresh"]["p50_ms"],
            gr[r]["fresh"]["p50_ms"])
        rows.append(("ADD p50 pod %d / pod 1, interleaved (%d samples each)" % (
                         nmax, gr[o]["full"]["n"]), fmt(g[o], "x", 2),
                     fmt(g[r], "x", 2), "", "<= 1.10x",
                     "yes" if g[o] is not None and g[o] <= 1.10 else "NO"))

    par = R["parallel"]
    for verb in ("add", "del"):
        po = [x for x in par[o] if x["verb"] == verb]
        pr = [x for x in par[r] if x["verb"] == verb]
        tpo = statistics.median([x["per_s"] for x in po])
        tpr = statistics.median([x["per_s"] for x in pr])
        q = ratio(tpo, tpr)
        fo = sum(x["failures"] for x in po)
        fr = sum(x["failures"] for x in pr)
        row("%dx%d parallel %s throughput (/s)" % (WORKERS, PAR_PODS, verb.upper()), tpo, tpr,
            target=">= 5x", met=q is not None and q >= 5)
        rows.append(("%dx%d parallel %s failures (%d rounds)" % (WORKERS, PAR_PODS, verb.upper(),
                                                                 PAR_ROUNDS),
                     str(fo), str(fr), "", "0", "yes" if fo == 0 else "NO"))
        if verb == "add":
            do = sum(x["duplicates"] for x in po)
            dr = sum(x["duplicates"] for x in pr)
            rows.append(("%dx%d parallel duplicate addresses" % (WORKERS, PAR_PODS), str(do),
                         str(dr), "", "0", "yes" if do == 0 else "NO"))
        row("%dx%d parallel %s p99 latency (ms)" % (WORKERS, PAR_PODS, verb.upper()),
            max(x["p99_ms"] for x in po), max(x["p99_ms"] for x in pr))
    lk = par.get("leaks", {})
    for what in ("veths", "leases", "nft elements", "state records"):
        vo, vr = lk.get(o, {}).get(what), lk.get(r, {}).get(what)
        if vo is None:
            continue
        rows.append(("left after the last parallel DEL round: %s" % what, str(vo),
                     "" if vr is None else str(vr), "", "0", "yes" if vo == 0 else "NO"))

    st = R["startup"]
    true50 = st["/bin/true"]["p50_ms"]
    rows.append(("/bin/true spawn p50 (min), the floor", "%.2f (%.2f) ms" % (
        true50, st["/bin/true"]["min_ms"]), "", "", "", ""))
    for n in ("bridge", "host-local", "portmap", "isolation|firewall"):
        no, nr = (n.split("|") + n.split("|"))[:2] if "|" in n else (n, n)
        so, sr = st["ours/" + no], st["ref/" + nr]
        label = n if "|" not in n else "%s / %s" % (no, nr)
        eo, er = so["p50_ms"] - true50, sr["p50_ms"] - true50
        mo = so["min_ms"] - st["/bin/true"]["min_ms"]
        mr = sr["min_ms"] - st["/bin/true"]["min_ms"]
        rows.append(("VERSION %s over /bin/true, p50 (min) (ms)" % label,
                     "%.2f (%.2f)" % (eo, mo), "%.2f (%.2f)" % (er, mr), "", "<= 0.5 ms",
                     "yes" if eo <= 0.5 else "NO"))
    for n in ("bridge", "host-local", "portmap", "isolation|firewall"):
        no, nr = (n.split("|") + n.split("|"))[:2] if "|" in n else (n, n)
        label = n if "|" not in n else "%s / %s" % (no, nr)
        rep_o, rep_r = R["replay"][o]["plugins"], R["replay"][r]["plugins"]
        ko = [k for k in rep_o if k.endswith(" " + no)]
        kr = [k for k in rep_r if k.endswith(" " + nr)]
        vo = max((rep_o[k].get("maxrss_own_kib") or 0 for k in ko), default=0) / 1024 or None
        vt = max((rep_o[k]["maxrss_kib"] or 0 for k in ko), default=0) / 1024 or None
        vr = max((rep_r[k]["maxrss_kib"] or 0 for k in kr), default=0) / 1024 or None
        row("peak RSS %s, own process (MiB; ref: with children)" % label, vo, vr, nd=2,
            target="<= 4 MiB", met=vo is not None and vo <= 4.0)
        row("peak RSS %s, with children (MiB)" % label, vt, vr, nd=2)
    nft = st.get("nft (-f /dev/null)")
    if nft:
        rows.append(("nft -f /dev/null: spawn p50 / peak RSS", fmt(nft["p50_ms"], " ms", 2),
                     fmt(nft["maxrss_kib"] / 1024, " MiB", 2), "", "", ""))
    fl = st["cnitool floor (DEL, /bin/true chain)"]
    rows.append(("cnitool floor: DEL of a /bin/true chain (ms)", fmt(fl["p50_ms"]), "", "",
                 "in every cnitool figure", ""))
    for verb in ("ADD", "DEL"):
        co = sum((v["cpu_ms_p50"] or 0) for k, v in R["replay"][o]["plugins"].items()
                 if k.startswith(verb + " ") and not k.endswith("host-local"))
        cr = sum((v["cpu_ms_p50"] or 0) for k, v in R["replay"][r]["plugins"].items()
                 if k.startswith(verb + " ") and not k.endswith("host-local"))
        row("CPU user+sys per %s, plugins only (ms, pod %d)" % (verb, nmax), co, cr, nd=2)

    head = ("| metric | ours | reference | ours/ref | target | met |\n"
            "|---|---:|---:|---:|---|---|\n")
    return head + "".join("| %s |\n" % " | ".join(x) for x in rows)


def build_breakdown(R):
    lines = []
    rep = R["replay"]
    lines.append("Per plugin, run directly with the stdin libcni gave it (pod %d, %d runs): p50 "
                 "wall ms, CPU ms (user+sys; the kernel's split between the two is tick-sampled, useless "
                 "for processes this short), peak RSS MiB (ours: own process with nft stubbed / with "
                 "children; ref: with children):" % (STAGES[-1], REPLAY_RUNS))
    lines.append("")
    nmax = STAGES[-1]
    fl = R["startup"]["cnitool floor (DEL, /bin/true chain)"]["p50_ms"]
    for key in ("ours", "ref"):
        p = rep[key]["plugins"]
        for verb in ("ADD", "DEL"):
            direct = sum(v["p50_ms"] or 0 for k, v in p.items()
                         if k.startswith(verb + " ") and not k.endswith("host-local"))
            lines.append("- %s %s, pod %d: %s ms through cnitool = %s ms of plugins run directly"
                         " (sum of p50s) + the rest (cnitool's floor is %s ms)." % (
                             key, verb, nmax,
                             fmt(R["latency"][key][nmax][verb.lower()]["p50_ms"]),
                             fmt(direct), fmt(fl)))
    lines.append("")
    lines.append("| step | ours wall | ours CPU | ours RSS own / tree | ref wall | ref CPU "
                 "| ref RSS tree |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    keys = []
    for verb in ("ADD", "CHECK", "DEL"):
        for n in ("bridge", "portmap", "isolation|firewall", "host-local"):
            keys.append((verb, n))
    for verb, n in keys:
        no, nr = (n.split("|")[0], n.split("|")[-1])
        a = rep["ours"]["plugins"].get("%s %s" % (verb, no))
        b = rep["ref"]["plugins"].get("%s %s" % (verb, nr))
        if not a and not b:
            continue

        def cell(s):
            if not s:
                return ["", "", ""]
            okm = "" if s["ok"] == s["n"] else " (%d/%d ok)" % (s["ok"], s["n"])
            tree = fmt((s["maxrss_kib"] or 0) / 1024, "", 2)
            if "maxrss_own_kib" in s:
                tree = fmt((s["maxrss_own_kib"] or 0) / 1024, "", 2) + " / " + tree
            return [fmt(s["p50_ms"], "", 2) + okm, fmt(s["cpu_ms_p50"], "", 2), tree]
        label = "%s %s" % (verb, no if no == nr else "%s / %s" % (no, nr))
        if n == "host-local":
            label += " (alone)"
        lines.append("| %s |" % " | ".join([label] + cell(a) + cell(b)))
    st = R.get("strace")
    if st:
        nft = R["startup"].get("nft (-f /dev/null)", {})
        for verb in ("ADD", "DEL"):
            runs = st[verb]
            per_run = []
            for one in runs:
                t = {}
                for a in one.values():
                    for k, v in a.get("categories_ms", {}).items():
                        t[k] = t.get(k, 0.0) + v
                per_run.append(t)
            walls = [sum(a.get("wall_ms", 0) for a in one.values()) for one in runs]
            mid = sorted(range(len(runs)), key=lambda i: walls[i])[len(runs) // 2]
            lines.append("")
            lines.append("Our %s under strace -f, %d runs: exclusive wall time per process, by "
                         "what its syscalls touched; the gaps between syscalls are user space, "
                         "less strace's own cost (%.0f us per syscall, measured with dd). "
                         "Median run:" % (verb, len(runs), st["overhead_us_per_syscall"]))
            lines.append("")
            nproc = 0
            for n, a in runs[mid].items():
                if "processes" not in a:
                    continue
                procs = "; ".join(
                    "%s %.1f ms (own %.1f; %d syscalls: %s)" % (
                        p["name"], p["ms"], p["exclusive_ms"], p["syscalls"],
                        ", ".join("%d %s" % (v, k) for k, v in sorted(
                            p.get("syscall_counts", {}).items(), key=lambda kv: -kv[1])[:3]))
                    for p in a["processes"])
                lines.append("- %s%s: %.1f ms traced; processes: %s" % (
                    n, "" if a["ok"] else " (FAILED)", a["wall_ms"], procs))
                nproc += sum(1 for p in a["processes"] if p["name"] == "nft")
            keys = sorted({k for t in per_run for k in t},
                          key=lambda k: -statistics.median([t.get(k, 0.0) for t in per_run]))
            med = {k: statistics.median([t.get(k, 0.0) for t in per_run]) for k in keys}
            tot = sum(med.values()) or 1.0
            lines.append("")
            lines.append("| where (whole %s of our chain) | median ms under strace | share |"
                         % verb)
            lines.append("|---|---:|---:|")
            for k in keys:
                lines.append("| %s | %.1f | %.0f%% |" % (k, med[k], 100 * med[k] / tot))
            lines.append("")
            lines.append("nft processes spawned by one %s: %d (one nft -f /dev/null costs %s ms "
                         "and %s MiB unstraced)." % (
                             verb, nproc, fmt(nft.get("p50_ms"), "", 2),
                             fmt((nft.get("maxrss_kib") or 0) / 1024, "", 2)))
        scripts = [x for a in st["ADD"][-1].values() for x in a.get("nft_scripts", [])]
        if scripts:
            lines.append("nft scripts of the ADD:")
            lines.append("")
            lines.append("```")
            for sc in scripts:
                lines.append(sc.strip()[:800])
            lines.append("```")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot


def plot(R, path):
    series = {}
    for key in ("ours", "ref"):
        pts = [(n, ms) for n, ms, ok in R["fill"][key] if ok]
        stages = [(n - 1, R["latency"][key][n]["add"]["p50_ms"]) for n in STAGES]
        series[key] = (pts, stages)
    try:
        import matplotlib  # noqa: F401
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return png_plot(series, path)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colors = {"ours": "tab:blue", "ref": "tab:red"}
    names = {"ours": "ours (bridge+host-local+portmap+isolation)",
             "ref": "reference (bridge+host-local+portmap+firewall)"}
    for key, (pts, stages) in series.items():
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, alpha=0.35,
                       color=colors[key])
        ax.plot([s[0] for s in stages], [s[1] for s in stages], "o-", color=colors[key],
                label=names[key] + " p50")
    ax.set_yscale("log")
    ax.set_xlabel("pods already attached")
    ax.set_ylabel("ADD latency through cnitool (ms)")
    ax.set_title("CNI ADD latency vs pod count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return "matplotlib"


FONT = {  # 5x7, rows top to bottom
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100", " ": "00000 00000 00000 00000 00000 00000 00000",
    "A": "01110 10001 10001 11111 10001 10001 10001", "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110", "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "R": "11110 10001 10001 11110 10100 10010 10001", "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100", "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100", "Y": "10001 10001 01010 00100 00100 00100 00100",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000", ",": "00000 00000 00000 00000 01100 00100 01000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "I": "01110 00100 00100 00100 00100 00100 01110", "H": "10001 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110", "X": "10001 10001 01010 00100 01010 10001 10001",
}


def png_plot(series, path):
    """A small PNG drawn by hand (no matplotlib): log-scale y, fill ADDs as dots, stage p50s
    as big markers joined by lines."""
    W, H = 800, 500
    L, Rm, T, B = 70, 20, 40, 50
    img = [[(255, 255, 255)] * W for _ in range(H)]
    colors = {"ours": (31, 119, 180), "ref": (214, 39, 40)}
    light = {"ours": (170, 200, 230), "ref": (240, 170, 170)}
    allx = [p[0] for s in series.values() for p in s[0] + s[1]] or [0, 1]
    ally = [p[1] for s in series.values() for p in s[0] + s[1] if p[1] > 0] or [1, 10]
    x0, x1 = 0, max(max(allx), 1)
    y0 = 10 ** math.floor(math.log10(min(ally)))
    y1 = 10 ** math.ceil(math.log10(max(ally)))
    if y1 <= y0:
        y1 = y0 * 10

    def px(x):
        return int(L + (x - x0) / (x1 - x0) * (W - L - Rm))

    def py(y):
        y = max(y, y0)
        return int(H - B - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
                   * (H - T - B))

    def put(x, y, c):
        if 0 <= x < W and 0 <= y < H:
            img[y][x] = c

    def line(xa, ya, xb, yb, c):
        n = max(abs(xb - xa), abs(yb - ya), 1)
        for i in range(n + 1):
            put(round(xa + (xb - xa) * i / n), round(ya + (yb - ya) * i / n), c)

    def dot(x, y, r, c):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    put(x + dx, y + dy, c)

    def text(x, y, s, c=(0, 0, 0)):
        for ch in s.upper():
            g = FONT.get(ch, FONT[" "]).split()
            for ry, bits in enumerate(g):
                for rx, bit in enumerate(bits):
                    if bit == "1":
                        put(x + rx, y + ry, c)
            x += 6

    grey = (220, 220, 220)
    d = y0
    while d <= y1 * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if y0 <= v <= y1:
                line(L, py(v), W - Rm, py(v), grey)
                lab = ("%g" % v)
                text(L - 6 - 6 * len(lab), py(v) - 3, lab)
        d *= 10
    step = 10 ** math.floor(math.log10(x1)) if x1 >= 10 else 1
    if x1 / step < 4:
        step /= 2
    x = 0
    while x <= x1:
        line(px(x), T, px(x), H - B, grey)
        lab = "%g" % x
        text(px(x) - 3 * len(lab), H - B + 8, lab)
        x += step
    line(L, T, L, H - B, (0, 0, 0))
    line(L, H - B, W - Rm, H - B, (0, 0, 0))
    for key, (pts, stages) in series.items():
        for p in pts:
            dot(px(p[0]), py(p[1]), 1, light[key])
    for key, (pts, stages) in series.items():
        for a, b in zip(stages, stages[1:]):
            line(px(a[0]), py(a[1]), px(b[0]), py(b[1]), colors[key])
        for s in stages:
            dot(px(s[0]), py(s[1]), 4, colors[key])
    text(L, 15, "ADD LATENCY (MS, LOG) VS PODS ALREADY ATTACHED")
    dot(W - 230, 19, 4, colors["ours"])
    text(W - 220, 16, "OURS P50", colors["ours"])
    dot(W - 130, 19, 4, colors["ref"])
    text(W - 120, 16, "REFERENCE P50", colors["ref"])
    text(W // 2 - 60, H - 20, "PODS ALREADY ATTACHED")

    raw = b"".join(b"\x00" + bytes(v for px_ in row for v in px_) for row in img)

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return "built-in PNG writer"


# ----------------------------------------------------------------------------- main


LOAD = []


def _sample_load():
    while True:
        LOAD.append(os.getloadavg()[0])
        time.sleep(2)


def main():
    started = time.time()
    threading.Thread(target=_sample_load, daemon=True).start()
    os.makedirs(OUT, exist_ok=True)
    R = {
        "meta": {
            "quick": QUICK, "stages": STAGES, "samples_per_stage": K, "growth_samples": K_GROWTH,
            "workers": WORKERS,
            "parallel_pods": PAR_PODS, "parallel_rounds": PAR_ROUNDS,
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "ours": BIN_OURS, "reference": BIN_REF, "cnitool": CNITOOL,
        }
    }
    log("quick mode" if QUICK else "full mode (BENCH_QUICK=1 for a one-minute run)")
    has_dns = os.path.exists(os.path.join(BIN_OURS, "dnsname"))
    if os.environ.get("BENCH_DNS_ONLY", "") not in ("", "0"):
        if not has_dns:
            log("no dnsname binary in %s" % BIN_OURS)
            return 1
        text = build_dns_summary(bench_dnsname())
        with open(os.path.join(OUT, "dnsname.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    par = [Chain("ours", "ours", BIN_OURS, "isolation", SUBNET_PAR, "p"),
           Chain("ref", "reference", BIN_REF, "firewall", SUBNET_PAR, "p")]
    lat = [Chain("ours", "ours", BIN_OURS, "isolation", SUBNET_LAT, "l"),
           Chain("ref", "reference", BIN_REF, "firewall", SUBNET_LAT, "l")]
    R["meta"]["conflists"] = {c.key: c.conf for c in lat}
    R["startup"] = bench_startup(lat)
    try:
        R["floor"] = bench_floor()
    except Exception as e:  # the floor is context; the comparison must still run
        log("floor failed: %r" % e)
        R["floor"] = {}
    for c in par:
        c.setup(PAR_PODS)
    R["parallel"] = bench_parallel(par)
    # Our parallel DEL rounds answered before their detached kernel cleanup (up to 200 veth
    # deletes, one RCU barrier each, a few seconds in all) was done; the reference did that
    # work inside its calls. It must not land on the first latency stage's timed calls.
    t0 = time.perf_counter()
    for c in par:
        settle(c, limit_s=60.0)
    log("  the parallel phase's background work settled in %.1f s (untimed)" % (
        time.perf_counter() - t0))
    for c in lat:
        c.setup(STAGES[-1])  # pods 0..N-2 fill, the last one is the probe
    stages, fill = bench_latency(lat)
    R["latency"], R["fill"] = stages, fill
    fresh = [Chain("ours", "ours", BIN_OURS, "isolation", SUBNET_LAT, "f"),
             Chain("ref", "reference", BIN_REF, "firewall", SUBNET_LAT, "f")]
    for c in fresh:
        c.setup(1)
    R["growth"] = bench_growth(lat, fresh)
    R["replay"], inputs = bench_replay(lat)
    R["strace"] = bench_strace(lat[0], inputs["ours"])
    if has_dns:
        R["dnsname"] = bench_dnsname()
    R["meta"]["loadavg_end"] = os.getloadavg()
    R["meta"]["load1_samples"] = list(LOAD)
    R["meta"]["seconds"] = time.time() - started

    summary = build_summary(R)
    breakdown = build_breakdown(R)
    png = os.path.join(OUT, "add-latency.png")
    try:
        R["meta"]["plot"] = plot(R, png)
    except Exception as e:  # the table matters more than the picture
        log("plot failed: %r" % e)
        R["meta"]["plot"] = "failed: %r" % e
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    meta = R["meta"]
    md = ["# make bench%s: ours vs reference, through cnitool (libcni 1.1.2)" % (
              " (BENCH_QUICK)" if QUICK else ""),
          "",
          "Kernel %s, %d CPUs, %.0f s. 1-minute load average during the run: median %.1f, "
          "max %.1f (the bench itself adds about 1, and up to %d in the parallel phase). Pods N "
          "= %s (%d samples each, chains alternated), %d workers x %d pods x %d rounds. One port "
          "mapping per pod. p99 of %d samples is close to their max." % (
              meta["kernel"], meta["cpus"], meta["seconds"],
              statistics.median(LOAD or [0.0]), max(LOAD or [0.0]), WORKERS,
              ", ".join(map(str, STAGES)), K, WORKERS, PAR_PODS, PAR_ROUNDS, K),
          "",
          summary,
          build_floor(R),
          "## Where the time goes",
          "",
          breakdown,
          build_dns_summary(R["dnsname"]) if "dnsname" in R else "",
          "Plot: add-latency.png (%s). Raw figures: results.json." % meta.get("plot")]
    text = "\n".join(md)
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    log("wrote %s/{summary.md,results.json,add-latency.png}" % OUT)


def selftest():
    """python3 bench/bench.py --selftest: the pure parts (percentiles, strace analysis, PNG),
    no root needed."""
    import tempfile
    results = []

    def check(name, cond):
        results.append(cond)
        print("%s %s" % ("ok  " if cond else "FAIL", name))

    check("pct p50 of 1..5 is 3", pct([5, 1, 3, 2, 4], 50) == 3)
    check("pct p99 interpolates", abs(pct([0, 100], 99) - 99.0) < 1e-9)

    class C:
        dir = "/x"
    trace = "\n".join([
        '10 1.000000 execve("/b/bridge", ["/b/bridge"], 0x0 /* 1 var */) = 0 <0.001000>',
        '10 1.001000 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3</usr/lib/libc.so.6>, 0) = 0x1 '
        '<0.000100>',
        '10 1.002000 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 3<NETLINK:[77]> '
        '<0.000010>',
        '10 1.003000 sendto(3<NETLINK:[ROUTE:10]>, [...], 40, 0, NULL, 0) = 40 <0.002000>',
        '10 1.006000 clone3({flags=CLONE_VM}, 88) = 11 <0.000100>',
        '11 1.006100 execve("/usr/sbin/nft", ["nft", "-f", "-"], 0x0) = 0 <0.000500>',
        '10 1.006200 wait4(11,  <unfinished ...>',
        '11 1.010000 exit_group(0) = ?',
        '11 1.010100 +++ exited with 0 +++',
        '10 1.010200 <... wait4 resumed>[{WIFEXITED(s)}], 0, NULL) = 11 <0.004000>',
        '10 1.011000 openat(AT_FDCWD, "/x/ipam/bench/10.0.0.2", O_RDWR) = 4 <0.001000>',
        '10 1.013000 exit_group(0) = ?',
        '10 1.013000 +++ exited with 0 +++',
    ])
    a = analyse_strace(trace, C)
    cats = a["categories_ms"]
    check("strace: nft child counted whole (4.0 ms)", abs(cats.get("nft process", 0) - 4.0) < 0.01)
    check("strace: rtnetlink via the ROUTE socket (2.0 ms)",
          abs(cats.get("rtnetlink", 0) - 2.01) < 0.01)
    check("strace: IPAM file (1.0 ms)", abs(cats.get("IPAM files (dataDir)", 0) - 1.0) < 0.01)
    check("strace: the exclusive times add up to the wall (13 ms)",
          abs(sum(cats.values()) - a["wall_ms"]) < 0.05 and abs(a["wall_ms"] - 13.0) < 0.05)
    check("strace: wait4 covered by the child is not counted",
          cats.get("blocked (wait, pipes)", 0) < 0.3)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.png")
        png_plot({"ours": ([(0, 5.0), (10, 6.0)], [(0, 5.0), (49, 7.0)]),
                  "ref": ([(0, 60.0)], [(0, 64.0), (49, 150.0)])}, p)
        with open(p, "rb") as f:
            data = f.read()
        check("png: signature and IHDR 800x500", data[:8] == b"\x89PNG\r\n\x1a\n"
              and struct.unpack(">II", data[16:24]) == (800, 500))
        check("png: IDAT inflates to 500 rows of 1+800*3 bytes",
              len(zlib.decompress(data[data.index(b"IDAT") + 4:-16])) == 500 * 2401)
    print("%d passed, %d failed" % (sum(results), len(results) - sum(results)))
    return all(results)


def _on_term(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        sys.exit(0 if selftest() else 1)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        sys.exit(main() or 0)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        sys.exit(130)
    finally:
        netns_cleanup()
