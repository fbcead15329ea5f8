//! NetworkPolicy across hosts (issue 31): `netpol` chained after `overlay` on the simulated
//! three-host cluster ([`conformance::overlay::OverlayCluster`]: a 3-member etcd over mutual
//! TLS, `cnirs agent` on every host), the objects in etcd (`cnirs policy apply
//! --etcd-endpoints` run on host 1), each host enforcing for its own pods through its agent.
//!
//! ```text
//!   h1: x/a (app=db, port "web" = TCP 81)   y/b
//!   h2: x/b                                  y/a
//!   h3: y/c
//! ```
//! Every pod serves TCP 80, TCP 81 and UDP 80. For each case, every ordered pair of pods is
//! probed from inside the source pod (TCP 80, TCP 81, UDP 80) and compared cell by cell with
//! the oracle of crates/netpol (`netpol::oracle`, the v1 spec read directly). The first case
//! (no policy) is the control: every cell a later case denies is allowed there. A case
//! applied on h1 must take effect on h2 and h3 (their pods' ingress, y/a's egress).
//!
//! Needs the release binaries (`make build`) and cnitool, br_netfilter; run as root:
//! `cargo test -p conformance --test netpol_overlay -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use conformance::overlay::OverlayCluster;
use conformance::*;
use netpol::{model::Object, oracle::Oracle};
use serde_json::{json, Value};

/// (namespace, name, host index, labels)
const PODS: [(&str, &str, usize, &str); 5] = [
    ("x", "a", 0, "{app: db}"),
    ("x", "b", 1, "{app: web}"),
    ("y", "a", 1, "{app: db}"),
    ("y", "b", 0, "{app: web}"),
    ("y", "c", 2, "{app: web}"),
];
/// (protocol, port) probed per pair.
const PROBES: [(&str, u16); 3] = [("TCP", 80), ("TCP", 81), ("UDP", 80)];

struct Pod {
    ns: &'static str,
    name: &'static str,
    host: usize,
    netns: Netns,
    ip: IpAddr,
    _servers: (TcpServer, TcpServer, UdpEcho),
}

struct World {
    c: OverlayCluster,
    pods: Vec<Pod>,
    /// The objects as applied, for the oracle.
    objects: Vec<Object>,
}

fn objects_yaml() -> String {
    let mut y = String::new();
    for ns in ["x", "y"] {
        y += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
    }
    for (ns, name, _, labels) in PODS {
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{containers: [{{name: c, ports: [{{name: web, containerPort: 81}}]}}]}}\n"
        );
    }
    y
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
}

impl World {
    fn start() -> World {
        let c = OverlayCluster::start(3);
        for i in 0..c.len() {
            assert!(
                std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
                "br_netfilter is not loaded"
            );
            c.host(i)
                .host()
                .set_sysctl("net.bridge.bridge-nf-call-iptables", "1");
        }
        let mut w = World {
            c,
            pods: Vec::new(),
            objects: netpol::parse(&objects_yaml()).unwrap(),
        };
        w.policy("apply", &objects_yaml()).assert_ok();
        let conf = w.conflist();
        for (ns, name, host, _) in PODS {
            let netns = w.c.host(host).pod(&format!("{ns}{name}"));
            let r =
                w.c.tool(host, &conf)
                    .cni_args(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"))
                    .add(&netns)
                    .assert_ok()
                    .json()
                    .clone();
            let ip = ip_of(&first_ip(&r));
            let servers = (
                TcpServer::start(&netns, "0.0.0.0", 80, name),
                TcpServer::start(&netns, "0.0.0.0", 81, name),
                UdpEcho::start(&netns, "0.0.0.0", 80, ""),
            );
            w.pods.push(Pod {
                ns,
                name,
                host,
                netns,
                ip,
                _servers: servers,
            });
        }
        w.wait_routes();
        w
    }

    /// Every pod reaches every other before any policy (the agents program the other hosts'
    /// blocks after the first ADDs claim them).
    fn wait_routes(&self) {
        let t = Instant::now();
        for src in &self.pods {
            for dst in self.pods.iter().filter(|d| d.ip != src.ip) {
                while tcp_request(&src.netns, &dst.ip.to_string(), 80).is_none() {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "{}/{} never reaches {}/{}",
                        src.ns,
                        src.name,
                        dst.ns,
                        dst.name
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// overlay (etcd-ipam), then netpol with the same etcd keys.
    fn conflist(&self) -> Value {
        let mut conf = self
            .c
            .conflist("npov", 31, "10.231.0.0/16", json!({"isGateway": true}));
        let mut netpol = json!({"type": "netpol"});
        for (k, v) in self.c.etcd_ipam_keys().as_object().unwrap() {
            netpol[k] = v.clone();
        }
        conf["plugins"].as_array_mut().unwrap().push(netpol);
        conf
    }

    /// `cnirs policy VERB -f - --etcd-...` on host 1 (index 0), `yaml` on stdin.
    fn policy(&self, verb: &str, yaml: &str) -> CmdOutput {
        let mut args: Vec<String> = vec!["policy".into(), verb.into()];
        if verb != "ls" {
            args.extend(["-f".into(), "-".into()]);
        }
        args.extend(self.c.agent_etcd_args());
        let mut cmd = self
            .c
            .host(0)
            .host()
            .command(&plugin_bin("cnirs").display().to_string());
        cmd.args(&args)
            .env("CNIRS_RUN_DIR", self.c.host(0).run_dir())
            .env("CNIRS_NODE_NAME", "h1");
        run_with(&mut cmd, yaml.as_bytes(), Duration::from_secs(30))
    }

    fn oracle(&self, policies: &str) -> Oracle {
        let mut objs = self.objects.clone();
        if !policies.is_empty() {
            objs.extend(netpol::parse(policies).unwrap());
        }
        let at: Vec<(String, String, IpAddr)> = self
            .pods
            .iter()
            .map(|p| (p.ns.to_owned(), p.name.to_owned(), p.ip))
            .collect();
        Oracle::from_objects(&objs, &at)
    }

    /// The addresses in set `set` of host `h`'s table.
    fn set(&self, h: usize, set: &str) -> BTreeSet<String> {
        nft_elems(self.c.host(h), "set", set).into_iter().collect()
    }

    /// Wait until every host's np_iiso4/np_eiso4 hold exactly its pods the oracle isolates
    /// (each change reaches a host's kernel in one transaction with its allow elements).
    fn wait_enforced(&self, o: &Oracle, case: &str) -> Duration {
        let t = Instant::now();
        let want = |h: usize, dir: &str| -> BTreeSet<String> {
            self.pods
                .iter()
                .filter(|p| p.host == h && o.isolated(p.ip, dir))
                .map(|p| p.ip.to_string())
                .collect()
        };
        loop {
            let ok = (0..self.c.len()).all(|h| {
                self.set(h, "np_iiso4") == want(h, "Ingress")
                    && self.set(h, "np_eiso4") == want(h, "Egress")
            });
            if ok {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{case}: not enforced within 20 s; h2 np_iiso4 {:?}, agent log h2:\n{}",
                self.set(1, "np_iiso4"),
                self.c.agent_log(1)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Probe every ordered pair (in parallel per source); each cell with its probe's verdict
    /// and whether a pod of h2 or h3 is in it; panics on a cell the oracle judges otherwise.
    fn truth_table(&self, o: &Oracle, case: &str) -> Vec<(String, bool, bool)> {
        let rows: Vec<Vec<(String, bool, bool, bool)>> = std::thread::scope(|s| {
            let hs: Vec<_> = self
                .pods
                .iter()
                .map(|src| {
                    s.spawn(move || {
                        let mut row = Vec::new();
                        for dst in self.pods.iter().filter(|d| d.ip != src.ip) {
                            for (proto, port) in PROBES {
                                let got = if proto == "TCP" {
                                    tcp_request(&src.netns, &dst.ip.to_string(), port).is_some()
                                } else {
                                    udp_echoes(
                                        &src.netns,
                                        SocketAddr::new(dst.ip, port),
                                        Duration::from_millis(400),
                                    )
                                };
                                let want = o.allows(src.ip, dst.ip, proto, port);
                                let cell = format!(
                                    "{}/{}@h{} -> {}/{}@h{} {proto}/{port}",
                                    src.ns,
                                    src.name,
                                    src.host + 1,
                                    dst.ns,
                                    dst.name,
                                    dst.host + 1
                                );
                                row.push((cell, got, want, src.host + dst.host > 0));
                            }
                        }
                        row
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let cells: Vec<(String, bool, bool, bool)> = rows.into_iter().flatten().collect();
        let diffs: Vec<String> = cells
            .iter()
            .filter(|(_, got, want, _)| got != want)
            .map(|(c, got, want, _)| format!("{c}: probe {got}, oracle {want}"))
            .collect();
        assert!(
            diffs.is_empty(),
            "{case}: {} of {} cells differ:\n{}",
            diffs.len(),
            cells.len(),
            diffs.join("\n")
        );
        cells
            .into_iter()
            .map(|(c, got, _, other)| (c, got, other))
            .collect()
    }
}

#[test]
#[ignore = "kernel: needs root, br_netfilter, etcd and the release binaries"]
fn truth_tables_across_three_hosts_match_the_oracle() {
    let w = World::start();
    let ip = |ns: &str, name: &str| {
        w.pods
            .iter()
            .find(|p| p.ns == ns && p.name == name)
            .unwrap()
            .ip
    };
    let cases: Vec<(&str, String)> = vec![
        ("no policy", String::new()),
        (
            "default deny ingress in x",
            np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
        ),
        (
            "x from namespace y only",
            np(
                "x",
                "from-y",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n",
            ),
        ),
        (
            "x/a on its named port only",
            np(
                "x",
                "web",
                "  podSelector: {matchLabels: {app: db}}\n  ingress: [{ports: [{port: web}]}]\n",
            ),
        ),
        (
            "x from an ipBlock with except",
            np(
                "x",
                "block",
                &format!(
                    "  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.231.0.0/16, except: [{}/32, {}/32]}}}}]}}]\n",
                    ip("y", "a"),
                    ip("y", "c")
                ),
            ),
        ),
        (
            "egress deny for y/a, UDP out only for y/c",
            np(
                "y",
                "egress-db",
                "  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]\n",
            ) + &np(
                "y",
                "egress-c",
                "  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}\n  policyTypes: [Egress]\n  egress: [{ports: [{protocol: UDP}]}]\n",
            ),
        ),
    ];
    let mut control: Vec<(String, bool, bool)> = Vec::new();
    for (case, yaml) in &cases {
        let o = w.oracle(yaml);
        if !yaml.is_empty() {
            let out = w.policy("apply", yaml);
            out.assert_ok();
        }
        let took = w.wait_enforced(&o, case);
        if case.starts_with("default deny") {
            // `ls` on h1 shows the policy and the pods it selects on every host.
            let ls = w.policy("ls", "");
            ls.assert_ok();
            assert!(
                ls.stdout.contains("x/deny") && ls.stdout.contains(&ip("x", "b").to_string()),
                "{ls}"
            );
        }
        eprintln!(
            "{case}: enforced on every host {} ms after the apply on h1 returned",
            took.as_millis()
        );
        let cells = w.truth_table(&o, case);
        if control.is_empty() {
            assert!(
                cells.iter().all(|(_, ok, _)| *ok),
                "the control: with no policy every cell passes"
            );
            control = cells;
        } else {
            // Every denied cell passed in the control; the policy applied on h1 denies cells
            // of pods on h2 or h3.
            let denied: Vec<&(String, bool, bool)> = cells.iter().filter(|c| !c.1).collect();
            assert!(!denied.is_empty(), "{case}: the policy denies nothing");
            assert!(
                denied.iter().any(|c| c.2),
                "{case}: only h1's pods: {denied:?}"
            );
            for d in &denied {
                assert!(
                    control.iter().any(|c| c.0 == d.0 && c.1),
                    "{case}: no control for {}",
                    d.0
                );
            }
            eprintln!("{case}: {} of {} cells denied", denied.len(), cells.len());
        }
        if !yaml.is_empty() {
            w.policy("delete", yaml).assert_ok();
            w.wait_enforced(&w.oracle(""), &format!("{case}, deleted"));
        }
    }
    late_pod_on_h2(&w);
    for p in &w.pods {
        w.c.tool(p.host, &w.conflist())
            .cni_args(&format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                p.ns, p.name
            ))
            .del(&p.netns)
            .assert_ok();
    }
    assert!(w.c.keys(0, "netpol/endpoints/").is_empty());
}

/// A pod added on h2 under policies in force is isolated when its ADD returns; a pod of h1
/// the policy names is let in, one of h2 it does not name is not; DEL withdraws it.
fn late_pod_on_h2(w: &World) {
    let deny = np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n")
        + &np(
            "x",
            "from-yb",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {app: web}}}]}]\n",
        );
    w.policy("apply", &deny).assert_ok();
    w.wait_enforced(&w.oracle(&deny), "deny + from y web");
    let late = w.c.host(1).pod("xlate");
    let add =
        w.c.tool(1, &w.conflist())
            .cni_args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=late")
            .add(&late);
    eprintln!(
        "ADD overlay + netpol (objects in etcd) under 2 policies: {} ms",
        add.elapsed.as_millis()
    );
    let r = add.assert_ok().json().clone();
    let late_ip = first_ip(&r);
    let ip_late = ip_of(&late_ip).to_string();
    assert!(
        w.set(1, "np_iiso4").contains(&ip_late),
        "isolated when ADD returned"
    );
    let _srv = TcpServer::start(&late, "0.0.0.0", 80, "late");
    let yb = &w
        .pods
        .iter()
        .find(|p| p.ns == "y" && p.name == "b")
        .unwrap()
        .netns;
    let ya = &w
        .pods
        .iter()
        .find(|p| p.ns == "y" && p.name == "a")
        .unwrap()
        .netns;
    assert!(
        tcp_request(yb, &ip_late, 80).is_some(),
        "y/b (h1) is let in"
    );
    assert!(tcp_request(ya, &ip_late, 80).is_none(), "y/a (h2) is not");
    // Fail closed under a flush: h2's agent (its watcher) puts the isolation back.
    w.c.host(1).host().exec_ok("nft", &["flush", "ruleset"]);
    let t = Instant::now();
    while !w.set(1, "np_iiso4").contains(&ip_late) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "not restored after a flush"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "h2: isolation back {} ms after nft flush ruleset",
        t.elapsed().as_millis()
    );
    assert!(
        tcp_request(ya, &ip_late, 80).is_none(),
        "y/a (h2) is not, after the flush"
    );
    assert!(
        (0..50).any(|_| tcp_request(yb, &ip_late, 80).is_some()),
        "y/b (h1) is let in again"
    );
    w.c.tool(1, &w.conflist())
        .cni_args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=late")
        .del(&late)
        .assert_ok();
    assert!(!w.set(1, "np_iiso4").contains(&ip_late), "DEL removed it");
    let endpoints = w.c.keys(0, "netpol/endpoints/");
    assert_eq!(endpoints.len(), PODS.len(), "{endpoints:?}");
    w.policy("delete", &deny).assert_ok();
}
