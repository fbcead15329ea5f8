//! The node agent of the overlay (`cnirs agent`, standalone `cnirs-agent`).
//!
//! ```text
//! cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]
//!             [--etcd-cafile F --etcd-certfile F --etcd-keyfile F]
//! ```
//!
//! Runs in the foreground, in the host's network namespace:
//! - registers `<prefix>/hosts/<node>` = `{"vtep": <underlay IPv4>}` on a 10 s lease, renewed
//!   every 3 s (a dead host's key expires; a lost lease is granted and the key created again),
//!   only if absent or already this VTEP's (a create-if-absent txn: two agents starting at once
//!   under one name cannot both win). A name held by another VTEP stops the agent, at start
//!   or later (exit 1, naming the node and both VTEPs): it never overwrites another host;
//! - keeps the overlay gate of `table inet cnirs` ([`nftplan::Firewall::set_vteps`]): VXLAN
//!   from a source that is not a registered host's VTEP is dropped before decapsulation. A host
//!   that leaves is out as soon as its key goes (watch event), the set is changed in one
//!   transaction (never empty for the members that stay), and it stays in the kernel when the
//!   agent stops;
//! - lists and watches `<prefix>/` (hosts, pods, networks) and keeps, on every local overlay
//!   VXLAN device (`cnirsvx<vni>`), exactly the remote FDB entries the cluster asks for: one
//!   all-zero flood entry per remote VTEP, one `pod MAC -> VTEP` entry per remote pod
//!   ([`desired_fdb`], pure). Changes are applied as they arrive (well within a second) and
//!   everything is re-checked against the kernel every 2 s (level-triggered: entries someone
//!   removed come back, stale ones go);
//! - when the watch breaks (an etcd member died, a compaction), lists again and watches again
//!   from the new revision, through the client's endpoint failover;
//! - SIGTERM/SIGINT: revokes its lease (the host leaves the cluster at once) and exits 0. The
//!   FDB entries stay: the data plane keeps working while the agent restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use cluster::{
    schema::{self, HostRecord, Key, NetworkRecord, PodRecord},
    vni_of_name,
};
use etcd::{Client, Compare, CompareOp, EventKind, Kv, LeaseKeeper, Op, OpResponse, Options};
use netops::{FdbEntry, Kernel, MacAddr, FLOOD_MAC, VXLAN_PORT};

pub mod dataplane;
pub use dataplane::{Dataplane, FakeKernel, KernelDataplane};

pub const USAGE: &str = "usage: cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]
                   [--etcd-cafile FILE --etcd-certfile FILE --etcd-keyfile FILE]

The overlay's node agent: registers this host (its VTEP, the IPv4 address of IFACE) in etcd
under <prefix>/hosts/<node>, programs the remote FDB entries of every overlay network on
this host from <prefix>/hosts/ and <prefix>/pods/, and admits VXLAN only from registered
hosts (sets vtep4/vtep6 of table inet cnirs). Foreground; SIGTERM stops it.

  --etcd-endpoints  comma-separated http://host:port or https://host:port list (failover)
  --underlay        the interface whose IPv4 address is this host's VTEP
  --node-name       default: $CNIRS_NODE_NAME, else the hostname; must be unique in the
                    cluster (a name registered by another VTEP stops the agent)
  --etcd-prefix     default /cnirs (the conflists' etcdPrefix)
  --etcd-cafile     CA that verifies the etcd members (required for https://);
                    default $CNIRS_ETCD_CAFILE
  --etcd-certfile   client certificate (etcd --client-cert-auth); default $CNIRS_ETCD_CERTFILE
  --etcd-keyfile    its private key; default $CNIRS_ETCD_KEYFILE

CNIRS_LOG=error|warn|info|debug sets the log level (default info).
Exit status: 0 on SIGTERM/SIGINT, 1 on failure (node name taken, etcd TLS refused, ...),
2 on a usage error.
";

/// Lease TTL of `hosts/<node>`; renewed every [`RENEW`].
pub const LEASE_TTL_S: i64 = 10;
pub const RENEW: Duration = Duration::from_secs(3);
/// Full re-check against the kernel, even with no news from etcd.
pub const RESYNC: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub endpoints: Vec<String>,
    pub underlay: String,
    pub node: String,
    /// Where the node name came from: `--node-name`, `CNIRS_NODE_NAME` or `the hostname`.
    pub node_source: &'static str,
    pub prefix: String,
    /// TLS files from the flags or their environment variables (read at start).
    pub tls: etcd::TlsPaths,
}

/// `None` for `--help`. Defaults from the process environment.
pub fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    parse_args_env(args, &|k| std::env::var(k).ok())
}

/// [`parse_args`] with the environment injected (`CNIRS_NODE_NAME`, `CNIRS_ETCD_*FILE`).
pub fn parse_args_env(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Args>, String> {
    use etcd::TlsFile;
    let (mut endpoints, mut underlay, mut node, mut prefix) = (None, None, None, None);
    let mut files: [Option<String>; 3] = [None, None, None];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--etcd-endpoints" => endpoints = Some(value()?),
            "--underlay" => underlay = Some(value()?),
            "--node-name" => node = Some(value()?),
            "--etcd-prefix" => prefix = Some(value()?),
            "--etcd-cafile" => files[0] = Some(value()?),
            "--etcd-certfile" => files[1] = Some(value()?),
            "--etcd-keyfile" => files[2] = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut tls = etcd::TlsPaths::default();
    for (i, which) in [TlsFile::Ca, TlsFile::Cert, TlsFile::Key]
        .into_iter()
        .enumerate()
    {
        let v = files[i]
            .take()
            .or_else(|| env(which.env()))
            .filter(|v| !v.is_empty());
        let slot = match which {
            TlsFile::Ca => &mut tls.ca,
            TlsFile::Cert => &mut tls.cert,
            TlsFile::Key => &mut tls.key,
        };
        *slot = v.map(std::path::PathBuf::from);
    }
    let endpoints: Vec<String> = endpoints
        .ok_or("--etcd-endpoints is required")?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--etcd-endpoints is empty".into());
    }
    let underlay = underlay.ok_or("--underlay is required")?;
    netops::validate_ifname(&underlay).map_err(|e| format!("--underlay: {e}"))?;
    let (node, node_source) = match node {
        Some(n) => (n, "--node-name"),
        None => match env("CNIRS_NODE_NAME").filter(|n| !n.is_empty()) {
            Some(n) => (n, "CNIRS_NODE_NAME"),
            None => (schema::node().name, "the hostname"),
        },
    };
    if node.is_empty() || node.contains('/') {
        return Err(format!(
            "node name {node:?} (from {node_source}): empty or contains '/'"
        ));
    }
    let prefix = prefix.unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(format!("--etcd-prefix {prefix:?} does not start with /"));
    }
    Ok(Some(Args {
        endpoints,
        underlay,
        node,
        node_source,
        prefix: prefix.trim_end_matches('/').to_string(),
        tls,
    }))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signals() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(s, &sa) }.map_err(|e| format!("sigaction {s}: {e}"))?;
    }
    Ok(())
}

/// The command: parse, run until SIGTERM, exit code.
pub fn cli(args: &[String]) -> ExitCode {
    cni_core::logging::init("cnirs-agent");
    if std::env::var_os("CNIRS_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cnirs-agent: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_signals() {
        log::error!("{e}");
        return ExitCode::from(1);
    }
    match run(&args, &STOP) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The cluster as the agent sees it, rebuilt from keys and values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// node -> VTEP
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// network -> VNI
    pub networks: BTreeMap<String, u32>,
    /// (network, ip) -> pod
    pub pods: BTreeMap<(String, String), PodRecord>,
}

impl View {
    /// Apply one key: `Some(value)` = put, `None` = delete. Unreadable values count as absent.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) {
        match schema::classify(prefix, key) {
            Key::Host { node } => {
                match value.and_then(|v| serde_json::from_slice::<HostRecord>(v).ok()) {
                    Some(h) => self.hosts.insert(node.to_string(), h.vtep),
                    None => self.hosts.remove(node),
                };
            }
            Key::Network { network } => {
                match value.and_then(|v| serde_json::from_slice::<NetworkRecord>(v).ok()) {
                    Some(n) => self.networks.insert(network.to_string(), n.vni),
                    None => self.networks.remove(network),
                };
            }
            Key::Pod { network, ip } => {
                let k = (network.to_string(), ip.to_string());
                match value.and_then(|v| serde_json::from_slice::<PodRecord>(v).ok()) {
                    Some(p) => self.pods.insert(k, p),
                    None => self.pods.remove(&k),
                };
            }
            Key::Other => {}
        }
    }

    pub fn from_kvs(prefix: &str, kvs: &[Kv]) -> Self {
        let mut v = View::default();
        for kv in kvs {
            v.apply(prefix, &kv.key_str(), Some(&kv.value));
        }
        v
    }
}

/// The remote FDB entries the VXLAN device of `vni` on the host whose VTEP is `me` should
/// have: a flood entry per other host, a `MAC -> VTEP` entry per pod on another host of a
/// network with that VNI. Pure.
pub fn desired_fdb(view: &View, me: Ipv4Addr, vni: u32) -> BTreeSet<FdbEntry> {
    let mut out = BTreeSet::new();
    for vtep in view.hosts.values().filter(|v| **v != me) {
        out.insert(FdbEntry {
            mac: FLOOD_MAC.0,
            dst: (*vtep).into(),
        });
    }
    for ((network, _), pod) in &view.pods {
        if pod.vtep == me || view.networks.get(network) != Some(&vni) {
            continue;
        }
        if let Ok(mac) = pod.mac.parse::<MacAddr>() {
            out.insert(FdbEntry {
                mac: mac.0,
                dst: pod.vtep.into(),
            });
        }
    }
    out
}

/// Bring every local overlay VXLAN device's remote entries to `desired_fdb`. Returns
/// (added, removed).
pub fn reconcile(host: &dyn Dataplane, view: &View, me: Ipv4Addr) -> (usize, usize) {
    let (mut added, mut removed) = (0, 0);
    let devices = match host.vxlans() {
        Ok(d) => d,
        Err(e) => {
            log::warn!("list vxlan devices: {e}");
            return (0, 0);
        }
    };
    for dev in devices {
        let Some(vni) = vni_of_name(&dev.link.name) else {
            continue;
        };
        if dev.local != Some(me.into()) {
            continue;
        }
        let want = desired_fdb(view, me, vni);
        let have: BTreeSet<FdbEntry> = match host.fdb_entries(&dev.link) {
            Ok(h) => h.into_iter().collect(),
            Err(e) => {
                log::warn!("fdb of {}: {e}", dev.link.name);
                continue;
            }
        };
        for e in want.difference(&have) {
            match host.fdb_add(&dev.link, e) {
                Ok(()) => added += 1,
                Err(err) => log::warn!("{err}"),
            }
        }
        for e in have.difference(&want) {
            match host.fdb_del(&dev.link, e) {
                Ok(_) => removed += 1,
                Err(err) => log::warn!("{err}"),
            }
        }
    }
    if added + removed > 0 {
        log::info!("fdb: {added} added, {removed} removed");
    }
    (added, removed)
}

enum Msg {
    Snapshot(Vec<Kv>),
    Put(Kv),
    Delete(Kv),
}

/// What one agent did, counted as it goes (read by the scale harness).
#[derive(Debug, Default)]
pub struct Stats {
    /// Full lists of `<prefix>/` (the first, and one after every broken watch).
    pub lists: AtomicU64,
    /// Watch events received (puts and deletes).
    pub events: AtomicU64,
    /// Passes of [`reconcile`].
    pub reconciles: AtomicU64,
    /// FDB entries added and removed.
    pub fdb_added: AtomicU64,
    pub fdb_removed: AtomicU64,
}

/// List + watch `<prefix>/` forever, re-listing whenever the watch breaks.
fn watcher(client: Client, prefix: String, tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    let p = format!("{prefix}/");
    while !stop.load(Ordering::SeqCst) {
        let (kvs, rev) = match client.range_prefix(&p) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("list {p}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if tx.send(Msg::Snapshot(kvs)).is_err() {
            return;
        }
        let watch = match client.watch_prefix(&p, rev + 1) {
            Ok(w) => w,
            Err(e) => {
                log::warn!("watch {p}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        for ev in watch {
            let msg = match ev {
                Ok(ev) => match ev.kind {
                    EventKind::Put => Msg::Put(ev.kv),
                    EventKind::Delete => Msg::Delete(ev.kv),
                },
                Err(e) => {
                    log::warn!("watch {p} broke ({e}): listing again");
                    break;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What [`claim`] found at `hosts/<node>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours (created now, or already this VTEP's and now on our lease).
    Ours,
    /// Another host holds the name: its VTEP (None when its value is unreadable).
    Taken(Option<Ipv4Addr>),
}

/// Create `key` = `value` on `lease` if absent; if it holds this VTEP already (our own earlier
/// registration: a restart within the lease, or a lease of ours that expired), move it to
/// `lease` with a compare on its revision; never touch a key naming another VTEP. Atomic: of
/// two agents racing for one name, one wins and the other sees [`Claim::Taken`].
pub fn claim(
    client: &Client,
    key: &str,
    value: &[u8],
    lease: i64,
    me: Ipv4Addr,
) -> Result<Claim, etcd::EtcdError> {
    let mut compare = Compare::absent(key);
    for _ in 0..5 {
        let r = client.txn(
            std::slice::from_ref(&compare),
            &[Op::put(key, value, Some(lease))],
            &[Op::get(key)],
        )?;
        if r.succeeded {
            return Ok(Claim::Ours);
        }
        let kv = r.responses.into_iter().find_map(|op| match op {
            OpResponse::Get(kvs) => kvs.into_iter().next(),
            _ => None,
        });
        let Some(kv) = kv else {
            compare = Compare::absent(key); // deleted in between: create it
            continue;
        };
        match serde_json::from_slice::<HostRecord>(&kv.value) {
            Ok(h) if h.vtep == me => {
                if kv.lease == lease && kv.value == value {
                    return Ok(Claim::Ours);
                }
                compare = Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision);
            }
            Ok(h) => return Ok(Claim::Taken(Some(h.vtep))),
            Err(_) => return Ok(Claim::Taken(None)),
        }
    }
    // Changed under us five times in a row: someone else is writing it.
    Ok(Claim::Taken(None))
}

/// The message for a node name held by another host.
pub fn taken_message(
    key: &str,
    node: &str,
    source: &str,
    theirs: Option<Ipv4Addr>,
    me: Ipv4Addr,
) -> String {
    let theirs = theirs.map_or_else(
        || "an unreadable value".to_string(),
        |v| format!("VTEP {v}"),
    );
    format!(
        "node name {node:?} (from {source}) is held by another host: {key} has {theirs}, this \
         host's VTEP is {me}. Two hosts cannot share a node name: give this one its own with \
         --node-name (or CNIRS_NODE_NAME). Not registering, not overwriting."
    )
}

/// `hosts/<node>` on a lease, kept alive.
struct Registration {
    keeper: Option<LeaseKeeper>,
}

impl Registration {
    /// Keep `hosts/<node>` ours. Err (stop the agent) when another host holds the name.
    fn ensure(
        &mut self,
        client: &Client,
        node: &Node,
        value: &[u8],
        view: Option<&View>,
        me: Ipv4Addr,
    ) -> Result<(), String> {
        let key = schema::host_key(&node.prefix, &node.name);
        if let Some(other) = view
            .and_then(|v| v.hosts.get(&node.name))
            .filter(|v| **v != me)
        {
            return Err(taken_message(
                &key,
                &node.name,
                node.source,
                Some(*other),
                me,
            ));
        }
        let lost = self.keeper.as_ref().is_none_or(|k| k.lost());
        let missing = view.is_some_and(|v| v.hosts.get(&node.name) != Some(&me));
        if !lost && !missing && view.is_some() {
            return Ok(());
        }
        let lease = match self.keeper.as_ref().filter(|_| !lost) {
            Some(k) => k.id(),
            None => match client.lease_grant(LEASE_TTL_S) {
                Ok(id) => {
                    self.keeper = Some(client.keep_alive(id, RENEW));
                    id
                }
                Err(e) if e.is_config() => return Err(format!("lease for {key}: {e}")),
                Err(e) => {
                    log::warn!("lease for {key}: {e}");
                    return Ok(());
                }
            },
        };
        match claim(client, &key, value, lease, me) {
            Ok(Claim::Ours) => {
                if lost || missing {
                    log::info!("registered {key} (vtep {me}, lease {lease:x})");
                }
                Ok(())
            }
            Ok(Claim::Taken(theirs)) => {
                Err(taken_message(&key, &node.name, node.source, theirs, me))
            }
            Err(e) if e.is_config() => Err(format!("register {key}: {e}")),
            Err(e) => {
                log::warn!("register {key}: {e}");
                Ok(())
            }
        }
    }

    fn revoke(&mut self, client: &Client) {
        if let Some(k) = self.keeper.take() {
            let id = k.id();
            drop(k);
            if let Err(e) = client.lease_revoke(id) {
                log::warn!("revoke lease {id:x}: {e}");
            }
        }
    }
}

/// Keep the overlay gate equal to the registered hosts (logging changes).
fn gate(dataplane: &dyn Dataplane, view: &View) {
    let members: BTreeSet<std::net::IpAddr> = view.hosts.values().map(|v| (*v).into()).collect();
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
    /// The VTEP: the underlay IPv4 address other hosts send this host's VXLAN traffic to.
    pub vtep: Ipv4Addr,
    /// The etcd prefix, without a trailing `/`.
    pub prefix: String,
}

/// Run the agent until `stop` is set, on this host's kernel: the VTEP is the first IPv4
/// address of `--underlay`.
pub fn run(args: &Args, stop: &AtomicBool) -> Result<(), String> {
    let kernel = Kernel::new().map_err(|e| e.to_string())?;
    let host = kernel.host();
    let ul = host
        .link(&args.underlay)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no interface {} here", args.underlay))?;
    let me = host
        .first_ipv4(&ul)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no IPv4 address (the VTEP)", args.underlay))?;
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
    };
    let dataplane = KernelDataplane::new(host, fw);
    run_node(&client, &node, &dataplane, stop, &Stats::default())
}

/// The agent's loop until `stop` is set: claim `hosts/<node>` on a lease (Err at once when
/// another host holds the name), list and watch `<prefix>/`, keep `dataplane`'s VXLAN devices'
/// FDBs at [`desired_fdb`] and its gate at the registered VTEPs; on stop, revoke the lease.
/// Spawns a watch thread (and the lease's keep-alive thread); both end with it.
pub fn run_node(
    client: &Client,
    node: &Node,
    dataplane: &dyn Dataplane,
    stop: &AtomicBool,
    stats: &Stats,
) -> Result<(), String> {
    let me = node.vtep;
    let key = schema::host_key(&node.prefix, &node.name);
    let value = serde_json::to_vec(&HostRecord { vtep: me }).map_err(|e| e.to_string())?;
    // The name first: an agent whose node name another host holds stops here, having
    // changed nothing (no watch, no FDB entry, no gate).
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
        let (c, p, s) = (client.clone(), node.prefix.clone(), watcher_stop.clone());
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || watcher(c, p, tx, s))
            .map_err(|e| format!("spawn watcher: {e}"))?;
    }
    let mut view = View::default();
    let mut synced = false;
    let mut last_sync = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut dirty = false;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => {
                apply(&mut view, &node.prefix, m, &mut synced, stats);
                while let Ok(m) = rx.try_recv() {
                    apply(&mut view, &node.prefix, m, &mut synced, stats);
                }
                dirty = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the watch thread ended".into());
            }
        }
        if !synced {
            continue; // nothing programmed before the first full list
        }
        if dirty || last_sync.elapsed() >= RESYNC {
            if let Err(e) = reg.ensure(client, node, &value, Some(&view), me) {
                // Lost to another host: stop programming for a name that is not ours.
                watcher_stop.store(true, Ordering::SeqCst);
                reg.revoke(client);
                return Err(e);
            }
            let (added, removed) = reconcile(dataplane, &view, me);
            stats.reconciles.fetch_add(1, Ordering::Relaxed);
            stats.fdb_added.fetch_add(added as u64, Ordering::Relaxed);
            stats
                .fdb_removed
                .fetch_add(removed as u64, Ordering::Relaxed);
            gate(dataplane, &view);
            last_sync = Instant::now();
        }
    }
    log::info!("stopping: revoking the lease of {key}");
    watcher_stop.store(true, Ordering::SeqCst);
    reg.revoke(client);
    Ok(())
}

fn apply(view: &mut View, prefix: &str, m: Msg, synced: &mut bool, stats: &Stats) {
    match m {
        Msg::Snapshot(kvs) => {
            stats.lists.fetch_add(1, Ordering::Relaxed);
            *view = View::from_kvs(prefix, &kvs);
            *synced = true;
        }
        Msg::Put(kv) => {
            stats.events.fetch_add(1, Ordering::Relaxed);
            view.apply(prefix, &kv.key_str(), Some(&kv.value))
        }
        Msg::Delete(kv) => {
            stats.events.fetch_add(1, Ordering::Relaxed);
            view.apply(prefix, &kv.key_str(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_parse_with_defaults_and_refusals() {
        let a = parse_args(&s(&[
            "--etcd-endpoints",
            "http://10.240.0.1:2379,http://10.240.0.2:2379",
            "--underlay=ul0",
            "--node-name",
            "h1",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.underlay, "ul0");
        assert_eq!(a.node, "h1");
        assert_eq!(a.prefix, "/cnirs");
        assert_eq!(a.node_source, "--node-name");
        assert!(a.tls.is_empty());
        assert_eq!(parse_args(&s(&["--help"])).unwrap(), None);
        assert!(parse_args(&s(&["--underlay", "ul0"])).is_err());
        assert!(parse_args(&s(&["--etcd-endpoints", "http://x:1"])).is_err());
        assert!(parse_args(&s(&["--etcd-endpoints", "http://x:1", "--underlay"])).is_err());
        assert!(parse_args(&s(&[
            "--etcd-endpoints",
            "http://x:1",
            "--underlay",
            "ul0",
            "--bogus"
        ]))
        .is_err());
        assert!(parse_args(&s(&[
            "--etcd-endpoints",
            "http://x:1",
            "--underlay",
            "an-interface-name-too-long"
        ]))
        .is_err());
    }

    #[test]
    fn tls_files_and_node_name_come_from_flags_else_the_environment() {
        let env = |k: &str| match k {
            "CNIRS_ETCD_CAFILE" => Some("/env/ca.pem".to_string()),
            "CNIRS_ETCD_CERTFILE" => Some("/env/c.pem".to_string()),
            "CNIRS_ETCD_KEYFILE" => Some("/env/k.pem".to_string()),
            "CNIRS_NODE_NAME" => Some("from-env".to_string()),
            _ => None,
        };
        let base = ["--etcd-endpoints", "https://x:1", "--underlay", "ul0"];
        let a = parse_args_env(&s(&base), &env).unwrap().unwrap();
        assert_eq!(
            a.tls.ca.as_deref(),
            Some(std::path::Path::new("/env/ca.pem"))
        );
        assert_eq!(
            a.tls.key.as_deref(),
            Some(std::path::Path::new("/env/k.pem"))
        );
        assert_eq!(
            (a.node.as_str(), a.node_source),
            ("from-env", "CNIRS_NODE_NAME")
        );
        let mut with_flags = base.to_vec();
        with_flags.extend(["--etcd-cafile=/flag/ca.pem", "--node-name", "n1"]);
        let a = parse_args_env(&s(&with_flags), &env).unwrap().unwrap();
        assert_eq!(
            a.tls.ca.as_deref(),
            Some(std::path::Path::new("/flag/ca.pem"))
        );
        assert_eq!(
            a.tls.cert.as_deref(),
            Some(std::path::Path::new("/env/c.pem"))
        );
        assert_eq!(a.node, "n1");
        let none = |_: &str| None;
        let a = parse_args_env(&s(&base), &none).unwrap().unwrap();
        assert!(a.tls.is_empty());
        assert_eq!(a.node_source, "the hostname");
    }

    #[test]
    fn the_taken_message_names_the_node_both_vteps_and_the_flag() {
        let m = taken_message(
            "/cnirs/hosts/h1",
            "h1",
            "--node-name",
            Some("10.240.0.1".parse().unwrap()),
            "10.240.0.3".parse().unwrap(),
        );
        for want in [
            "\"h1\"",
            "10.240.0.1",
            "10.240.0.3",
            "--node-name",
            "/cnirs/hosts/h1",
        ] {
            assert!(m.contains(want), "{want}: {m}");
        }
    }

    fn pod(node: &str, vtep: &str, mac: &str) -> Vec<u8> {
        serde_json::to_vec(&PodRecord {
            node: node.into(),
            vtep: vtep.parse().unwrap(),
            mac: mac.into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        })
        .unwrap()
    }

    #[test]
    fn desired_fdb_floods_to_other_hosts_and_pins_remote_pods_of_the_vni() {
        let p = "/cnirs";
        let mut v = View::default();
        v.apply(p, "/cnirs/hosts/h1", Some(br#"{"vtep":"10.240.0.1"}"#));
        v.apply(p, "/cnirs/hosts/h2", Some(br#"{"vtep":"10.240.0.2"}"#));
        v.apply(p, "/cnirs/hosts/h3", Some(br#"{"vtep":"10.240.0.3"}"#));
        v.apply(p, "/cnirs/networks/a", Some(br#"{"vni":7}"#));
        v.apply(p, "/cnirs/networks/b", Some(br#"{"vni":8}"#));
        v.apply(
            p,
            "/cnirs/pods/a/10.1.0.2",
            Some(&pod("h2", "10.240.0.2", "0a:58:0a:01:00:02")),
        );
        v.apply(
            p,
            "/cnirs/pods/a/10.1.0.3",
            Some(&pod("h1", "10.240.0.1", "0a:58:0a:01:00:03")),
        );
        v.apply(
            p,
            "/cnirs/pods/b/10.2.0.2",
            Some(&pod("h3", "10.240.0.3", "0a:58:0a:02:00:02")),
        );
        v.apply(p, "/cnirs/ipam/a/ips/10.1.0.2", Some(b"{}"));
        let me: Ipv4Addr = "10.240.0.1".parse().unwrap();
        let want = desired_fdb(&v, me, 7);
        let flood = |d: &str| FdbEntry {
            mac: [0; 6],
            dst: d.parse().unwrap(),
        };
        let expect: BTreeSet<FdbEntry> = [
            flood("10.240.0.2"),
            flood("10.240.0.3"),
            FdbEntry {
                mac: [0x0a, 0x58, 0x0a, 1, 0, 2],
                dst: "10.240.0.2".parse().unwrap(),
            },
        ]
        .into_iter()
        .collect();
        assert_eq!(want, expect);
        // A host leaves: its flood entry goes; a pod is deleted: its entry goes.
        v.apply(p, "/cnirs/hosts/h3", None);
        v.apply(p, "/cnirs/pods/a/10.1.0.2", None);
        let want = desired_fdb(&v, me, 7);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![flood("10.240.0.2")]
        );
        // An unknown VNI: floods only.
        assert_eq!(desired_fdb(&v, me, 99).len(), 1);
    }
}
