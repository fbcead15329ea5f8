//! The node agent of the overlay (`cnirs agent`, standalone `cnirs-agent`).
//!
//! ```text
//! cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]
//!             [--etcd-cafile F --etcd-certfile F --etcd-keyfile F]
//! ```
//!
//! Runs in the foreground, in the host's network namespace:
//! - registers `<prefix>/hosts/<node>` = `{"vtep": ...}` (the underlay's first IPv4 address,
//!   or its first global IPv6 address when it has no IPv4 one) on a 30 s lease renewed every
//!   10 s (a dead host's key expires; a lost lease is granted and the key created again), only
//!   if absent or already this VTEP's (a create-if-absent txn: two agents starting at once
//!   under one name cannot both win). A name held by another VTEP stops the agent, at start or
//!   later (exit 1, naming the node and both VTEPs): it never overwrites another host;
//! - keeps the overlay gate of `table inet cnirs` ([`nftplan::Firewall::set_vteps`]): VXLAN
//!   from a source that is not a registered host's VTEP is dropped before decapsulation. A host
//!   that leaves is out as soon as its key goes (watch event), the set is changed in one
//!   transaction (never empty for the members that stay), and it stays in the kernel when the
//!   agent stops;
//! - lists `hosts/`, `networks/` and `blocks/` and watches `blocks/` and `hosts/` (one stream:
//!   never a pod, never an address), and keeps, on every local overlay VXLAN device
//!   (`cnirsvx<vni>`), what the cluster asks for: per remote host with blocks in the network,
//!   one FDB entry, one permanent neighbour and the routes of its blocks
//!   ([`reconcile::desired`], pure). An event changes only the entries of the host it is
//!   about, against what was applied there last ([`reconcile::Programmer::nodes`]); a device
//!   created by a network's first pod is programmed as soon as it appears (link
//!   notifications), and everything is re-checked against the kernel every 2 s
//!   ([`reconcile::Programmer::full`], level-triggered: entries someone removed come back,
//!   stale ones go);
//! - when the watch breaks (an etcd member died, a compaction), lists again and watches again
//!   from the new revision, through the client's endpoint failover, backing off with jitter
//!   so a thousand agents restarted together do not hammer etcd in step;
//! - SIGTERM/SIGINT: revokes its lease (the host leaves the cluster at once) and exits 0. The
//!   kernel entries stay: the data plane keeps working while the agent restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use cluster::{
    node_state::{self, NodeState},
    peers::{Change, View},
    schema::{self, HostRecord},
};
use etcd::{Client, EventKind, Kv, Op, Options};
use netops::{Kernel, VXLAN_PORT};

mod cli;
pub mod dataplane;
pub mod reconcile;
mod register;

pub use cli::{cli, parse_args, parse_args_env, Args, USAGE};
pub use dataplane::{Dataplane, FakeKernel, KernelDataplane};
use register::Registration;
pub use register::{claim, taken_message, Claim};

/// Lease TTL of `hosts/<node>`; renewed every [`RENEW`] (a third of it: two renewals may be
/// lost before the host drops out).
pub const LEASE_TTL_S: i64 = 30;
pub const RENEW: Duration = Duration::from_secs(10);
/// Full re-check against the kernel, even with no news from etcd.
pub const RESYNC: Duration = Duration::from_secs(2);

/// How often the agent looks at its devices and the kernel ([`run_node_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The full re-check against the kernel ([`RESYNC`]).
    pub resync: Duration,
    /// The longest wait for news (etcd events, a device created) between two looks.
    pub poll: Duration,
    /// After news arrives, how long more news is gathered before the kernel is programmed: a
    /// burst (a cluster's registrations, a fill's first block claims, 1,000 events at
    /// N=1,000) is one pass, not one per event (each pass re-checks the gate over every host).
    pub coalesce: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            resync: RESYNC,
            poll: Duration::from_millis(100),
            coalesce: Duration::from_millis(50),
        }
    }
}

/// Whether to read `networks/` again with `unknown` devices of networks not listed
/// (`at_last_read` at the last read, `since` ago): at once for a device more (a network's
/// first pod on this host: its remote pods are unreachable until its entries are programmed,
/// up to a resync period later otherwise), else at most once a resync period (a device whose
/// network is never registered).
fn read_networks_now(
    unknown: usize,
    at_last_read: usize,
    since: Duration,
    resync: Duration,
) -> bool {
    unknown > 0 && (unknown > at_last_read || since >= resync)
}

/// What a batch of news asks the agent to redo.
#[derive(Debug, Default)]
struct Dirty {
    /// Everything against the kernel (a network changed, a list, a device came or went).
    all: bool,
    /// Only these hosts' entries.
    nodes: BTreeSet<String>,
    /// The gate's members may have changed.
    hosts: bool,
}

impl Dirty {
    fn note(&mut self, c: Change, host_key: bool) {
        match c {
            Change::None => {}
            Change::All => self.all = true,
            Change::Node(n) => {
                self.nodes.insert(n);
                self.hosts |= host_key;
            }
        }
    }

    fn any(&self) -> bool {
        self.all || self.hosts || !self.nodes.is_empty()
    }
}

enum Msg {
    /// A full list (hosts, networks, blocks) at a revision.
    Snapshot(Vec<Kv>),
    Put(Kv),
    Delete(Kv),
}

/// What one agent did, counted as it goes (read by the scale harness).
#[derive(Debug, Default)]
pub struct Stats {
    /// Full lists (the first, and one after every broken watch).
    pub lists: AtomicU64,
    /// Watch events received (puts and deletes).
    pub events: AtomicU64,
    /// Passes of [`reconcile::reconcile`].
    pub reconciles: AtomicU64,
    /// Kernel entries (FDB, neighbours, routes) added and removed.
    pub added: AtomicU64,
    pub removed: AtomicU64,
}

/// A retry delay that doubles from 0.5 s to 30 s, each wait drawn at random between half and
/// all of it, so agents that failed together do not come back together.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(seed: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut h = u64::from(nanos) ^ 0x9e37_79b9_7f4a_7c15;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            next: Duration::from_millis(500),
            seed: h | 1,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }

    fn wait(&mut self, stop: &AtomicBool) {
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let d = self.next.mul_f64(frac);
        self.next = (self.next * 2).min(Duration::from_secs(30));
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
    }
}

/// The agent's keys: `hosts/`, `networks/`, `blocks/`, read together (one revision).
fn list(client: &Client, prefix: &str) -> Result<(Vec<Kv>, i64), etcd::EtcdError> {
    let r = client.txn(
        &[],
        &[
            Op::get_prefix(schema::hosts_prefix(prefix)),
            Op::get_prefix(schema::networks_prefix(prefix)),
            Op::get_prefix(schema::blocks_prefix(prefix)),
        ],
        &[],
    )?;
    let kvs = r
        .responses
        .into_iter()
        .flat_map(|o| match o {
            etcd::OpResponse::Get(kvs) => kvs,
            _ => Vec::new(),
        })
        .collect();
    Ok((kvs, r.revision))
}

/// List, then watch `blocks/` through `hosts/` (adjacent key ranges: one stream) forever,
/// listing again whenever the watch breaks. `networks/` is read with every list (a network's
/// record is written before its first device exists, and never changes).
fn watcher(
    client: Client,
    prefix: String,
    node: String,
    tx: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let from = schema::blocks_prefix(&prefix).into_bytes();
    let to = etcd::prefix_end(schema::hosts_prefix(&prefix).as_bytes());
    let mut backoff = Backoff::new(&node);
    while !stop.load(Ordering::SeqCst) {
        let (kvs, rev) = match list(&client, &prefix) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("list {prefix}/hosts, networks, blocks: {e}");
                backoff.wait(&stop);
                continue;
            }
        };
        if tx.send(Msg::Snapshot(kvs)).is_err() {
            return;
        }
        let watch = match client.watch_range(&from, &to, rev + 1) {
            Ok(w) => w,
            Err(e) => {
                log::warn!("watch {prefix}/blocks, hosts: {e}");
                backoff.wait(&stop);
                continue;
            }
        };
        backoff.reset();
        for ev in watch {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let msg = match ev {
                Ok(ev) => match ev.kind {
                    EventKind::Put => Msg::Put(ev.kv),
                    EventKind::Delete => Msg::Delete(ev.kv),
                },
                Err(e) => {
                    log::warn!("watch {prefix}/blocks, hosts broke ({e}): listing again");
                    break;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        backoff.wait(&stop);
    }
}

/// Keep the overlay gate equal to the registered hosts (logging changes).
fn gate(dataplane: &dyn Dataplane, view: &View) {
    let members: BTreeSet<IpAddr> = view.hosts.values().copied().collect();
    match dataplane.set_gate(&BTreeSet::from([VXLAN_PORT]), &members) {
        Ok((0, 0)) => {}
        Ok((added, removed)) => log::info!(
            "vxlan gate: {added} added, {removed} removed; members {:?}",
            view.hosts
        ),
        Err(e) => log::warn!("vxlan gate (table inet cnirs): {e}"),
    }
}

/// Who this host is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `hosts/<name>`.
    pub name: String,
    /// Where the name came from (`--node-name`, `CNIRS_NODE_NAME`, the hostname), for messages.
    pub source: &'static str,
    /// The VTEP: the underlay address other hosts send this host's VXLAN traffic to.
    pub vtep: IpAddr,
    /// The etcd prefix, without a trailing `/`.
    pub prefix: String,
    /// Where to keep the file for this host's plugins ([`cluster::node_state`]: the lease's
    /// last renewal, the networks, this node's blocks); `None`: no file (simulated hosts).
    pub state_dir: Option<std::path::PathBuf>,
}

/// What the agent's file says now (`None` before the lease was renewed once).
fn node_state(node: &Node, view: &View, reg: &Registration) -> Option<NodeState> {
    let renewed = reg.keeper.as_ref().filter(|k| !k.lost())?.renewed()?;
    let age = u64::try_from(renewed.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut blocks: BTreeMap<String, BTreeSet<ipnetwork::IpNetwork>> = BTreeMap::new();
    for (net, block) in view.blocks_of(&node.name) {
        blocks.entry(net.clone()).or_default().insert(*block);
    }
    Some(NodeState {
        node: node.name.clone(),
        vtep: Some(node.vtep),
        renewed_ms: node_state::boottime_ms().saturating_sub(age),
        networks: view.networks.clone(),
        blocks,
    })
}

/// Keep the agent's file at `now` (written when it changed, removed when `now` is `None`).
fn publish(dir: Option<&std::path::Path>, now: Option<NodeState>, last: &mut Option<NodeState>) {
    let Some(dir) = dir else { return };
    if now == *last {
        return;
    }
    let file = node_state::state_file(dir);
    let r = match &now {
        Some(s) => node_state::store(&file, s),
        None => node_state::remove(&file),
    };
    match r {
        Ok(()) => *last = now,
        Err(e) => log::warn!("{}: {e}", file.display()),
    }
}

/// Run the agent until `stop` is set, on this host's kernel: the VTEP is the first IPv4
/// address of `--underlay`, or its first global IPv6 address when it has no IPv4 one.
pub fn run(args: &Args, stop: &AtomicBool) -> Result<(), String> {
    let kernel = Kernel::new().map_err(|e| e.to_string())?;
    let host = kernel.host();
    let ul = host
        .link(&args.underlay)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no interface {} here", args.underlay))?;
    let v4 = host.first_ipv4(&ul).map_err(|e| e.to_string())?;
    let me: IpAddr = match v4 {
        Some(v) => v.into(),
        None => host
            .first_global_ipv6(&ul)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} has neither an IPv4 nor a global IPv6 address (the VTEP)",
                    args.underlay
                )
            })?
            .into(),
    };
    // TLS files read and checked before anything is registered or programmed.
    let tls = etcd::Tls::for_endpoints(&args.endpoints, &args.tls).map_err(|e| match e.file() {
        Some(f) => format!("{} (or ${}): {e}", f.flag(), f.env()),
        None => format!("--etcd-endpoints: {e}"),
    })?;
    // A watch that hears nothing for 10 s is reopened (from the revision it reached): a member
    // that vanished without closing the connection cannot leave the agent deaf.
    let client = Client::with_options(
        &args.endpoints,
        Options {
            watch_idle_timeout: Some(Duration::from_secs(10)),
            tls,
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let fw = nftplan::Firewall::open().map_err(|e| format!("nftables state: {e}"))?;
    log::info!(
        "node {} vtep {me} ({}), etcd {:?} prefix {}",
        args.node,
        args.underlay,
        args.endpoints,
        args.prefix
    );
    let node = Node {
        name: args.node.clone(),
        source: args.node_source,
        vtep: me,
        prefix: args.prefix.clone(),
        state_dir: node_state::node_dir(&node_state::run_root(), &args.prefix, &args.node),
    };
    let dataplane = KernelDataplane::new(host, fw);
    run_node(&client, &node, &dataplane, stop, &Stats::default())
}

/// The agent's loop until `stop` is set: claim `hosts/<node>` on a lease (Err at once when
/// another host holds the name), list and watch the cluster's hosts, networks and blocks, keep
/// `dataplane`'s VXLAN devices at [`reconcile::desired`] and its gate at the registered VTEPs;
/// on stop, revoke the lease. Spawns a watch thread (and the lease's keep-alive thread); both
/// end with it.
pub fn run_node(
    client: &Client,
    node: &Node,
    dataplane: &dyn Dataplane,
    stop: &AtomicBool,
    stats: &Stats,
) -> Result<(), String> {
    run_node_with(client, node, dataplane, stop, stats, Timing::default())
}

/// [`run_node`] with its [`Timing`] (the scale harness runs a thousand agents on two cores).
pub fn run_node_with(
    client: &Client,
    node: &Node,
    dataplane: &dyn Dataplane,
    stop: &AtomicBool,
    stats: &Stats,
    timing: Timing,
) -> Result<(), String> {
    let me = node.vtep;
    let key = schema::host_key(&node.prefix, &node.name);
    let value = serde_json::to_vec(&HostRecord { vtep: me }).map_err(|e| e.to_string())?;
    // The name first: an agent whose node name another host holds stops here, having
    // changed nothing (no watch, no entry, no gate).
    let mut reg = Registration { keeper: None };
    if let Err(e) = reg.ensure(client, node, &value, None, me) {
        reg.revoke(client);
        return Err(e);
    }
    // The table once from the state (skeleton and every recorded element, the gate
    // included, in one transaction, as `cnirs reconcile` does): a gate rule deleted by hand
    // while no agent ran comes back, with no moment where anything recorded is missing.
    if let Err(e) = dataplane.restore() {
        log::warn!("reconcile table inet cnirs: {e}");
    }
    let (tx, rx) = mpsc::channel();
    let watcher_stop = Arc::new(AtomicBool::new(false));
    {
        let (c, p, n, s) = (
            client.clone(),
            node.prefix.clone(),
            node.name.clone(),
            watcher_stop.clone(),
        );
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || watcher(c, p, n, tx, s))
            .map_err(|e| format!("spawn watcher: {e}"))?;
    }
    let mut view = View::default();
    let mut synced = false;
    let mut last_sync = Instant::now();
    let mut last_networks = Instant::now();
    // Devices of networks not listed, now and at the last read of networks/.
    let (mut unknown, mut unknown_read) = (0, 0);
    let mut programmer = reconcile::Programmer::default();
    let mut dirty = Dirty::default();
    // What the agent's file says (a file left by an earlier run is replaced or removed).
    let mut published = Some(NodeState::default());
    while !stop.load(Ordering::SeqCst) {
        match rx.recv_timeout(timing.poll) {
            Ok(m) => {
                apply(&mut view, &node.prefix, m, &mut synced, stats, &mut dirty);
                // Gather the rest of a burst for `coalesce`, then whatever is queued.
                let until = Instant::now() + timing.coalesce;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    let next = if left.is_zero() {
                        rx.try_recv().ok()
                    } else {
                        rx.recv_timeout(left).ok()
                    };
                    let Some(m) = next else { break };
                    apply(&mut view, &node.prefix, m, &mut synced, stats, &mut dirty);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the watch thread ended".into());
            }
        }
        if !synced {
            continue; // nothing programmed before the first full list
        }
        // A device created by a network's first pod (or gone with its last).
        dirty.all |= dataplane.links_changed();
        // A device of a network this agent has not seen listed: read networks/ again (its
        // record is written before its first device).
        if read_networks_now(
            unknown,
            unknown_read,
            last_networks.elapsed(),
            timing.resync,
        ) {
            (last_networks, unknown_read) = (Instant::now(), unknown);
            match client.range_prefix(schema::networks_prefix(&node.prefix)) {
                Ok((kvs, _)) => {
                    for kv in kvs {
                        let c = view.apply(&node.prefix, &kv.key_str(), Some(&kv.value));
                        dirty.note(c, false);
                    }
                }
                Err(e) => log::warn!("list networks: {e}"),
            }
        }
        let resync = last_sync.elapsed() >= timing.resync;
        if !dirty.any() && !resync {
            continue;
        }
        if let Err(e) = reg.ensure(client, node, &value, Some(&view), me) {
            // Lost to another host: stop programming for a name that is not ours.
            publish(node.state_dir.as_deref(), None, &mut published);
            watcher_stop.store(true, Ordering::SeqCst);
            reg.revoke(client);
            return Err(e);
        }
        if node.state_dir.is_some() {
            let now = node_state(node, &view, &reg);
            publish(node.state_dir.as_deref(), now, &mut published);
        }
        let c = if dirty.all || resync {
            let c = programmer.full(dataplane, &view, &node.name, me);
            unknown = c.unknown_vnis;
            unknown_read = unknown_read.min(unknown);
            last_sync = Instant::now();
            c
        } else {
            programmer.nodes(dataplane, &view, me, &dirty.nodes)
        };
        stats.reconciles.fetch_add(1, Ordering::Relaxed);
        stats.added.fetch_add(c.added as u64, Ordering::Relaxed);
        stats.removed.fetch_add(c.removed as u64, Ordering::Relaxed);
        if dirty.hosts || dirty.all || resync {
            gate(dataplane, &view);
        }
        dirty = Dirty::default();
    }
    log::info!("stopping: revoking the lease of {key}");
    // The file first: no ADD takes it for a live lease once the lease is being revoked.
    publish(node.state_dir.as_deref(), None, &mut published);
    watcher_stop.store(true, Ordering::SeqCst);
    reg.revoke(client);
    Ok(())
}

/// Apply one message to the view, noting what it asks to redo.
fn apply(
    view: &mut View,
    prefix: &str,
    m: Msg,
    synced: &mut bool,
    stats: &Stats,
    dirty: &mut Dirty,
) {
    let is_host = |k: &str| matches!(schema::classify(prefix, k), schema::Key::Host { .. });
    match m {
        Msg::Snapshot(kvs) => {
            stats.lists.fetch_add(1, Ordering::Relaxed);
            let mut v = View::default();
            for kv in &kvs {
                v.apply(prefix, &kv.key_str(), Some(&kv.value));
            }
            if *view != v {
                dirty.all = true;
            }
            *view = v;
            *synced = true;
        }
        Msg::Put(kv) => {
            stats.events.fetch_add(1, Ordering::Relaxed);
            let k = kv.key_str();
            let c = view.apply(prefix, &k, Some(&kv.value));
            dirty.note(c, is_host(&k));
        }
        Msg::Delete(kv) => {
            stats.events.fetch_add(1, Ordering::Relaxed);
            let k = kv.key_str();
            let c = view.apply(prefix, &k, None);
            dirty.note(c, is_host(&k));
        }
    }
}

#[cfg(test)]
mod tests;
