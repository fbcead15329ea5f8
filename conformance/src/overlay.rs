//! A simulated cluster for the overlay: an underlay netns with a bridge (the "switch", also the
//! hosts' router at 10.240.0.254 with a "far" address 198.51.100.1 on its lo), N host netns on it
//! (`ul0` = 10.240.0.N/24, default route via the switch), an etcd member in each host netns on its
//! underlay address, the node agent (`cnirs-agent`) in each, and pods behind each host.
//!
//! etcd speaks TLS with client certificates by default (`--client-cert-auth`, a CA made by
//! `scripts/make-test-ca.sh`): the conflists carry `etcdCACertFile`/`etcdCertFile`/
//! `etcdKeyFile`, the agents `--etcd-cafile`/`--etcd-certfile`/`--etcd-keyfile`.
//! [`OverlayCluster::start_plain`] keeps plain http.
//!
//! Every address lives only inside namespaces made here; every process is stopped by PID and
//! every netns and dir deleted on Drop.
//!
//! ```no_run
//! use conformance::overlay::OverlayCluster;
//! let c = OverlayCluster::start(3);
//! let conf = c.conflist("ov", 42, "10.250.0.0/16", serde_json::json!({"isGateway": true}));
//! let (pa, pb) = (c.host(0).pod("a"), c.host(1).pod("b"));
//! let ra = c.tool(0, &conf).add(&pa).assert_ok().json().clone();
//! c.tool(1, &conf).add(&pb).assert_ok();
//! assert!(conformance::can_ping_eventually(&pb, &conformance::first_ip(&ra), 20));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cni::{cni_path, Cnitool};
use crate::etcd::{EtcdCluster, MemberSpec, TestPki};
use crate::netns::TestNet;

/// The underlay interface in every host netns (the same name everywhere, so one conflist and
/// one agent command line fit every host).
pub const UNDERLAY_IF: &str = "ul0";
/// The switch's own address: the hosts' default gateway.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 254);
/// A "server on the internet" behind the router (on the underlay netns's lo).
pub const FAR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The underlay address of host `i` (0-based): 10.240.0.(i+1).
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 240, 0, (i + 1) as u8)
}

/// The underlay address of host `i` on an IPv6 underlay ([`OverlayCluster::start_v6`]):
/// fd40::(i+1).
pub fn host_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd40, 0, 0, 0, 0, 0, 0, (i + 1) as u16)
}

/// The switch's own address on an IPv6 underlay: the hosts' default gateway.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd40, 0, 0, 0, 0, 0, 0, 0xfe);

/// The node name of host `i`.
pub fn node_name(i: usize) -> String {
    format!("h{}", i + 1)
}

pub struct OverlayCluster {
    agents: Mutex<Vec<Option<Child>>>,
    etcd: EtcdCluster,
    hosts: Vec<TestNet>,
    underlay: TestNet,
    logs: PathBuf,
    /// The underlay is IPv6 only ([`OverlayCluster::start_v6`]).
    v6: bool,
}

impl OverlayCluster {
    /// `n` hosts on one underlay, an etcd member (TLS, client certificates required) and an
    /// agent on each; returns when every agent has registered its host.
    #[track_caller]
    pub fn start(n: usize) -> Self {
        Self::start_with(n, true, false)
    }

    /// [`OverlayCluster::start`] with etcd on plain http.
    #[track_caller]
    pub fn start_plain(n: usize) -> Self {
        Self::start_with(n, false, false)
    }

    /// [`OverlayCluster::start`] on an IPv6-only underlay: `ul0` = fd40::N/64 (no IPv4
    /// address), default route via fd40::fe, etcd on the hosts' IPv6 addresses: VTEPs are
    /// IPv6.
    #[track_caller]
    pub fn start_v6(n: usize) -> Self {
        Self::start_with(n, true, true)
    }

    /// Host `i`'s VTEP (its underlay address).
    pub fn vtep(&self, i: usize) -> IpAddr {
        if self.v6 {
            host_addr6(i).into()
        } else {
            host_addr(i).into()
        }
    }

    #[track_caller]
    fn start_with(n: usize, tls: bool, v6: bool) -> Self {
        let underlay = TestNet::new();
        let sw = underlay.host().clone();
        sw.ip(&["link", "add", "ulbr", "type", "bridge"]);
        sw.ip(&["link", "set", "ulbr", "up"]);
        if v6 {
            sw.ip(&[
                "addr",
                "add",
                &format!("{ROUTER6}/64"),
                "dev",
                "ulbr",
                "nodad",
            ]);
        } else {
            sw.ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", "ulbr"]);
        }
        sw.ip(&["addr", "add", &format!("{FAR}/32"), "dev", "lo"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let h = TestNet::new();
            let port = format!("ulh{}", i + 1);
            sw.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IF,
                "netns",
                h.host().name(),
            ]);
            sw.ip(&["link", "set", &port, "master", "ulbr", "up"]);
            if v6 {
                h.host().ip(&[
                    "addr",
                    "add",
                    &format!("{}/64", host_addr6(i)),
                    "dev",
                    UNDERLAY_IF,
                    "nodad",
                ]);
            } else {
                h.host().ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", host_addr(i)),
                    "dev",
                    UNDERLAY_IF,
                ]);
            }
            h.host().ip(&["link", "set", UNDERLAY_IF, "up"]);
            if v6 {
                h.host()
                    .ip(&["-6", "route", "add", "default", "via", &ROUTER6.to_string()]);
            } else {
                h.host()
                    .ip(&["route", "add", "default", "via", &ROUTER.to_string()]);
            }
            hosts.push(h);
        }
        let addr = |i: usize| -> IpAddr {
            if v6 {
                host_addr6(i).into()
            } else {
                host_addr(i).into()
            }
        };
        let specs = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| MemberSpec::in_netns(&node_name(i), h.host().path(), addr(i)))
            .collect();
        let etcd = if tls {
            let ips: Vec<IpAddr> = (0..n).map(addr).collect();
            EtcdCluster::start_tls(specs, TestPki::new(&ips, &["agent"]))
        } else {
            EtcdCluster::start(specs)
        };
        let logs = underlay.tmp().join("agents");
        if let Err(e) = std::fs::create_dir_all(&logs) {
            panic!("mkdir {}: {e}", logs.display());
        }
        let c = Self {
            agents: Mutex::new((0..n).map(|_| None).collect()),
            etcd,
            hosts,
            underlay,
            logs,
            v6,
        };
        for i in 0..n {
            c.start_agent(i);
        }
        c.wait_hosts_registered(n);
        c
    }

    /// Host `i`'s TestNet: its `host()` netns is the simulated host; `pod(..)` makes pods there.
    pub fn host(&self, i: usize) -> &TestNet {
        &self.hosts[i]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The underlay (switch + router + far) netns.
    pub fn underlay(&self) -> &TestNet {
        &self.underlay
    }

    pub fn etcd(&self) -> &EtcdCluster {
        &self.etcd
    }

    /// `http(s)://10.240.0.N:2379` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// The cluster's PKI (None with plain http).
    pub fn pki(&self) -> Option<&TestPki> {
        self.etcd.pki()
    }

    /// The `ipam` keys that point at etcd: endpoints and, with TLS, the CA and the `client`
    /// certificate.
    pub fn etcd_ipam_keys(&self) -> Value {
        let mut v = json!({"etcdEndpoints": self.endpoints()});
        if let Some(p) = self.pki() {
            v["etcdCACertFile"] = json!(p.ca());
            v["etcdCertFile"] = json!(p.cert("client"));
            v["etcdKeyFile"] = json!(p.key("client"));
        }
        v
    }

    /// The agent's etcd flags (endpoints and, with TLS, the `agent` certificate).
    pub fn agent_etcd_args(&self) -> Vec<String> {
        let mut a = vec!["--etcd-endpoints".to_owned(), self.endpoints().join(",")];
        if let Some(p) = self.pki() {
            a.extend([
                "--etcd-cafile".to_owned(),
                p.ca().display().to_string(),
                "--etcd-certfile".to_owned(),
                p.cert("agent").display().to_string(),
                "--etcd-keyfile".to_owned(),
                p.key("agent").display().to_string(),
            ]);
        }
        a
    }

    /// An overlay conflist (the same for every host): `overlay` with etcd-ipam over `subnet`
    /// (gateway .1), `extra` merged into the overlay plugin's config.
    pub fn conflist(&self, name: &str, vni: u32, subnet: &str, extra: Value) -> Value {
        self.conflist_ranges(name, vni, &[subnet], extra)
    }

    /// [`OverlayCluster::conflist`] with one range set per subnet (dual stack: an IPv4 and an
    /// IPv6 subnet give every pod one address of each).
    pub fn conflist_ranges(&self, name: &str, vni: u32, subnets: &[&str], extra: Value) -> Value {
        let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
        let mut plugin = json!({
            "type": "overlay",
            "vni": vni,
            "underlay": UNDERLAY_IF,
            "ipam": {
                "type": "etcd-ipam",
                "ranges": ranges,
            },
        });
        if let (Some(ipam), Some(keys)) = (
            plugin["ipam"].as_object_mut(),
            self.etcd_ipam_keys().as_object(),
        ) {
            for (k, v) in keys {
                ipam.insert(k.clone(), v.clone());
            }
        }
        if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        json!({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]})
    }

    /// cnitool on host `i` with `CNIRS_NODE_NAME` = `h<i+1>`.
    pub fn tool(&self, i: usize, conflist: &Value) -> Cnitool<'_> {
        self.hosts[i]
            .cnitool(conflist)
            .env("CNIRS_NODE_NAME", &node_name(i))
    }

    /// Start (or restart) the agent of host `i`, logging to the cluster's temp dir.
    #[track_caller]
    pub fn start_agent(&self, i: usize) {
        let child = self.spawn_agent(i, &node_name(i), &[], &format!("{}.log", node_name(i)));
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut old) = agents[i].replace(child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// Spawn one more `cnirs agent` on host `i` under `node` (its etcd flags plus `extra`),
    /// logging to `log` in the cluster's log dir ([`OverlayCluster::log_file`]); the caller
    /// owns the child.
    #[track_caller]
    pub fn spawn_agent(&self, i: usize, node: &str, extra: &[&str], log: &str) -> Child {
        let mut args = self.agent_etcd_args();
        args.extend(
            ["--underlay", UNDERLAY_IF, "--node-name", node]
                .iter()
                .chain(extra)
                .map(|a| a.to_string()),
        );
        self.spawn_agent_args(i, &args, log)
    }

    /// `cnirs agent ARGS` on host `i` (no flag added: the caller gives the etcd flags too).
    #[track_caller]
    pub fn spawn_agent_args(&self, i: usize, args: &[String], log: &str) -> Child {
        // `cnirs agent`: the node agent plus the nftables watcher (`cnirs-agent` is the agent
        // alone).
        let bin = cni_path().join("cnirs");
        assert!(
            bin.is_file(),
            "{} missing: cargo build --release -p cnirs",
            bin.display()
        );
        let log = self.logs.join(log);
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(e) => panic!("open {}: {e}", log.display()),
        };
        let mut cmd = self.hosts[i].host().command(&bin.display().to_string());
        cmd.arg("agent")
            .args(args)
            .env("CNIRS_LOG", "info")
            // The plugins' state of this host (its watcher restores the table from it).
            .env("CNIRS_RUN_DIR", self.hosts[i].run_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn {}: {e}", bin.display()),
        }
    }

    /// The addresses host `i` holds in network `net` (etcd-ipam's lease files under its run
    /// dir, `cluster/cnirs/h<i+1>/ipam/<net>/<ip>`).
    pub fn leases(&self, i: usize, net: &str) -> Vec<String> {
        let host = self.hosts[i]
            .run_dir()
            .join("cluster/cnirs")
            .join(node_name(i));
        crate::lease_files(&host.join("ipam").join(net))
    }

    /// The addresses every host holds in network `net`.
    pub fn all_leases(&self, net: &str) -> Vec<String> {
        (0..self.len()).flat_map(|i| self.leases(i, net)).collect()
    }

    /// A file in the agents' log dir.
    pub fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(name)).unwrap_or_default()
    }

    /// SIGTERM the agent of host `i` and wait for it; returns its exit code.
    pub fn stop_agent(&self, i: usize) -> Option<i32> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = agents[i].take()?;
        // SAFETY: kill(2) on the PID of a child we own and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// SIGKILL the agent of host `i` (its lease is not revoked: the other hosts keep its
    /// entries until the lease expires, 30 s after its last renewal).
    pub fn kill_agent(&self, i: usize) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = agents[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent log of host `i`.
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.log", node_name(i)))).unwrap_or_default()
    }

    /// etcdctl inside host `from` with the cluster's endpoints (and the `client`
    /// certificate), then `args`.
    pub fn etcdctl(&self, from: usize, args: &[&str]) -> crate::CmdOutput {
        let mut all: Vec<String> = vec!["--endpoints".into(), self.endpoints().join(",")];
        if let Some(p) = self.pki() {
            all.extend(p.etcdctl_args("client"));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.hosts[from].host().exec("etcdctl", &refs)
    }

    /// Keys under `/cnirs/<sub>` (e.g. `hosts/`), read with etcdctl inside host `from`.
    pub fn keys(&self, from: usize, sub: &str) -> Vec<String> {
        let out = self.etcdctl(
            from,
            &["get", "--prefix", "--keys-only", &format!("/cnirs/{sub}")],
        );
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[track_caller]
    fn wait_hosts_registered(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have = self.keys(0, "hosts/").len();
            if have >= n {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..n).map(|i| self.agent_log(i)).collect();
                panic!("only {have} of {n} hosts registered; agent logs:\n{logs:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether host `i` has a link named `dev`.
    pub fn has_link(&self, i: usize, dev: &str) -> bool {
        self.hosts[i].host().link(dev).is_some()
    }

    /// The MAC of link `dev` on host `i`.
    pub fn link_mac(&self, i: usize, dev: &str) -> Option<String> {
        self.hosts[i]
            .host()
            .link(dev)
            .and_then(|l| l["address"].as_str().map(str::to_owned))
    }

    /// The permanent neighbours of `dev` on host `i` (`ip neigh show dev DEV nud permanent`,
    /// both families), as "ADDR lladdr MAC".
    pub fn neighbours(&self, i: usize, dev: &str) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let v = self.hosts[i].host().ip_json(&[
                fam,
                "neigh",
                "show",
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            for n in v.as_array().into_iter().flatten() {
                out.push(format!(
                    "{} lladdr {}",
                    n["dst"].as_str().unwrap_or_default(),
                    n["lladdr"].as_str().unwrap_or_default()
                ));
            }
        }
        out
    }

    /// The routes of the network with `vni`'s table on host `i` (both families), as
    /// "DST via GW dev DEV" or "unreachable DST".
    pub fn table_routes(&self, i: usize, vni: u32) -> Vec<String> {
        let table = (0x6300_0000u32 | vni).to_string();
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            // A table with no route left does not exist: nothing to list.
            let out_json = self.hosts[i]
                .host()
                .exec("ip", &["-j", fam, "route", "show", "table", &table]);
            let v: Value = serde_json::from_str(&out_json.stdout).unwrap_or_default();
            for r in v.as_array().into_iter().flatten() {
                let dst = r["dst"].as_str().unwrap_or_default();
                let text = match (
                    r["type"].as_str(),
                    r["gateway"].as_str(),
                    r["via"]["host"].as_str(),
                ) {
                    (Some("unreachable"), ..) => format!("unreachable {dst}"),
                    (_, Some(gw), _) | (_, None, Some(gw)) => format!(
                        "{dst} via {gw} dev {}",
                        r["dev"].as_str().unwrap_or_default()
                    ),
                    _ => format!("{dst} dev {}", r["dev"].as_str().unwrap_or_default()),
                };
                out.push(text);
            }
        }
        out
    }

    /// The remote FDB entries of `dev` on host `i`, as `bridge fdb show` prints them.
    pub fn fdb(&self, i: usize, dev: &str) -> Vec<String> {
        let out = crate::exec::run(crate::exec::command("bridge").args([
            "-n",
            self.hosts[i].host().name(),
            "fdb",
            "show",
            "dev",
            dev,
        ]));
        out.stdout
            .lines()
            .filter(|l| l.contains(" dst "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for OverlayCluster {
    fn drop(&mut self) {
        let agents = std::mem::take(&mut *self.agents.lock().unwrap_or_else(|p| p.into_inner()));
        for mut c in agents.into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Fields then drop in order: etcd members (by PID), host netns, the underlay.
    }
}
