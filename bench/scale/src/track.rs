//! Convergence: from the moment an ADD on one host returned until every other host's agent
//! has applied the pod (its `MAC -> VTEP` FDB entry appeared in that host's fake kernel).
//! Agents may apply before the harness has noted the ADD's end (the watch is fast): both
//! sides meet in one map keyed by MAC.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent::dataplane::FdbChange;
use netops::{FdbEntry, FLOOD_MAC};

#[derive(Default)]
struct Pending {
    /// When the ADD returned, and how many hosts must apply it.
    added: Option<(Instant, usize, Phase)>,
    applied: usize,
    last: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Fill,
    Churn,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<[u8; 6], Pending>,
    fill_ms: Vec<f64>,
    churn_ms: Vec<f64>,
}

#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

impl Inner {
    fn settle(&mut self, mac: [u8; 6]) {
        let done = match self.pending.get(&mac) {
            Some(Pending {
                added: Some((t0, want, phase)),
                applied,
                last,
            }) if applied >= want => {
                let ms = last.map_or(0.0, |l| {
                    l.saturating_duration_since(*t0).as_secs_f64() * 1e3
                });
                Some((ms, *phase))
            }
            _ => None,
        };
        if let Some((ms, phase)) = done {
            self.pending.remove(&mac);
            match phase {
                Phase::Fill => self.fill_ms.push(ms),
                Phase::Churn => self.churn_ms.push(ms),
            }
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent applied a change (the fake kernel's observer).
    pub fn applied(&self, e: &FdbEntry, c: FdbChange, at: Instant) {
        if c != FdbChange::Add || e.mac == FLOOD_MAC.0 {
            return;
        }
        let mut g = self.lock();
        let p = g.pending.entry(e.mac).or_default();
        p.applied += 1;
        p.last = Some(p.last.map_or(at, |l| l.max(at)));
        g.settle(e.mac);
    }

    /// An ADD returned at `at`; `want` hosts must apply it (0: nothing to wait for).
    pub fn added(&self, mac: [u8; 6], at: Instant, want: usize, phase: Phase) {
        let mut g = self.lock();
        if want == 0 {
            match phase {
                Phase::Fill => g.fill_ms.push(0.0),
                Phase::Churn => g.churn_ms.push(0.0),
            }
            return;
        }
        g.pending.entry(mac).or_default().added = Some((at, want, phase));
        g.settle(mac);
    }

    /// A pod was deleted: stop waiting for it (a DEL racing its own ADD's fan-out).
    pub fn forget(&self, mac: [u8; 6]) -> bool {
        let mut g = self.lock();
        matches!(g.pending.remove(&mac), Some(p) if p.added.is_some())
    }

    /// ADDs of `phase` still not applied everywhere after `older_than`.
    pub fn unconverged(&self, phase: Phase, older_than: Duration) -> usize {
        let now = Instant::now();
        self.lock()
            .pending
            .values()
            .filter(|p| {
                matches!(p.added, Some((t0, _, ph)) if ph == phase && now.duration_since(t0) >= older_than)
            })
            .count()
    }

    /// Sorted samples (ms) of `phase`.
    pub fn samples(&self, phase: Phase) -> Vec<f64> {
        let g = self.lock();
        let mut v = match phase {
            Phase::Fill => g.fill_ms.clone(),
            Phase::Churn => g.churn_ms.clone(),
        };
        v.sort_by(f64::total_cmp);
        v
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(m: u8) -> FdbEntry {
        FdbEntry {
            mac: [0x0a, 0x58, 0, 0, 0, m],
            dst: "10.241.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn an_add_converges_when_every_host_applied_it_in_either_order() {
        let t = Tracker::default();
        let t0 = Instant::now();
        // One host applies before the harness notes the ADD, the second after.
        t.applied(&entry(1), FdbChange::Add, t0 + Duration::from_millis(5));
        t.added(entry(1).mac, t0, 2, Phase::Churn);
        assert!(t.samples(Phase::Churn).is_empty());
        t.applied(&entry(1), FdbChange::Add, t0 + Duration::from_millis(40));
        assert_eq!(t.samples(Phase::Churn), vec![40.0]);
        // Deletes and flood entries are not pods being applied.
        t.added(entry(2).mac, t0, 1, Phase::Churn);
        t.applied(&entry(2), FdbChange::Del, t0);
        let flood = FdbEntry {
            mac: FLOOD_MAC.0,
            dst: entry(2).dst,
        };
        t.applied(&flood, FdbChange::Add, t0);
        assert_eq!(t.unconverged(Phase::Churn, Duration::ZERO), 1);
        assert!(t.forget(entry(2).mac));
        assert_eq!(t.unconverged(Phase::Churn, Duration::ZERO), 0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }
}
