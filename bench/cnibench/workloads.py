"""The measured workloads: W workers in parallel, ADD/CHECK/DEL of the Nth pod (latency
stages), and the growth from pod 1 to pod N measured interleaved against a fresh host."""

import json
import os
import subprocess
import threading
import time

from cnibench.common import CNITOOL, K, K_GROWTH, PAR_PODS, PAR_ROUNDS, PORT_BASE_LAT, PORT_BASE_PAR, Run, STAGES, WORKERS, _short, log, setns, spawn, summ


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
