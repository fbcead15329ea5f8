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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json
import platform
import signal
import statistics
import struct
import threading
import time
import zlib

from cnibench.common import BIN_OURS, BIN_REF, CNITOOL, Chain, K, K_GROWTH, OUT, PAR_PODS, PAR_ROUNDS, QUICK, STAGES, SUBNET_LAT, SUBNET_PAR, WORKERS, log, netns_cleanup, pct
from cnibench.floor import bench_floor, bench_startup, build_floor
from cnibench.workloads import bench_growth, bench_latency, bench_parallel, settle
from cnibench.dnsname import bench_dnsname, build_dns_summary
from cnibench.replay import analyse_strace, bench_replay, bench_strace
from cnibench.report import build_breakdown, build_summary
from cnibench.plot import plot, png_plot


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
