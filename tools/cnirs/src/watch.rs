//! `cnirs watch`: stay in the foreground in the current network namespace, listen to
//! nf_tables' change events (NETLINK_NETFILTER, group NFNLGRP_NFTABLES) and restore table
//! `inet cnirs` from the plugins' state as soon as a committed transaction removed part of it:
//! `nft flush ruleset`, `nft delete table inet cnirs`, `nft -f` of a file starting with
//! `flush ruleset` (nftables.service, firewalld), a deleted chain, set, or rules.
//!
//! Decision per transaction (the events of one commit end with a NEWGEN message): it touched
//! our tables (`inet cnirs`, `bridge cnirs`) with a DELTABLE, DELCHAIN or DELSET, or deleted
//! more rules than it added (the skeleton's own `flush chain` + re-add is balanced). Element
//! deletes are the plugins' DEL and are left alone. Our own repair is such a balanced
//! transaction (the skeleton flushes each chain and adds its rules again), so it never
//! triggers another repair; no generation bookkeeping is needed, and none could be exact (a
//! commit can land between our repair and a `GETGEN`). Lost events (ENOBUFS) trigger a check
//! of the table. SIGTERM/SIGINT exit 0.
//!
//! The NetworkPolicy guard (`nftplan::guard`, docs/netpol.md "Fail closed"): the watcher
//! holds table `inet cnirs_guard`, owned by its socket (a flush from elsewhere skips it), and
//! mirrors into it the pods NetworkPolicy isolates (from the state's record at start and
//! after lost events; otherwise from the `np_iiso*`/`np_eiso*` elements the events carry,
//! one guard transaction per generation). While `inet cnirs` is missing the guard drops
//! their traffic. `--no-guard` runs without it.

use std::{
    collections::BTreeSet, net::IpAddr, os::fd::BorrowedFd, process::ExitCode, time::Instant,
};

use nftplan::{
    guard::{isolation_of, Guard, GUARD_TABLE},
    nfnl::{Nfnl, NftEvent, NftMsg, NFPROTO_BRIDGE, NFPROTO_INET},
    Elem, Firewall, NftError, NpDir,
};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};

const USAGE: &str = "usage: cnirs watch [--no-guard]

Run in the foreground in the current network namespace; restore the CNI plugins' nftables
table (inet cnirs) from their state within milliseconds whenever a flush, a table delete or
a ruleset reload removes it. Logs each repair on stderr. Exits 0 on SIGTERM or SIGINT.
Holds table inet cnirs_guard (owned by this process: a flush does not remove it), which
drops traffic of the pods NetworkPolicy isolates while inet cnirs is missing; --no-guard
runs without it.
";

/// Receive buffer for events: `nft flush ruleset` on a big ruleset emits one message per
/// rule, set and chain.
const RCVBUF: usize = 8 << 20;

/// What one transaction did to our tables, accumulated until its NEWGEN.
#[derive(Debug, Default)]
pub struct Tracker {
    table_deleted: bool,
    chains_deleted: usize,
    sets_deleted: usize,
    rules_deleted: usize,
    rules_added: usize,
}

impl Tracker {
    /// Feed one event; at the end of a transaction that removed part of our table, the reason
    /// for a repair (what went missing, and who committed it).
    pub fn feed(&mut self, ev: &NftEvent) -> Option<String> {
        let ours = ev.table.as_deref() == Some("cnirs")
            && (ev.family == NFPROTO_INET || ev.family == NFPROTO_BRIDGE);
        match ev.msg {
            NftMsg::DelTable if ours => self.table_deleted = true,
            NftMsg::DelChain if ours => self.chains_deleted += 1,
            NftMsg::DelSet if ours => self.sets_deleted += 1,
            NftMsg::DelRule if ours => self.rules_deleted += 1,
            NftMsg::NewRule if ours => self.rules_added += 1,
            NftMsg::NewGen => {
                let t = std::mem::take(self);
                let mut what = Vec::new();
                if t.table_deleted {
                    what.push("the table was deleted".to_owned());
                }
                if t.chains_deleted > 0 {
                    what.push(format!("{} chain(s) deleted", t.chains_deleted));
                }
                if t.sets_deleted > 0 {
                    what.push(format!("{} set(s)/map(s) deleted", t.sets_deleted));
                }
                if t.rules_deleted > t.rules_added {
                    what.push(format!(
                        "{} rule(s) deleted",
                        t.rules_deleted - t.rules_added
                    ));
                }
                if what.is_empty() {
                    return None;
                }
                let by = match (&ev.proc_name, ev.proc_pid) {
                    (Some(n), Some(p)) => format!(
                        " (committed by {n}[{p}], generation {})",
                        ev.gen_id.unwrap_or(0)
                    ),
                    _ => String::new(),
                };
                return Some(format!("{}{by}", what.join(", ")));
            }
            _ => {}
        }
        None
    }
}

/// `cnirs watch ARGS`.
pub fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        log::info!("\n{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut guard = true;
    for a in args {
        match a.as_str() {
            "--no-guard" => guard = false,
            _ => {
                log::error!("unknown argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match watch(true, guard) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The watcher inside `cnirs agent`: the same loop, but it leaves SIGTERM/SIGINT to the agent
/// (a signalfd here would race the agent's handler for them); it ends with the process.
pub fn run_beside_agent() {
    if let Err(e) = watch(false, true) {
        log::error!("nftables watcher: {e}");
    }
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{0}: {1}")]
    Setup(&'static str, std::io::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// Watch until SIGTERM/SIGINT (`own_signals`: read through a signalfd) or forever.
fn watch(own_signals: bool, with_guard: bool) -> Result<(), WatchError> {
    let sigs = if own_signals {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()
            .map_err(|e| WatchError::Setup("block SIGTERM/SIGINT", e.into()))?;
        Some(
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
                .map_err(|e| WatchError::Setup("signalfd", e.into()))?,
        )
    } else {
        None
    };

    let mut events = Nfnl::open().map_err(|e| WatchError::Setup("netlink socket", e))?;
    events
        .subscribe(RCVBUF)
        .map_err(|e| WatchError::Setup("join NFNLGRP_NFTABLES", e))?;
    let mut tracker = Tracker::default();

    // Subscribed first, then checked: nothing that happens from here on is missed.
    let state = Firewall::open()?;
    log::info!(
        "watching nftables in this network namespace (state {})",
        state.state_dir().display()
    );
    match state.table_is_current() {
        Ok(Some(true)) => {}
        Ok(_) if state.state_is_empty().unwrap_or(true) => {}
        Ok(_) => repair("at start: table inet cnirs missing or not the one recorded"),
        Err(e) => log::warn!("cannot probe the table: {e}"),
    }
    let mut guard = if with_guard { open_guard() } else { None };
    sync_guard(&mut guard, &state);
    // Isolations added (true) and removed in the generation being read, from the events.
    let mut iso_changes: Vec<(bool, (NpDir, IpAddr))> = Vec::new();

    loop {
        // SAFETY: the fd belongs to `events`, alive for this whole iteration.
        let ev_fd = unsafe { BorrowedFd::borrow_raw(events.raw_fd()) };
        let mut fds = vec![PollFd::new(ev_fd, PollFlags::POLLIN)];
        if let Some(sigs) = &sigs {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(sigs),
                PollFlags::POLLIN,
            ));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(WatchError::Setup("poll", e.into())),
        }
        let sig_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        let ev_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if let (true, Some(sigs)) = (sig_ready, &sigs) {
            let sig = sigs.read_signal().ok().flatten().map(|s| s.ssi_signo);
            log::info!("signal {}: exiting", sig.unwrap_or(0));
            return Ok(());
        }
        if !ev_ready {
            continue;
        }
        match events.recv_events() {
            Ok(evs) => {
                for ev in &evs {
                    if ev.table.as_deref() == Some("cnirs") && ev.family == NFPROTO_INET {
                        iso_changes.extend(isolations(ev));
                    }
                    let end = ev.msg == NftMsg::NewGen;
                    if let Some(reason) = tracker.feed(ev) {
                        repair(&reason);
                    }
                    if end && !iso_changes.is_empty() {
                        change_guard(&mut guard, std::mem::take(&mut iso_changes));
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                log::warn!("nftables events were lost (receive buffer full): checking the table");
                let fw = Firewall::open()?;
                if fw.table_is_current()? != Some(true) {
                    repair("events lost and table inet cnirs is missing or was replaced");
                }
                tracker = Tracker::default();
                sync_guard(&mut guard, &state);
            }
            Err(e) => return Err(WatchError::Setup("receive nftables events", e)),
        }
    }
}

/// The guard table, or `None` (logged) when it cannot be created: another watcher of this
/// namespace holds it (`cnirs watch` beside `cnirs agent`), or the kernel refuses.
fn open_guard() -> Option<Guard> {
    match Guard::create() {
        Ok(g) => {
            log::info!("holding table inet {GUARD_TABLE} (NetworkPolicy guard)");
            Some(g)
        }
        Err(e) => {
            log::warn!("no NetworkPolicy guard (table inet {GUARD_TABLE}): {e}");
            None
        }
    }
}

/// The isolations an event of `inet cnirs` adds (true) or removes: elements of the
/// `np_iiso*`/`np_eiso*` sets. A flush or a table delete reports no element, so the guard
/// keeps what it holds while the table is gone.
fn isolations(ev: &NftEvent) -> Vec<(bool, (NpDir, IpAddr))> {
    let added = match ev.msg {
        NftMsg::NewSetElem => true,
        NftMsg::DelSetElem => false,
        _ => return Vec::new(),
    };
    let Some(set) = ev.set.as_deref() else {
        return Vec::new();
    };
    ev.keys
        .iter()
        .filter_map(|k| isolation_of(set, k))
        .map(|iso| (added, iso))
        .collect()
}

/// Apply one generation's isolation changes to the guard (in order: one transaction).
fn change_guard(guard: &mut Option<Guard>, changes: Vec<(bool, (NpDir, IpAddr))>) {
    let Some(g) = guard else { return };
    let mut want = g.held().clone();
    for (added, iso) in changes {
        if added {
            want.insert(iso);
        } else {
            want.remove(&iso);
        }
    }
    hold(g, &want);
}

/// Mirror the pods NetworkPolicy isolates (the state's record) into the guard: at start and
/// after lost events; otherwise the guard follows the events ([`isolations`]).
fn sync_guard(guard: &mut Option<Guard>, state: &Firewall) {
    let Some(g) = guard else { return };
    let want: BTreeSet<(NpDir, IpAddr)> = match state.netpol_elems() {
        Ok(elems) => elems
            .iter()
            .filter_map(|e| match e {
                Elem::NpIsolated { dir, pod } => Some((*dir, *pod)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            log::warn!("NetworkPolicy guard: cannot read the record: {e}");
            return;
        }
    };
    hold(g, &want);
}

/// Make the guard hold `want`, logging what changed.
fn hold(g: &mut Guard, want: &BTreeSet<(NpDir, IpAddr)>) {
    match g.sync(want) {
        Ok((0, 0)) => {}
        Ok((a, r)) => log::debug!("NetworkPolicy guard: +{a} -{r} isolated address(es)"),
        Err(e) => log::error!("NetworkPolicy guard: {e}"),
    }
}

/// Restore the table from the state of this namespace, logging what happened.
fn repair(reason: &str) {
    let t = Instant::now();
    let fw = match Firewall::open() {
        Ok(fw) => fw,
        Err(e) => {
            log::error!("repair ({reason}): cannot open the state: {e}");
            return;
        }
    };
    if fw.state_is_empty().unwrap_or(false) {
        log::info!("{reason}: no plugin state here, nothing to restore");
        return;
    }
    match fw.reconcile() {
        Ok(n) => log::info!(
            "repaired table inet cnirs: {reason}; restored the skeleton and {n} element(s) in {:?}",
            t.elapsed()
        ),
        Err(e) => log::error!("repair failed ({reason}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(msg: NftMsg, table: &str) -> NftEvent {
        NftEvent {
            msg,
            family: NFPROTO_INET,
            table: Some(table.to_owned()),
            gen_id: None,
            proc_pid: None,
            proc_name: None,
            set: None,
            keys: Vec::new(),
        }
    }

    fn gen(id: u32) -> NftEvent {
        NftEvent {
            msg: NftMsg::NewGen,
            family: 0,
            table: None,
            gen_id: Some(id),
            proc_pid: Some(42),
            proc_name: Some("nft".into()),
            set: None,
            keys: Vec::new(),
        }
    }

    #[test]
    fn the_guard_follows_the_isolation_sets_elements_only() {
        let elem = |msg, set: &str, keys: Vec<Vec<u8>>| NftEvent {
            set: Some(set.to_owned()),
            keys,
            ..ev(msg, "cnirs")
        };
        let v4: IpAddr = "10.9.0.2".parse().unwrap();
        let v6: IpAddr = "fd00:9::2".parse().unwrap();
        let v6_key = match v6 {
            IpAddr::V6(a) => a.octets().to_vec(),
            IpAddr::V4(_) => unreachable!(),
        };
        assert_eq!(
            isolations(&elem(
                NftMsg::NewSetElem,
                "np_iiso4",
                vec![vec![10, 9, 0, 2]]
            )),
            [(true, (NpDir::Ingress, v4))]
        );
        assert_eq!(
            isolations(&elem(NftMsg::DelSetElem, "np_eiso6", vec![v6_key])),
            [(false, (NpDir::Egress, v6))]
        );
        // Other sets (a pod's allowed peers, published ports) and other messages: nothing.
        assert!(isolations(&elem(
            NftMsg::NewSetElem,
            "np_in_pp4",
            vec![vec![10, 9, 0, 2]]
        ))
        .is_empty());
        assert!(isolations(&elem(
            NftMsg::NewSetElem,
            "np_iiso6",
            vec![vec![10, 9, 0, 2]]
        ))
        .is_empty());
        assert!(isolations(&ev(NftMsg::DelTable, "cnirs")).is_empty());
    }

    #[test]
    fn a_flush_ruleset_asks_for_a_repair_naming_what_went() {
        let mut t = Tracker::default();
        assert!(t.feed(&ev(NftMsg::DelRule, "cnirs")).is_none());
        assert!(t.feed(&ev(NftMsg::DelChain, "cnirs")).is_none());
        assert!(t.feed(&ev(NftMsg::DelTable, "cnirs")).is_none());
        let r = t.feed(&gen(5)).unwrap();
        assert!(r.contains("table was deleted"), "{r}");
        assert!(r.contains("1 chain(s)"), "{r}");
        assert!(r.contains("nft[42]"), "{r}");
        // The transaction state is reset after its NEWGEN.
        assert!(t.feed(&gen(6)).is_none());
    }

    #[test]
    fn skeleton_reload_and_element_deletes_and_other_tables_are_not_repairs() {
        let mut t = Tracker::default();
        for _ in 0..3 {
            t.feed(&ev(NftMsg::DelRule, "cnirs"));
            t.feed(&ev(NftMsg::NewRule, "cnirs"));
        }
        t.feed(&ev(NftMsg::DelSetElem, "cnirs"));
        t.feed(&ev(NftMsg::DelTable, "filter"));
        assert!(t.feed(&gen(7)).is_none());
        t.feed(&ev(NftMsg::DelRule, "cnirs"));
        assert!(t.feed(&gen(8)).unwrap().contains("1 rule(s) deleted"));
    }

    #[test]
    fn our_own_repair_is_not_a_reason_for_another() {
        // The skeleton on an existing table: each chain flushed and its rules added again.
        let mut t = Tracker::default();
        for _ in 0..18 {
            t.feed(&ev(NftMsg::DelRule, "cnirs"));
        }
        for _ in 0..19 {
            t.feed(&ev(NftMsg::NewRule, "cnirs"));
        }
        t.feed(&ev(NftMsg::NewSetElem, "cnirs"));
        assert!(t.feed(&gen(12)).is_none());
    }
}
