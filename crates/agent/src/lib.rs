//! The node agent of the overlay (`cnirs agent`, standalone `cnirs-agent`).
//!
//! ```text
//! cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]
//! ```
//!
//! Runs in the foreground, in the host's network namespace:
//! - registers `<prefix>/hosts/<node>` = `{"vtep": <underlay IPv4>}` on a 10 s lease, renewed
//!   every 3 s (a dead host's key expires; a lost lease is granted and written again);
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
//!
//! As a library: [`run_node`] is the whole loop with the etcd client, the node's identity and
//! the kernel side ([`Dataplane`]) handed in, so many simulated hosts can run it in one process
//! against a [`FakeKernel`] (the scale harness, `bench/scale`); [`run`] is the command's
//! version on the real kernel.

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
use etcd::{Client, EventKind, Kv, LeaseKeeper, Options};
use netops::{FdbEntry, Kernel, MacAddr, FLOOD_MAC};

pub mod dataplane;
pub use dataplane::{Dataplane, FakeKernel};

pub const USAGE: &str = "usage: cnirs-agent --etcd-endpoints URL[,URL...] --underlay IFACE [--node-name N] [--etcd-prefix P]

The overlay's node agent: registers this host (its VTEP, the IPv4 address of IFACE) in etcd
under <prefix>/hosts/<node> and programs the remote FDB entries of every overlay network on
this host from <prefix>/hosts/ and <prefix>/pods/. Foreground; SIGTERM stops it.

  --etcd-endpoints  comma-separated http://host:port list (failover in order)
  --underlay        the interface whose IPv4 address is this host's VTEP
  --node-name       default: $CNIRS_NODE_NAME, else the hostname
  --etcd-prefix     default /cnirs (the conflists' etcdPrefix)

CNIRS_LOG=error|warn|info|debug sets the log level (default info).
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
    pub prefix: String,
}

/// `None` for `--help`.
pub fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let (mut endpoints, mut underlay, mut node, mut prefix) = (None, None, None, None);
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
            other => return Err(format!("unknown argument {other:?}")),
        }
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
    let node = node.unwrap_or_else(schema::node_name);
    if node.is_empty() || node.contains('/') {
        return Err(format!("--node-name {node:?}: empty or contains '/'"));
    }
    let prefix = prefix.unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(format!("--etcd-prefix {prefix:?} does not start with /"));
    }
    Ok(Some(Args {
        endpoints,
        underlay,
        node,
        prefix: prefix.trim_end_matches('/').to_string(),
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
        if dev.local != Some(me) {
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

/// `hosts/<node>` on a lease, kept alive.
struct Registration {
    keeper: Option<LeaseKeeper>,
}

impl Registration {
    fn ensure(
        &mut self,
        client: &Client,
        key: &str,
        value: &[u8],
        view: &View,
        node: &str,
        me: Ipv4Addr,
    ) {
        let lost = self.keeper.as_ref().is_none_or(|k| k.lost());
        let missing = view.hosts.get(node) != Some(&me);
        if !lost && !missing {
            return;
        }
        let lease = match self.keeper.as_ref().filter(|_| !lost) {
            Some(k) => k.id(),
            None => match client.lease_grant(LEASE_TTL_S) {
                Ok(id) => {
                    self.keeper = Some(client.keep_alive(id, RENEW));
                    id
                }
                Err(e) => {
                    log::warn!("lease for {key}: {e}");
                    return;
                }
            },
        };
        match client.put(key, value, Some(lease)) {
            Ok(_) => log::info!("registered {key} (lease {lease:x})"),
            Err(e) => log::warn!("register {key}: {e}"),
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

/// Who this host is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `hosts/<name>`.
    pub name: String,
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
    // A watch that hears nothing for 10 s is reopened (from the revision it reached): a member
    // that vanished without closing the connection cannot leave the agent deaf.
    let client = Client::with_options(
        &args.endpoints,
        Options {
            watch_idle_timeout: Some(Duration::from_secs(10)),
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    log::info!(
        "node {} vtep {me} ({}), etcd {:?} prefix {}",
        args.node,
        args.underlay,
        args.endpoints,
        args.prefix
    );
    let node = Node {
        name: args.node.clone(),
        vtep: me,
        prefix: args.prefix.clone(),
    };
    run_node(&client, &node, &host, stop, &Stats::default())
}

/// The agent's loop until `stop` is set: register `node` on a lease, list and watch
/// `<prefix>/`, keep `dataplane`'s VXLAN devices' FDBs at [`desired_fdb`]; on stop, revoke the
/// lease. Spawns a watch thread (and the lease's keep-alive thread); both end with it.
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
    let mut reg = Registration { keeper: None };
    reg.ensure(client, &key, &value, &view, &node.name, me);
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
            let (added, removed) = reconcile(dataplane, &view, me);
            stats.reconciles.fetch_add(1, Ordering::Relaxed);
            stats.fdb_added.fetch_add(added as u64, Ordering::Relaxed);
            stats
                .fdb_removed
                .fetch_add(removed as u64, Ordering::Relaxed);
            reg.ensure(client, &key, &value, &view, &node.name, me);
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

    #[test]
    fn reconcile_brings_local_devices_to_the_view_and_leaves_others_alone() {
        let p = "/cnirs";
        let mut v = View::default();
        v.apply(p, "/cnirs/hosts/h1", Some(br#"{"vtep":"10.240.0.1"}"#));
        v.apply(p, "/cnirs/hosts/h2", Some(br#"{"vtep":"10.240.0.2"}"#));
        v.apply(p, "/cnirs/networks/a", Some(br#"{"vni":7}"#));
        v.apply(
            p,
            "/cnirs/pods/a/10.1.0.2",
            Some(&pod("h2", "10.240.0.2", "0a:58:0a:01:00:02")),
        );
        let me: Ipv4Addr = "10.240.0.1".parse().unwrap();
        let k = FakeKernel::recording();
        k.ensure_vxlan("cnirsvx7", 7, me);
        // A device of another VTEP (not ours to program) and one not named by us.
        k.ensure_vxlan("cnirsvx8", 8, "10.240.0.9".parse().unwrap());
        k.ensure_vxlan("other", 7, me);
        let stale = FdbEntry {
            mac: [0x0a, 0x58, 0, 0, 0, 9],
            dst: "10.240.0.3".parse().unwrap(),
        };
        for d in ["cnirsvx7", "cnirsvx8", "other"] {
            assert!(k.insert(d, stale));
        }
        k.fail_next_add();
        let (added, removed) = reconcile(&k, &v, me);
        assert_eq!(
            (added, removed),
            (1, 1),
            "one add failed, the stale entry went"
        );
        assert_eq!(reconcile(&k, &v, me), (1, 0), "the failed add is retried");
        assert_eq!(k.fdb("cnirsvx7"), desired_fdb(&v, me, 7));
        assert_eq!(k.fdb("cnirsvx8").into_iter().collect::<Vec<_>>(), [stale]);
        assert_eq!(k.fdb("other").into_iter().collect::<Vec<_>>(), [stale]);
        assert_eq!(
            reconcile(&k, &v, me),
            (0, 0),
            "level-triggered: nothing left to do"
        );
    }
}
