//! The phases of one run (see main.rs) and the report.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent::{dataplane::Observer, FakeKernel, Node};
use serde_json::json;

use crate::{
    metrics::{self, CpuMeter},
    params::Params,
    sim::{Pod, Shared, SimHost},
    track::{quantile, with_zeros, Phase, Tracker},
};

/// Simulated VTEPs: 10.241.0.0/16 and up, addresses that exist nowhere (nothing is sent).
fn sim_vtep(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 241, 0, 0)) + 1 + i as u32)
}

struct World<'p> {
    p: &'p Params,
    conf: Vec<u8>,
    hosts: Vec<Arc<SimHost>>,
    tracker: Arc<Tracker>,
    shared: Arc<Shared>,
    live: Vec<Mutex<VecDeque<Pod>>>,
    ips: Mutex<HashMap<IpAddr, String>>,
    seq: AtomicU64,
    errors: AtomicU64,
    duplicates: AtomicU64,
    /// (seconds since the fill started, ADD ms) of every fill ADD.
    fill_adds: Mutex<Vec<(f64, f64)>>,
    churn_add_ms: Mutex<Vec<f64>>,
    churn_adds: Vec<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World<'_> {
    fn error(&self, what: &str) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            log::warn!("{what}");
        }
    }

    /// One overlay ADD on host `h`; returns its latency.
    fn add_pod(&self, h: usize, phase: Phase) -> Option<f64> {
        let host = &self.hosts[h];
        let id = format!("{}-{}", host.name, self.seq.fetch_add(1, Ordering::Relaxed));
        let t = Instant::now();
        match host.add(&id, &self.conf) {
            Ok(pod) => {
                let done = Instant::now();
                let want = self
                    .shared
                    .with_device
                    .load(Ordering::SeqCst)
                    .saturating_sub(1);
                self.tracker.added(pod.new_block, done, want, phase);
                if let Some(other) = lock(&self.ips).insert(pod.ip, id.clone()) {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    log::warn!("{} given to {id} while {other} holds it", pod.ip);
                }
                lock(&self.live[h]).push_back(pod);
                Some(done.duration_since(t).as_secs_f64() * 1e3)
            }
            Err(e) => {
                self.error(&format!("ADD {id}: {e}"));
                None
            }
        }
    }

    /// DEL of host `h`'s oldest pod.
    fn del_oldest(&self, h: usize) {
        let Some(pod) = lock(&self.live[h]).pop_front() else {
            return;
        };
        // Out of the live set before the address is released, so a concurrent ADD that gets it
        // next is not counted as a duplicate.
        lock(&self.ips).remove(&pod.ip);
        if let Err(e) = self.hosts[h].del(&pod.id, &self.conf) {
            self.error(&format!("DEL {}: {e}", pod.id));
        }
    }

    fn live_pods(&self) -> usize {
        self.live.iter().map(|l| lock(l).len()).sum()
    }

    fn events(&self) -> Vec<u64> {
        self.hosts
            .iter()
            .map(|h| h.stats.events.load(Ordering::Relaxed))
            .collect()
    }
}

/// CPU seconds of this process's threads named `agent` or `watch` (the simulated agents).
fn sim_agents_cpu_s() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for t in dir.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !matches!(comm.trim(), "agent" | "watch") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let u: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        let s: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        total += (u + s) / hz.max(1.0);
    }
    total
}

fn start_agents(w: &World<'_>, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let n = w.p.endpoints.len();
    for (i, h) in w.hosts.iter().enumerate() {
        // Each host lists its members from a different one first, as a real fleet would.
        let mut eps = w.p.endpoints.clone();
        eps.rotate_left(i % n);
        let client = etcd::Client::with_options(
            &eps,
            etcd::Options {
                watch_idle_timeout: Some(Duration::from_secs(10)),
                ..etcd::Options::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let node = Node {
            name: h.name.clone(),
            source: "the scale harness",
            vtep: h.vtep,
            prefix: cluster::DEFAULT_PREFIX.to_string(),
            // The simulated hosts' ADDs read etcd (the harness measures that load).
            state_dir: None,
        };
        let (h, stop) = (Arc::clone(h), Arc::clone(stop));
        std::thread::Builder::new()
            .name("agent".into())
            .stack_size(512 << 10)
            .spawn(move || {
                // A thousand agents share two cores here: none re-checks its fake kernel during
                // a run (nothing but its own agent changes it; every 30 s, 999 compares of 999
                // peers took 79 % of a core with no news at all, every 120 s 39 %, in bursts:
                // the agents start within 20 s of each other), each wakes every 0.5 s and
                // gathers a burst of news for 250 ms instead of 50 ms before programming; news
                // from etcd is applied when it comes either way (what convergence measures).
                // The real host's agent keeps cnirs-agent's 2 s compare (what is reported).
                let timing = agent::Timing {
                    resync: Duration::from_secs(3600),
                    poll: Duration::from_millis(500),
                    coalesce: Duration::from_millis(250),
                };
                if let Err(e) =
                    agent::run_node_with(&client, &node, &h.kernel, &stop, &h.stats, timing)
                {
                    log::warn!("agent {}: {e}", node.name);
                }
            })
            .map_err(|e| format!("spawn agent {i}: {e}"))?;
        // A rolling start, 50 hosts a second, as a fleet coming up (not all at one instant).
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(())
}

/// Waits until every host is registered, at most `limit`; returns (seconds, hosts seen).
fn wait_registered(p: &Params, client: &etcd::Client, limit: Duration) -> (f64, usize) {
    let t = Instant::now();
    let prefix = cluster::schema::hosts_prefix(cluster::DEFAULT_PREFIX);
    let mut have = 0;
    let mut last_print = Instant::now();
    while t.elapsed() < limit {
        if let Ok((k, _)) = client.range_prefix(&prefix) {
            have = k.len();
        }
        if have >= p.hosts {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(15) {
            eprintln!(
                "cnirs-scale: {have}/{} hosts registered at {:.0} s",
                p.hosts,
                t.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (t.elapsed().as_secs_f64(), have)
}

/// Runs `jobs` over `workers` threads; `job(k)` returns false to stop everyone.
fn pool(workers: usize, jobs: usize, job: &(dyn Fn(usize) -> bool + Sync)) {
    let next = AtomicUsize::new(0);
    let halt = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !halt.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= jobs {
                        return;
                    }
                    if !job(k) {
                        halt.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

fn pct_of(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, q)
}

pub fn run(p: &Params) -> Result<(), String> {
    let t_run = Instant::now();
    let sims = p.sims();
    let tracker = Arc::new(Tracker::default());
    let shared = Arc::new(Shared::default());
    let mut hosts = Vec::with_capacity(sims);
    for i in 0..sims {
        let t = Arc::clone(&tracker);
        let obs: Observer = Arc::new(move |_dev, e, c, at| t.applied(i, e, c, at));
        let client = etcd::Client::new(&p.endpoints).map_err(|e| e.to_string())?;
        hosts.push(Arc::new(SimHost {
            name: format!("sim{i}"),
            vtep: sim_vtep(i).into(),
            kernel: FakeKernel::new().with_observer(obs),
            client,
            shared: Arc::clone(&shared),
            stats: agent::Stats::default(),
            pods: Default::default(),
            blocks: std::sync::Mutex::new(BTreeSet::new()),
        }));
    }
    let mut summary: Vec<String> = Vec::new();
    let w = World {
        p,
        conf: p.conf(),
        hosts,
        tracker,
        shared,
        live: (0..sims).map(|_| Mutex::new(VecDeque::new())).collect(),
        ips: Mutex::new(HashMap::new()),
        seq: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        fill_adds: Mutex::new(Vec::new()),
        churn_add_ms: Mutex::new(Vec::new()),
        churn_adds: (0..sims).map(|_| AtomicU64::new(0)).collect(),
    };
    let admin = etcd::Client::new(&p.endpoints).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));

    // 1. Agents.
    start_agents(&w, &stop)?;
    // The whole run fits `SCALE_BUDGET_S`: registration gets at most a third of it, the fill
    // what is left after ~200 s kept for the settle, churn, drain and measures.
    let (reg_s, registered) = wait_registered(p, &admin, p.budget / 3);
    eprintln!(
        "cnirs-scale: {registered}/{} hosts registered in {reg_s:.1} s",
        p.hosts
    );
    if registered < p.hosts {
        w.errors
            .fetch_add((p.hosts - registered) as u64, Ordering::Relaxed);
        summary.push(format!(
            "BROKE at startup: only {registered} of {} hosts registered within {reg_s:.0} s (the agents' lists of <prefix>/ time out and are retried; each registration is an event to every watcher); the run goes on with what registered",
            p.hosts
        ));
    }
    let reserve = p.churn.mul_f64(1.5) + Duration::from_secs(100);
    let fill_budget = p
        .fill_budget
        .min(p.budget.saturating_sub(t_run.elapsed() + reserve))
        .max(Duration::from_secs(10));

    // 2. Fill.
    let jobs = sims * p.pods_per_host;
    let t_fill = Instant::now();
    let fill_stop = AtomicBool::new(false);
    let stopped_why = Mutex::new(String::new());
    let me = std::process::id();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = (Instant::now(), 0usize);
            while !fill_stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let rss = metrics::rss_mib(me).unwrap_or(0.0);
                let why = if t_fill.elapsed() > fill_budget {
                    Some(format!("the fill budget ({:.0} s) ran out", fill_budget.as_secs_f64()))
                } else if rss > p.max_rss_mib {
                    Some(format!("the harness reached {rss:.0} MiB (SCALE_MAX_RSS_MIB)"))
                } else {
                    None
                };
                if let Some(why) = why {
                    *lock(&stopped_why) = why;
                    fill_stop.store(true, Ordering::Relaxed);
                }
                if last.0.elapsed() >= Duration::from_secs(15) {
                    let n = lock(&w.fill_adds).len();
                    eprintln!(
                        "cnirs-scale: fill {n}/{jobs} at {:.0} s ({:.0} ADD/s), harness {rss:.0} MiB",
                        t_fill.elapsed().as_secs_f64(),
                        (n - last.1) as f64 / last.0.elapsed().as_secs_f64()
                    );
                    last = (Instant::now(), n);
                }
            }
        });
        pool(p.workers, jobs, &|k| {
            if fill_stop.load(Ordering::Relaxed) {
                return false;
            }
            let h = k % sims;
            if let Some(ms) = w.add_pod(h, Phase::Fill) {
                lock(&w.fill_adds).push((t_fill.elapsed().as_secs_f64(), ms));
            }
            true
        });
        fill_stop.store(true, Ordering::Relaxed);
    });
    let fill_s = t_fill.elapsed().as_secs_f64();
    let filled = w.live_pods();
    let fill_complete = filled >= jobs;
    // Let the fill's fan-out settle before the churn is measured.
    let t_settle = Instant::now();
    while w.tracker.unconverged(Phase::Fill, Duration::ZERO) > 0
        && t_settle.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let fill_unconverged = w.tracker.unconverged(Phase::Fill, Duration::ZERO);
    eprintln!(
        "cnirs-scale: fill {filled}/{jobs} pods in {fill_s:.1} s; settled in {:.1} s ({fill_unconverged} not applied everywhere)",
        t_settle.elapsed().as_secs_f64()
    );

    // 3. Churn.
    let cycles = (p.churn_per_s * p.churn.as_secs_f64()).round() as usize;
    let p0 = metrics::proposals_committed(&p.endpoints);
    let ev0 = w.events();
    let agents0 = sim_agents_cpu_s();
    let real_cpu = p.real_pid.and_then(CpuMeter::start);
    let etcd_cpu: Vec<CpuMeter> = p
        .etcd_pids
        .iter()
        .filter_map(|p| CpuMeter::start(*p))
        .collect();
    let self_cpu = CpuMeter::start(me);
    let mut real_rss: f64 = 0.0;
    let t_churn = Instant::now();
    let done_cycles = AtomicUsize::new(0);
    let churn_over = AtomicBool::new(false);
    let late = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            pool(p.workers.max(16), cycles, &|k| {
                let due = t_churn + Duration::from_secs_f64(k as f64 / p.churn_per_s.max(1e-3));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - due > Duration::from_millis(500) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                if t_churn.elapsed() > p.churn.mul_f64(1.5) + Duration::from_secs(5) {
                    return false; // far behind: stop, the achieved rate says so
                }
                // Spread over hosts by a multiplicative hash of the cycle number.
                let h = (k.wrapping_mul(2_654_435_761) >> 7) % sims;
                w.del_oldest(h);
                if let Some(ms) = w.add_pod(h, Phase::Churn) {
                    lock(&w.churn_add_ms).push(ms);
                    w.churn_adds[h].fetch_add(1, Ordering::Relaxed);
                    done_cycles.fetch_add(1, Ordering::Relaxed);
                }
                true
            });
            churn_over.store(true, Ordering::Relaxed);
        });
        while !churn_over.load(Ordering::Relaxed) {
            if let Some(r) = p.real_pid.and_then(metrics::rss_mib) {
                real_rss = real_rss.max(r);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let churn_s = t_churn.elapsed().as_secs_f64();
    let done = done_cycles.load(Ordering::Relaxed);
    let p1 = metrics::proposals_committed(&p.endpoints);
    let ev1 = w.events();
    let agents1 = sim_agents_cpu_s();
    let real_cpu_pct = real_cpu.and_then(|m| m.pct()).unwrap_or(0.0);
    let etcd_pct: Vec<f64> = etcd_cpu.iter().filter_map(CpuMeter::pct).collect();
    let self_pct = self_cpu.and_then(|m| m.pct()).unwrap_or(0.0);
    let adds: Vec<u64> = w
        .churn_adds
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let total_adds: u64 = adds.iter().sum();
    let t_drain = Instant::now();
    while w.tracker.unconverged(Phase::Churn, Duration::ZERO) > 0
        && t_drain.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let unconverged = w.tracker.unconverged(Phase::Churn, Duration::ZERO);
    if unconverged > 0 {
        w.errors.fetch_add(unconverged as u64, Ordering::Relaxed);
    }
    let writes_per_add = if total_adds > 0 {
        (p1 - p0) / total_adds as f64
    } else {
        0.0
    };
    // Watch events a host's agent received per pod ADD in the cluster (its DEL's events
    // included: amortized over the replacement).
    let per_host: Vec<f64> = (0..sims)
        .map(|h| (ev1[h] - ev0[h]) as f64 / total_adds.max(1) as f64)
        .collect();
    let events_per_add = per_host.iter().sum::<f64>() / per_host.len().max(1) as f64;
    let churn_claims = w.tracker.samples(Phase::Churn);
    let conv = with_zeros(&churn_claims, w.tracker.zeros(Phase::Churn));
    let fill_conv = w.tracker.samples(Phase::Fill);

    // 4. The real host: give its agent a resync period, then count what it keeps.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t_drain.elapsed()));
    let remote_pods = w.live_pods();
    let _ = remote_pods;
    let kernel = p.real_netns.as_deref().map(metrics::kernel_entries);
    let db_mib = metrics::db_mib(&p.endpoints);
    let pods = remote_pods + p.real_pods;

    // 5. Report.
    let fill_adds = lock(&w.fill_adds).clone();
    let tenth = (fill_adds.len() / 10).max(1);
    let head: Vec<f64> = fill_adds.iter().take(tenth).map(|x| x.1).collect();
    let tail: Vec<f64> = fill_adds.iter().rev().take(tenth).map(|x| x.1).collect();
    let rate = |xs: &[(f64, f64)]| -> f64 {
        match (xs.first(), xs.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => xs.len() as f64 / (b.0 - a.0),
            _ => 0.0,
        }
    };
    let churn_add_ms = lock(&w.churn_add_ms).clone();
    summary.push(format!(
        "{} hosts ({} simulated in one process, {} real), {} pods; etcd 3-member, {} endpoints",
        p.hosts,
        sims,
        usize::from(p.real_pid.is_some()),
        pods,
        p.endpoints.len()
    ));
    summary.push(format!(
        "fill: {filled}/{jobs} simulated pods in {fill_s:.1} s ({:.0} ADD/s){}; overlay ADD p50 {:.1} ms over the first tenth ({:.0}/s), {:.1} ms over the last ({:.0}/s); {} block claims routed by every other host p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {fill_unconverged} never routed everywhere",
        filled as f64 / fill_s.max(1e-3),
        if fill_complete { String::new() } else { format!(", INCOMPLETE: {}", lock(&stopped_why)) },
        pct_of(&head, 0.5),
        rate(&fill_adds[..tenth.min(fill_adds.len())]),
        pct_of(&tail, 0.5),
        rate(&fill_adds[fill_adds.len().saturating_sub(tenth)..]),
        fill_conv.len(),
        quantile(&fill_conv, 0.5),
        quantile(&fill_conv, 0.99),
        quantile(&fill_conv, 1.0),
    ));
    summary.push(format!(
        "churn: {done}/{cycles} replacements in {churn_s:.1} s ({:.1}/s of {} asked, {} started >0.5 s late); overlay ADD p50 {:.1} ms p99 {:.1} ms; convergence p50 {:.0} ms p99 {:.0} ms over {} ADDs ({} of them claimed a block), {unconverged} not applied everywhere 15 s after",
        done as f64 / churn_s.max(1e-3),
        p.churn_per_s,
        late.load(Ordering::Relaxed),
        pct_of(&churn_add_ms, 0.5),
        pct_of(&churn_add_ms, 0.99),
        quantile(&conv, 0.5),
        quantile(&conv, 0.99),
        conv.len(),
        churn_claims.len(),
    ));
    summary.push(format!(
        "etcd during the churn: {:.0} raft proposals ({writes_per_add:.2} per ADD, DEL included), members' CPU {} % of a core ({:.1} ms of CPU, all members, per replacement); {:.2} watch events per ADD per host",
        p1 - p0,
        etcd_pct.iter().map(|c| format!("{c:.0}")).collect::<Vec<_>>().join("/"),
        etcd_pct.iter().sum::<f64>() * 10.0 * churn_s / done.max(1) as f64,
        events_per_add,
    ));
    summary.push(format!(
        "simulated agents: {:.1} % of a core together ({:.3} % each) during the churn; the harness process {self_pct:.0} %; lists {} (re-lists after broken watches: {})",
        (agents1 - agents0) / churn_s.max(1e-3) * 100.0,
        (agents1 - agents0) / churn_s.max(1e-3) * 100.0 / sims.max(1) as f64,
        w.hosts.iter().map(|h| h.stats.lists.load(Ordering::Relaxed)).sum::<u64>(),
        w.hosts.iter().map(|h| h.stats.lists.load(Ordering::Relaxed)).sum::<u64>().saturating_sub(sims as u64),
    ));
    if let Some(k) = kernel {
        summary.push(format!(
            "real host: agent {real_cpu_pct:.1} % CPU, {real_rss:.1} MiB RSS (max) during the churn; kernel: {} FDB entries ({} all-zero), {} neighbours, {} routes (want 1 each per remote host: {}) = {:.2} per remote host",
            k.fdb,
            k.fdb_flood,
            k.neigh,
            k.routes,
            p.hosts - 1,
            k.total() as f64 / (p.hosts - 1).max(1) as f64,
        ));
    }
    summary.push(format!(
        "load average at the end: {}; run took {:.0} s",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        t_run.elapsed().as_secs_f64()
    ));
    let report = json!({
        "hosts": p.hosts,
        "pods": pods,
        "churn_per_s": round(done as f64 / churn_s.max(1e-3), 1),
        "fill_s": round(fill_s, 1),
        "etcd_writes_per_add": round(writes_per_add, 2),
        "etcd_events_per_add_per_host": round(events_per_add, 3),
        "converge_p50_ms": round(quantile(&conv, 0.5), 1),
        "converge_p99_ms": round(quantile(&conv, 0.99), 1),
        "agent_rss_mib": round(real_rss, 1),
        "agent_cpu_pct": round(real_cpu_pct, 1),
        "kernel_entries_real_host": kernel.map_or(0, |k| k.total()),
        "etcd_db_mib": round(db_mib, 1),
        "errors": w.errors.load(Ordering::Relaxed),
        "duplicates": w.duplicates.load(Ordering::Relaxed),
        "summary": summary,
    });
    if let Some(d) = p.out.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&p.out, text + "\n").map_err(|e| format!("write {}: {e}", p.out.display()))?;
    for l in report["summary"].as_array().into_iter().flatten() {
        eprintln!("cnirs-scale: {}", l.as_str().unwrap_or_default());
    }
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
