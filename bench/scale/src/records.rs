//! `SCALE_MODE=records`: the cluster's state at full size without a thousand agent loops in
//! one process. The N-1 other hosts exist as what they write to etcd: their `hosts/` keys (on
//! a lease), and for every pod the keys an overlay ADD writes (`ipam/<net>/ips/<ip>`,
//! `pods/<net>/<ip>`), preloaded in batches; the churn then writes and deletes exactly the
//! keys an ADD and a DEL write (3 and 2 writes), skipping their reads. The real host's agent
//! and `SCALE_PROBES` probe agents (the real agent loop on fake kernels) watch it all, so the
//! per-host figures (real agent CPU/RSS, kernel entries, events per ADD, convergence) are
//! measured at the full N x P; the ADD path's own cost is the default mode's to measure.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent::{dataplane::Observer, FakeKernel, Node};
use cluster::{
    ipam::{IpRecord, Keys},
    schema::{self, HostRecord, PodRecord},
};
use etcd::{Compare, Op};
use serde_json::json;

use crate::{
    metrics::{self, CpuMeter},
    params::Params,
    track::{quantile, Phase, Tracker},
};

const PREFIX: &str = cluster::DEFAULT_PREFIX;

struct Pod {
    ip: IpAddr,
    mac: [u8; 6],
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn vtep(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 241, 0, 0)) + 1 + i as u32)
}

fn mac_of(n: u64) -> [u8; 6] {
    let b = (n as u32).to_be_bytes();
    [0x0a, 0x58, b[0], b[1], b[2], b[3]]
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Writer<'p> {
    p: &'p Params,
    client: etcd::Client,
    keys: Keys,
    free: Mutex<VecDeque<Ipv4Addr>>,
    live: Vec<Mutex<VecDeque<Pod>>>,
    next: AtomicU64,
    errors: AtomicU64,
    tracker: Arc<Tracker>,
    probes: usize,
}

impl Writer<'_> {
    fn node(h: usize) -> String {
        format!("sim{h}")
    }

    fn pod_ops(&self, h: usize, ip: IpAddr, mac: [u8; 6]) -> (Vec<Op>, String) {
        let id = format!("sim{h}-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let ipr = IpRecord {
            node: Self::node(h),
            container_id: id.clone(),
            ifname: "eth0".into(),
        };
        let pod = PodRecord {
            node: Self::node(h),
            vtep: vtep(h),
            mac: mac_str(mac),
            container_id: id.clone(),
            ifname: "eth0".into(),
        };
        let ops = vec![
            Op::put(
                self.keys.ip(ip),
                serde_json::to_vec(&ipr).unwrap_or_default(),
                None,
            ),
            Op::put(
                schema::pod_key(PREFIX, &self.p.network, &ip),
                serde_json::to_vec(&pod).unwrap_or_default(),
                None,
            ),
        ];
        (ops, id)
    }

    /// The writes of one overlay ADD: the address (create txn), the network (create-or-get),
    /// the pod record; then the probes must apply it.
    fn add(&self, h: usize) {
        let Some(ip) = lock(&self.free).pop_front().map(IpAddr::V4) else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mac = mac_of(self.next.load(Ordering::Relaxed) + (1 << 31));
        let (ops, _) = self.pod_ops(h, ip, mac);
        let net_key = schema::network_key(PREFIX, &self.p.network);
        let res = self
            .client
            .txn(&[Compare::absent(self.keys.ip(ip))], &ops[..1], &[])
            .and_then(|_| {
                self.client.txn(
                    &[Compare::absent(&net_key)],
                    &[Op::put(&net_key, b"{}", None)],
                    &[Op::get(&net_key)],
                )
            })
            .and_then(|_| self.client.txn(&[], &ops[1..], &[]));
        match res {
            Ok(_) => {
                let want = self.probes - usize::from(h < self.probes);
                self.tracker.added(mac, Instant::now(), want, Phase::Churn);
                lock(&self.live[h]).push_back(Pod { ip, mac });
            }
            Err(e) => {
                log::warn!("add on sim{h}: {e}");
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The writes of one overlay DEL: the address, then the pod record.
    fn del_oldest(&self, h: usize) {
        let Some(pod) = lock(&self.live[h]).pop_front() else {
            return;
        };
        self.tracker.forget(pod.mac);
        let res = self
            .client
            .txn(&[], &[Op::delete(self.keys.ip(pod.ip))], &[])
            .and_then(|_| {
                self.client.txn(
                    &[],
                    &[Op::delete(schema::pod_key(
                        PREFIX,
                        &self.p.network,
                        &pod.ip,
                    ))],
                    &[],
                )
            });
        match res {
            Ok(_) => {
                if let IpAddr::V4(v4) = pod.ip {
                    lock(&self.free).push_back(v4);
                }
            }
            Err(e) => {
                log::warn!("del on sim{h}: {e}");
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub fn run(p: &Params) -> Result<(), String> {
    let t_run = Instant::now();
    let sims = p.sims();
    let client = etcd::Client::new(&p.endpoints).map_err(|e| e.to_string())?;
    let keys = Keys::new(&cluster::ipam::network_prefix(PREFIX, &p.network));
    // Addresses the real host's pods hold are not ours to hand out.
    let (held, _) = client
        .range_prefix(format!("{}ips/", keys.network_prefix))
        .map_err(|e| e.to_string())?;
    let held: HashSet<String> = held
        .iter()
        .map(|kv| {
            kv.key_str()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let net: ipnetwork::Ipv4Network = p.subnet.parse().map_err(|e| format!("SCALE_SUBNET: {e}"))?;
    let free: VecDeque<Ipv4Addr> = net
        .iter()
        .skip(256)
        .filter(|ip| !held.contains(&ip.to_string()))
        .take(sims * p.pods_per_host + 100_000)
        .collect();
    let tracker = Arc::new(Tracker::default());
    let probes = p.probes.min(sims);
    let w = Writer {
        p,
        client: client.clone(),
        keys,
        free: Mutex::new(free),
        live: (0..sims).map(|_| Mutex::new(VecDeque::new())).collect(),
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        tracker: Arc::clone(&tracker),
        probes,
    };
    let mut summary = Vec::new();

    // 1. Hosts, on one lease kept alive for the run.
    let lease = client.lease_grant(60).map_err(|e| e.to_string())?;
    let _keeper = client.keep_alive(lease, Duration::from_secs(10));
    for chunk in (0..sims).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|i| {
                Op::put(
                    schema::host_key(PREFIX, &Writer::node(*i)),
                    serde_json::to_vec(&HostRecord { vtep: vtep(*i) }).unwrap_or_default(),
                    Some(lease),
                )
            })
            .collect();
        client.txn(&[], &ops, &[]).map_err(|e| e.to_string())?;
    }

    // 2. Probe agents: the real loop on fake kernels for the first hosts, devices present.
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<agent::Stats>> = (0..probes).map(|_| Arc::default()).collect();
    for (i, st) in stats.iter().enumerate() {
        let t = Arc::clone(&tracker);
        let obs: Observer = Arc::new(move |_d, e, c, at| t.applied(e, c, at));
        let kernel = FakeKernel::new().with_observer(obs);
        kernel.ensure_vxlan(&cluster::vxlan_name(p.vni), p.vni, vtep(i));
        let node = Node {
            name: Writer::node(i),
            vtep: vtep(i),
            prefix: PREFIX.into(),
        };
        let (c, stop, st) = (client.clone(), Arc::clone(&stop), Arc::clone(st));
        std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || {
                if let Err(e) = agent::run_node(&c, &node, &kernel, &stop, &st) {
                    log::warn!("probe {}: {e}", node.name);
                }
            })
            .map_err(|e| e.to_string())?;
    }

    // 3. Preload P pods per host, 32 pods (64 puts) per txn.
    let t_fill = Instant::now();
    let batch = 32;
    let total = sims * p.pods_per_host;
    let order: Vec<usize> = (0..total).map(|k| k % sims).collect();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for chunk in order.chunks(total.div_ceil(p.workers.max(1)).max(1)) {
            let w = &w;
            let done = &done;
            s.spawn(move || {
                for part in chunk.chunks(batch) {
                    let mut ops = Vec::new();
                    let mut pods = Vec::new();
                    for h in part {
                        let Some(ip) = lock(&w.free).pop_front().map(IpAddr::V4) else {
                            w.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let mac = mac_of(w.next.load(Ordering::Relaxed));
                        let (o, _) = w.pod_ops(*h, ip, mac);
                        ops.extend(o);
                        pods.push((*h, Pod { ip, mac }));
                    }
                    match w.client.txn(&[], &ops, &[]) {
                        Ok(_) => {
                            for (h, pod) in pods {
                                lock(&w.live[h]).push_back(pod);
                            }
                            done.fetch_add(part.len(), Ordering::Relaxed);
                        }
                        Err(e) => {
                            log::warn!("preload: {e}");
                            w.errors.fetch_add(part.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let fill_s = t_fill.elapsed().as_secs_f64();
    eprintln!(
        "cnirs-scale: records: {} hosts, {} pods preloaded in {fill_s:.1} s",
        sims,
        done.load(Ordering::Relaxed)
    );
    // The agents apply the preload; wait until the real host has it all (its FDB grows).
    let want_fdb = done.load(Ordering::Relaxed);
    let t_settle = Instant::now();
    let mut k = metrics::KernelEntries::default();
    while t_settle.elapsed() < Duration::from_secs(300) {
        if let Some(ns) = p.real_netns.as_deref() {
            k = metrics::kernel_entries(ns);
            if k.fdb_pod >= want_fdb {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let settle_s = t_settle.elapsed().as_secs_f64();
    let real_rss_after_fill = p.real_pid.and_then(metrics::rss_mib).unwrap_or(0.0);

    // 4. Churn.
    let cycles = (p.churn_per_s * p.churn.as_secs_f64()).round() as usize;
    let p0 = metrics::proposals_committed(&p.endpoints);
    let ev0: Vec<u64> = stats
        .iter()
        .map(|s| s.events.load(Ordering::Relaxed))
        .collect();
    let real_cpu = p.real_pid.and_then(CpuMeter::start);
    let etcd_cpu: Vec<CpuMeter> = p
        .etcd_pids
        .iter()
        .filter_map(|x| CpuMeter::start(*x))
        .collect();
    let t_churn = Instant::now();
    let next = AtomicUsize::new(0);
    let adds = AtomicUsize::new(0);
    let over = AtomicBool::new(false);
    let mut real_rss: f64 = 0.0;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::scope(|s2| {
                for _ in 0..p.workers.max(8) {
                    s2.spawn(|| loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= cycles || t_churn.elapsed() > p.churn.mul_f64(1.5) {
                            return;
                        }
                        let due =
                            t_churn + Duration::from_secs_f64(k as f64 / p.churn_per_s.max(1e-3));
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let h = (k.wrapping_mul(2_654_435_761) >> 7) % sims;
                        w.del_oldest(h);
                        w.add(h);
                        adds.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
            over.store(true, Ordering::Relaxed);
        });
        while !over.load(Ordering::Relaxed) {
            if let Some(r) = p.real_pid.and_then(metrics::rss_mib) {
                real_rss = real_rss.max(r);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let churn_s = t_churn.elapsed().as_secs_f64();
    let n_adds = adds.load(Ordering::Relaxed);
    let p1 = metrics::proposals_committed(&p.endpoints);
    let ev1: Vec<u64> = stats
        .iter()
        .map(|s| s.events.load(Ordering::Relaxed))
        .collect();
    let real_cpu_pct = real_cpu.and_then(|m| m.pct()).unwrap_or(0.0);
    let etcd_pct: Vec<f64> = etcd_cpu.iter().filter_map(CpuMeter::pct).collect();
    let t_drain = Instant::now();
    while tracker.unconverged(Phase::Churn, Duration::ZERO) > 0
        && t_drain.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let unconverged = tracker.unconverged(Phase::Churn, Duration::ZERO);
    w.errors.fetch_add(unconverged as u64, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let live: usize = w.live.iter().map(|l| lock(l).len()).sum();
    let kernel = p.real_netns.as_deref().map(metrics::kernel_entries);
    let conv = tracker.samples(Phase::Churn);
    let events_per_add = ev0
        .iter()
        .zip(&ev1)
        .map(|(a, b)| (b - a) as f64 / n_adds.max(1) as f64)
        .sum::<f64>()
        / probes.max(1) as f64;
    let writes_per_add = (p1 - p0) / n_adds.max(1) as f64;
    summary.push(format!(
        "records mode: {} hosts ({sims} as etcd records, {probes} of them with a probe agent, 1 real), {} pods",
        p.hosts,
        live + p.real_pods
    ));
    summary.push(format!(
        "preload {} pods in {fill_s:.1} s; the real agent had them all in its kernel {settle_s:.0} s later ({} pod FDB entries), RSS {real_rss_after_fill:.1} MiB",
        want_fdb, k.fdb_pod
    ));
    summary.push(format!(
        "churn (writes of ADD/DEL only, not their reads): {n_adds}/{cycles} in {churn_s:.1} s ({:.1}/s); probe convergence p50 {:.0} ms p99 {:.0} ms over {} ADDs, {unconverged} unconverged",
        n_adds as f64 / churn_s.max(1e-3),
        quantile(&conv, 0.5),
        quantile(&conv, 0.99),
        conv.len()
    ));
    summary.push(format!(
        "etcd: {:.0} proposals ({writes_per_add:.2} per ADD, DEL included), members' CPU {} %; {events_per_add:.2} watch events per ADD per host",
        p1 - p0,
        etcd_pct.iter().map(|c| format!("{c:.0}")).collect::<Vec<_>>().join("/")
    ));
    if let Some(k) = kernel {
        summary.push(format!(
            "real host: agent {real_cpu_pct:.1} % CPU, {real_rss:.1} MiB RSS (max) during the churn; kernel: {} flood FDB, {} pod FDB (want {live}), {} neighbours, {} routes = {:.1} per remote host",
            k.fdb_flood,
            k.fdb_pod,
            k.neigh,
            k.routes,
            k.total() as f64 / (p.hosts - 1).max(1) as f64
        ));
    }
    summary.push(format!(
        "load average at the end: {}; run took {:.0} s",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        t_run.elapsed().as_secs_f64()
    ));
    let r = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    let report = json!({
        "hosts": p.hosts,
        "pods": live + p.real_pods,
        "churn_per_s": r(n_adds as f64 / churn_s.max(1e-3), 1),
        "fill_s": r(fill_s, 1),
        "etcd_writes_per_add": r(writes_per_add, 2),
        "etcd_events_per_add_per_host": r(events_per_add, 3),
        "converge_p50_ms": r(quantile(&conv, 0.5), 1),
        "converge_p99_ms": r(quantile(&conv, 0.99), 1),
        "agent_rss_mib": r(real_rss, 1),
        "agent_cpu_pct": r(real_cpu_pct, 1),
        "kernel_entries_real_host": kernel.map_or(0, |k| k.total()),
        "etcd_db_mib": r(metrics::db_mib(&p.endpoints), 1),
        "errors": w.errors.load(Ordering::Relaxed),
        "duplicates": 0,
        "summary": summary,
    });
    if let Some(d) = p.out.parent() {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&p.out, text + "\n").map_err(|e| e.to_string())?;
    for l in report["summary"].as_array().into_iter().flatten() {
        eprintln!("cnirs-scale: {}", l.as_str().unwrap_or_default());
    }
    stop.store(true, Ordering::SeqCst);
    Ok(())
}
