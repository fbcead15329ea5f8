"""The summary and breakdown tables (markdown) from the results."""

import statistics

from cnibench.common import PAR_PODS, PAR_ROUNDS, REPLAY_RUNS, STAGES, WORKERS


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
