"""Replay every plugin of both chains with the stdin libcni gave it (captured through a shim),
and one ADD under strace -f: where the time goes."""

import json
import os
import re
import shutil
import statistics

from cnibench.common import GNU_TIME, InNs, OUT, PORT_BASE_LAT, REPLAY_RUNS, STRACE_RUNS, log, spawn, summ


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
