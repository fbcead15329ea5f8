"""Shared by every workload: settings from the environment, logging, netns entry (setns on the
spawning thread), the timed spawn (fork..wait4 with CPU time and peak RSS), a chain of plugins
through cnitool, percentiles."""

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time



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
