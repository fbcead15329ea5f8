//! Convergence: from the moment an ADD that claimed a new block returned until every other
//! host with the network's device has a route that covers the block (an agent installs the
//! block's own /26, or the /25 that merges it with its buddy). Agents may apply before the
//! harness has noted the ADD's end (the watch is fast): the routes each host added are kept
//! by destination for a minute (longer while they cover a block not yet settled), and a block
//! is settled from them when its ADD is noted.
//! An ADD that claimed no block needs nothing applied anywhere (0 ms).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent::dataplane::{Change, Entry};
use ipnetwork::IpNetwork;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Fill,
    Churn,
}

/// How long applied routes are kept waiting for their ADD to be noted.
const KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    /// route destination -> host -> when it was added there
    routes: HashMap<IpNetwork, HashMap<usize, Instant>>,
    /// blocks noted and not yet applied everywhere
    waiting: HashMap<IpNetwork, Waiting>,
    fill_ms: Vec<f64>,
    churn_ms: Vec<f64>,
    /// ADDs of a phase that needed nothing applied.
    zero: HashMap<bool, usize>,
    last_prune: Option<Instant>,
}

/// A block noted and not yet routed by every host it must reach.
struct Waiting {
    /// When its ADD returned.
    t0: Instant,
    /// Hosts that must route it.
    want: usize,
    phase: Phase,
    /// Hosts that route it so far -> when they first did. Kept up to date as routes come, so a
    /// route costs O(1) per waiting block it covers, not a recount of every host (during the
    /// fill's claim storm, ~1,000 blocks x 999 hosts, the recount was the harness's hot spot).
    hosts: HashMap<usize, Instant>,
}

#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

/// Every prefix of `b`'s family that holds `b` (itself included), down to /8 or /64.
fn covers(b: IpNetwork) -> impl Iterator<Item = IpNetwork> {
    let floor = if b.is_ipv4() { 8 } else { 64 };
    (floor..=b.prefix())
        .rev()
        .filter_map(move |p| IpNetwork::new(b.network(), p).ok())
        .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
}

impl Inner {
    /// Hosts that already route `b` -> the first of their covering routes (once per block,
    /// when its ADD is noted).
    fn coverage(&self, b: IpNetwork) -> HashMap<usize, Instant> {
        let mut first: HashMap<usize, Instant> = HashMap::new();
        for p in covers(b) {
            if let Some(hosts) = self.routes.get(&p) {
                for (h, t) in hosts {
                    let e = first.entry(*h).or_insert(*t);
                    *e = (*e).min(*t);
                }
            }
        }
        first
    }

    /// Settle `b` if every host it needs routes it.
    fn settle(&mut self, b: IpNetwork) {
        let Some(w) = self.waiting.get(&b) else {
            return;
        };
        if w.hosts.len() < w.want {
            return;
        }
        let last = w.hosts.values().max().copied();
        let ms = last.map_or(0.0, |l| {
            l.saturating_duration_since(w.t0).as_secs_f64() * 1e3
        });
        match w.phase {
            Phase::Fill => self.fill_ms.push(ms),
            Phase::Churn => self.churn_ms.push(ms),
        }
        self.waiting.remove(&b);
    }

    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(10))
        {
            return;
        }
        self.last_prune = Some(now);
        // Routes covering a block still waiting stay: under load a block can take longer than
        // KEEP to reach every host, and dropping its first hosts' routes would leave it
        // unsettled for ever.
        let waiting: Vec<IpNetwork> = self.waiting.keys().copied().collect();
        self.routes.retain(|dst, hosts| {
            if waiting
                .iter()
                .any(|b| dst.contains(b.network()) && dst.prefix() <= b.prefix())
            {
                return true;
            }
            hosts.retain(|_, t| now.duration_since(*t) < KEEP);
            !hosts.is_empty()
        });
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Host `host`'s agent applied a change (the fake kernel's observer).
    pub fn applied(&self, host: usize, e: &Entry, c: Change, at: Instant) {
        let Entry::Route(_, r) = e else { return };
        if c != Change::Add {
            return;
        }
        let mut g = self.lock();
        g.routes.entry(r.dst).or_default().entry(host).or_insert(at);
        let mut full = Vec::new();
        for (b, w) in g.waiting.iter_mut() {
            if r.dst.contains(b.network()) && r.dst.prefix() <= b.prefix() {
                let t = w.hosts.entry(host).or_insert(at);
                *t = (*t).min(at);
                if w.hosts.len() >= w.want {
                    full.push(*b);
                }
            }
        }
        for b in full {
            g.settle(b);
        }
    }

    /// An ADD returned at `at`; it claimed `block` (None: nothing to apply), which `want`
    /// hosts must route.
    pub fn added(&self, block: Option<IpNetwork>, at: Instant, want: usize, phase: Phase) {
        let mut g = self.lock();
        g.prune(at);
        match block {
            Some(b) if want > 0 => {
                let hosts = g.coverage(b);
                g.waiting.insert(
                    b,
                    Waiting {
                        t0: at,
                        want,
                        phase,
                        hosts,
                    },
                );
                g.settle(b);
            }
            _ => *g.zero.entry(phase == Phase::Fill).or_default() += 1,
        }
    }

    /// Blocks of `phase` still not routed everywhere after `older_than`.
    pub fn unconverged(&self, phase: Phase, older_than: Duration) -> usize {
        let now = Instant::now();
        self.lock()
            .waiting
            .values()
            .filter(|w| w.phase == phase && now.duration_since(w.t0) >= older_than)
            .count()
    }

    /// Sorted samples (ms) of `phase`'s block claims.
    pub fn samples(&self, phase: Phase) -> Vec<f64> {
        let g = self.lock();
        let mut v = match phase {
            Phase::Fill => g.fill_ms.clone(),
            Phase::Churn => g.churn_ms.clone(),
        };
        v.sort_by(f64::total_cmp);
        v
    }

    /// ADDs of `phase` that needed nothing applied (no new block).
    pub fn zeros(&self, phase: Phase) -> usize {
        self.lock()
            .zero
            .get(&(phase == Phase::Fill))
            .copied()
            .unwrap_or(0)
    }
}

/// The `q` quantile (0..=1) of sorted samples; 0 when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The samples of every ADD of a phase: `zeros` ADDs at 0 ms and the claims' times.
pub fn with_zeros(claims: &[f64], zeros: usize) -> Vec<f64> {
    let mut v = vec![0.0; zeros];
    v.extend_from_slice(claims);
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use netops::PeerRoute;

    fn route(dst: &str) -> Entry {
        Entry::Route(
            1,
            PeerRoute {
                dst: dst.parse().unwrap(),
                via: "fe80::1".parse().unwrap(),
            },
        )
    }

    #[test]
    fn a_block_converges_when_every_host_covers_it_in_either_order() {
        let t = Tracker::default();
        let t0 = Instant::now();
        let b: IpNetwork = "10.64.1.64/26".parse().unwrap();
        // Host 1 routes the block before the harness notes the ADD; host 2 routes the /25
        // that merges it with its buddy, later.
        t.applied(
            1,
            &route("10.64.1.64/26"),
            Change::Add,
            t0 + Duration::from_millis(5),
        );
        t.added(Some(b), t0, 2, Phase::Churn);
        assert!(t.samples(Phase::Churn).is_empty());
        assert_eq!(t.unconverged(Phase::Churn, Duration::ZERO), 1);
        // A route that does not cover it and a delete count for nothing.
        t.applied(2, &route("10.64.2.0/25"), Change::Add, t0);
        t.applied(2, &route("10.64.1.0/25"), Change::Del, t0);
        assert_eq!(t.unconverged(Phase::Churn, Duration::ZERO), 1);
        t.applied(
            2,
            &route("10.64.1.0/25"),
            Change::Add,
            t0 + Duration::from_millis(40),
        );
        assert_eq!(t.samples(Phase::Churn), vec![40.0]);
        // An ADD without a new block needs nothing.
        t.added(None, t0, 5, Phase::Churn);
        assert_eq!(t.zeros(Phase::Churn), 1);
        assert_eq!(with_zeros(&[40.0], 2), vec![0.0, 0.0, 40.0]);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn a_block_slower_than_keep_still_settles_and_unrelated_routes_are_pruned() {
        let t = Tracker::default();
        let t0 = Instant::now();
        let b: IpNetwork = "10.64.1.64/26".parse().unwrap();
        t.added(Some(b), t0, 2, Phase::Fill);
        t.applied(1, &route("10.64.1.64/26"), Change::Add, t0);
        t.applied(1, &route("10.64.9.0/26"), Change::Add, t0);
        // Long after KEEP, a prune: host 1's route for the waiting block stays, the other goes.
        let late = t0 + KEEP + Duration::from_secs(15);
        t.added(None, late, 1, Phase::Fill);
        {
            let g = t.lock();
            assert!(g.routes.contains_key(&b));
            assert!(!g.routes.contains_key(&"10.64.9.0/26".parse().unwrap()));
        }
        t.applied(2, &route("10.64.1.64/26"), Change::Add, late);
        assert_eq!(t.unconverged(Phase::Fill, Duration::ZERO), 0);
        assert_eq!(t.samples(Phase::Fill).len(), 1);
    }
}
