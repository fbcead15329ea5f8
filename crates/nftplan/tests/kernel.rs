//! Kernel tests (root): each test makes its own network namespaces (`cnirs-t<pid>-<n>-...`),
//! runs nft inside them and deletes them on drop. Skipped (passing) when not root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use nftplan::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            panic!("kernel tests need root (run: make conformance as root)");
        }
    };
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("cnirs-t{}-{n}-{tag}", std::process::id());
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns { name }
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        ok(&v)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut v = vec!["nft"];
        v.extend_from_slice(args);
        self.ok(&v)
    }

    fn backend(&self) -> NftCli {
        NftCli::with_command("ip", &["netns", "exec", &self.name, "nft"])
    }

    /// Run `f` on a thread that entered this netns (setns), so plain `nft` and sockets act here.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

struct Env {
    ns: Ns,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(tag: &str) -> Env {
        Env {
            ns: Ns::new(tag),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn fw(&self) -> Firewall {
        Firewall::with_backend(self.dir.path().join("netns"), Box::new(self.ns.backend()))
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ns.nft(&["-j", "list", "table", "inet", "cnirs"])).unwrap()
    }
    fn rules(&self) -> usize {
        self.json()["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    }
    /// Elements of one set or map as JSON values (empty when none).
    fn elems(&self, set: &str) -> Vec<serde_json::Value> {
        let v = self.json();
        for o in v["nftables"].as_array().unwrap() {
            for kind in ["set", "map"] {
                if let Some(s) = o.get(kind) {
                    if s["name"] == set {
                        return s
                            .get("elem")
                            .and_then(|e| e.as_array().cloned())
                            .unwrap_or_default();
                    }
                }
            }
        }
        panic!("no set {set}")
    }
}

fn att(net: &str, cid: &str) -> Attachment {
    Attachment::new(net, cid, "eth0").unwrap()
}

fn br(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn pm(host: Option<&str>, port: u16, ctr: &str, cport: u16) -> PortMapping {
    PortMapping {
        host_ip: host.map(|h| h.parse().unwrap()),
        host_port: port,
        protocol: Protocol::Tcp,
        container_ip: ctr.parse().unwrap(),
        container_port: cport,
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn skeleton_loads_reads_back_as_maps_and_reloads_unchanged() {
    require_root!();
    let e = Env::new("skel");
    e.fw().ensure_skeleton().unwrap();
    let v = e.json();
    let mut maps = 0;
    for o in v["nftables"].as_array().unwrap() {
        if let Some(m) = o.get("map") {
            let (key, val): (Vec<&str>, &str) = match m["name"].as_str().unwrap() {
                "pm4" => (
                    vec!["ipv4_addr", "inet_proto", "inet_service"],
                    "ipv4_addr . inet_service",
                ),
                "pm4_any" => (
                    vec!["inet_proto", "inet_service"],
                    "ipv4_addr . inet_service",
                ),
                "pm6" => (
                    vec!["ipv6_addr", "inet_proto", "inet_service"],
                    "ipv6_addr . inet_service",
                ),
                "pm6_any" => (
                    vec!["inet_proto", "inet_service"],
                    "ipv6_addr . inet_service",
                ),
                other => panic!("unexpected map {other}"),
            };
            assert_eq!(m["type"], serde_json::json!(key), "{m}");
            assert_eq!(m["map"], val, "{m}");
            maps += 1;
        }
        if let Some(s) = o.get("set") {
            let name = s["name"].as_str().unwrap();
            assert!(!name.starts_with("pm"), "{name} came back as a plain set");
        }
    }
    assert_eq!(maps, 4);
    assert_eq!(e.rules(), SKELETON_RULES);

    // Loading again changes nothing (compare the handle-free listing), keeps elements.
    let fw = e.fw();
    fw.attach_network(
        &att("n", "c1"),
        &NetworkElems {
            bridge: br("br-x"),
            masq: vec![],
            internal: false,
            subnets: vec![],
            spoof_check: None,
        },
    )
    .unwrap();
    let before = e.ns.nft(&["list", "table", "inet", "cnirs"]);
    fw.ensure_skeleton().unwrap();
    assert_eq!(e.ns.nft(&["list", "table", "inet", "cnirs"]), before);

    // A reload repairs a deleted rule.
    e.ns.nft(&["flush", "chain", "inet", "cnirs", "forward"]);
    assert_eq!(e.rules(), SKELETON_RULES - 6);
    fw.ensure_skeleton().unwrap();
    assert_eq!(e.rules(), SKELETON_RULES);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sixteen_concurrent_first_calls_converge() {
    require_root!();
    let e = Arc::new(Env::new("race"));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (e, barrier) = (e.clone(), barrier.clone());
            std::thread::spawn(move || {
                let fw = e.fw();
                barrier.wait();
                // Half race the bare skeleton, half a first attach (element batch + fallback).
                if i % 2 == 0 {
                    fw.ensure_skeleton()
                } else {
                    let net = format!("n{}", i % 4);
                    fw.attach_network(
                        &att(&net, &format!("c{i}")),
                        &NetworkElems {
                            bridge: br(&format!("br-{net}")),
                            masq: vec![],
                            internal: false,
                            subnets: vec![],
                            spoof_check: None,
                        },
                    )?;
                    fw.add_ports(
                        &att(&net, &format!("c{i}")),
                        &[pm(None, 8000 + i as u16, "10.213.3.2", 80)],
                    )
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    assert_eq!(e.rules(), SKELETON_RULES, "exactly one copy of each rule");
    assert_eq!(
        e.elems("managed_br").len(),
        2,
        "{:?}",
        e.elems("managed_br")
    ); // n1, n3
    assert_eq!(e.elems("pm4_any").len(), 8);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn refcount_across_two_attachments() {
    require_root!();
    let e = Env::new("ref");
    let fw = e.fw();
    let n = NetworkElems {
        bridge: br("br-r"),
        masq: vec!["10.213.4.0/24".parse().unwrap()],
        internal: true,
        subnets: vec![],
        spoof_check: None,
    };
    fw.attach_network(&att("r", "c1"), &n).unwrap();
    fw.attach_network(&att("r", "c2"), &n).unwrap();
    assert_eq!(e.elems("managed_br"), vec![serde_json::json!("br-r")]);
    assert_eq!(e.elems("internal_br").len(), 1);
    assert_eq!(e.elems("masq4").len(), 1);
    fw.detach_network(&att("r", "c1")).unwrap();
    assert_eq!(e.elems("managed_br").len(), 1);
    assert!(fw.check_network(&att("r", "c2")).unwrap().is_empty());
    fw.detach_network(&att("r", "c2")).unwrap();
    for s in ["managed_br", "same_br", "internal_br", "masq4"] {
        assert!(e.elems(s).is_empty(), "{s}");
    }
    // DEL of a missing attachment, twice.
    fw.detach_network(&att("r", "c2")).unwrap();
    fw.detach_network(&att("other", "c9")).unwrap();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn port_conflict_refused_first_owner_untouched_and_del_is_tolerant() {
    require_root!();
    let e = Env::new("pm");
    let fw = e.fw();
    fw.add_ports(
        &att("p", "c1"),
        &[pm(Some("10.213.5.1"), 8080, "10.213.5.2", 80)],
    )
    .unwrap();
    let before = e.elems("pm4");
    assert_eq!(before.len(), 1);
    let err = fw
        .add_ports(&att("p", "c2"), &[pm(None, 8080, "10.213.5.3", 80)])
        .unwrap_err();
    assert!(
        matches!(err, NftError::Conflict { ref owner, .. } if owner == "p/c1/eth0"),
        "{err}"
    );
    assert_eq!(e.elems("pm4"), before);
    assert!(e.elems("pm4_any").is_empty());
    assert!(fw.check_ports(&att("p", "c1")).unwrap().is_empty());

    // Someone deletes our element behind our back: CHECK says which, DEL still succeeds.
    e.ns.nft(&[
        "delete",
        "element",
        "inet",
        "cnirs",
        "pm4",
        "{ 10.213.5.1 . tcp . 8080 }",
    ]);
    assert_eq!(fw.check_ports(&att("p", "c1")).unwrap().len(), 1);
    fw.del_ports(&att("p", "c1"), &[]).unwrap();
    fw.del_ports(&att("p", "c1"), &[]).unwrap();
    fw.del_ports(&att("p", "never"), &[pm(None, 9999, "10.213.5.9", 80)])
        .unwrap();
    assert!(e.elems("pm4").is_empty() && e.elems("pm4_any").is_empty());
    // And the port is free for c2 now.
    fw.add_ports(&att("p", "c2"), &[pm(None, 8080, "10.213.5.3", 80)])
        .unwrap();
    assert_eq!(e.elems("pm4_any").len(), 1);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn gc_and_reconcile_after_flush_ruleset() {
    require_root!();
    let e = Env::new("gc");
    let fw = e.fw();
    let n = NetworkElems {
        bridge: br("br-g"),
        masq: vec!["fd00:213::/64".parse().unwrap()],
        internal: false,
        subnets: vec![],
        spoof_check: None,
    };
    for c in ["c1", "c2", "c3"] {
        fw.attach_network(&att("g", c), &n).unwrap();
        fw.attach_isolation(&att("g", c), &br("br-g")).unwrap();
    }
    fw.add_ports(&att("g", "c1"), &[pm(None, 8080, "10.213.6.2", 80)])
        .unwrap();
    fw.add_ports(&att("g", "c2"), &[pm(None, 8081, "fd00:213::3", 80)])
        .unwrap();

    e.ns.nft(&["flush", "ruleset"]);
    assert_eq!(fw.check_network(&att("g", "c1")).unwrap().len(), 3); // managed, same, masq6
    fw.reconcile().unwrap();
    assert_eq!(e.rules(), SKELETON_RULES);
    assert!(fw.check_network(&att("g", "c1")).unwrap().is_empty());
    assert!(fw.check_isolation(&att("g", "c3")).unwrap().is_empty());
    assert!(fw.check_ports(&att("g", "c2")).unwrap().is_empty());

    fw.gc(Feature::Portmap, "g", &[("c2".into(), "eth0".into())])
        .unwrap();
    assert!(e.elems("pm4_any").is_empty());
    assert_eq!(e.elems("pm6_any").len(), 1);
    fw.gc(Feature::Network, "g", &[("c3".into(), "eth0".into())])
        .unwrap();
    assert_eq!(e.elems("managed_br").len(), 1);
    fw.gc(Feature::Network, "g", &[]).unwrap();
    assert!(e.elems("managed_br").is_empty() && e.elems("masq6").is_empty());
    assert_eq!(
        e.elems("isolated_br").len(),
        1,
        "isolation is its own feature"
    );
}

/// Listen on `addr` inside `ns`, answer `n` connections with "hello"; returns when listening.
fn serve(ns: &Ns, addr: &'static str, n: usize) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for _ in 0..n {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(b"hello");
            }
        }
    });
    rx.recv().unwrap();
    h
}

fn fetch(ns: &Ns, to: &str) -> Result<String, std::io::Error> {
    let to: SocketAddr = to.parse().unwrap();
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn dnat_maps_publish_ports_from_the_host_output_path() {
    require_root!();
    let e = Env::new("host");
    let pod = Ns::new("pod");
    let h = &e.ns.name;
    ok(&[
        "ip", "-n", h, "link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns",
        &pod.name,
    ]);
    ok(&["ip", "-n", h, "addr", "add", "10.213.7.1/24", "dev", "h0"]);
    ok(&["ip", "-n", h, "link", "set", "h0", "up"]);
    ok(&[
        "ip",
        "-n",
        &pod.name,
        "addr",
        "add",
        "10.213.7.2/24",
        "dev",
        "eth0",
    ]);
    ok(&["ip", "-n", &pod.name, "link", "set", "eth0", "up"]);
    ok(&[
        "ip",
        "-n",
        &pod.name,
        "route",
        "add",
        "default",
        "via",
        "10.213.7.1",
    ]);
    e.ns.ok(&["sysctl", "-qw", "net.ipv4.conf.h0.route_localnet=1"]);

    let fw = e.fw();
    // h0 stands in for a bridge: managed_br makes the 127.0.0.1 masquerade rule apply.
    fw.attach_network(
        &att("t", "c1"),
        &NetworkElems {
            bridge: br("h0"),
            masq: vec![],
            internal: false,
            subnets: vec![],
            spoof_check: None,
        },
    )
    .unwrap();
    fw.add_ports(
        &att("t", "c1"),
        &[
            pm(None, 8080, "10.213.7.2", 80),
            pm(Some("10.213.7.1"), 8081, "10.213.7.2", 80),
        ],
    )
    .unwrap();

    let targets = ["10.213.7.1:8080", "10.213.7.1:8081", "127.0.0.1:8080"];
    let srv = serve(&pod, "0.0.0.0:80", targets.len());
    for to in targets {
        assert_eq!(fetch(&e.ns, to).unwrap(), "hello", "{to}");
    }
    srv.join().unwrap();
    // 127.0.0.1:8081 is not published (8081 is bound to 10.213.7.1 only).
    assert!(fetch(&e.ns, "127.0.0.1:8081").is_err());
    fw.del_ports(&att("t", "c1"), &[]).unwrap();
    assert!(fetch(&e.ns, "10.213.7.1:8080").is_err(), "unpublished");
}

fn ping(ns: &Ns, to: &str) -> bool {
    ns.exec(&["busybox", "ping", "-c1", "-W1", to])
        .status
        .success()
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn forward_drops_internal_and_isolated_but_same_bridge_passes() {
    require_root!();
    let e = Env::new("fwd");
    let h = e.ns.name.clone();
    e.ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let mut pods = Vec::new();
    for (bridge, gw) in [("brA", "10.213.10.1/24"), ("brB", "10.213.20.1/24")] {
        ok(&["ip", "-n", &h, "link", "add", bridge, "type", "bridge"]);
        ok(&["ip", "-n", &h, "addr", "add", gw, "dev", bridge]);
        ok(&["ip", "-n", &h, "link", "set", bridge, "up"]);
    }
    for (i, (bridge, addr, gw)) in [
        ("brA", "10.213.10.2/24", "10.213.10.1"),
        ("brA", "10.213.10.3/24", "10.213.10.1"),
        ("brB", "10.213.20.2/24", "10.213.20.1"),
        ("brB", "10.213.20.3/24", "10.213.20.1"),
    ]
    .into_iter()
    .enumerate()
    {
        let p = Ns::new(&format!("p{i}"));
        let v = format!("v{i}");
        ok(&[
            "ip", "-n", &h, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
            &p.name,
        ]);
        ok(&["ip", "-n", &h, "link", "set", &v, "master", bridge, "up"]);
        ok(&["ip", "-n", &p.name, "addr", "add", addr, "dev", "eth0"]);
        ok(&["ip", "-n", &p.name, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", &p.name, "route", "add", "default", "via", gw]);
        pods.push(p);
    }
    let (a1, a2, b1, b2) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    let fw = e.fw();
    let net = |b: &str, internal| NetworkElems {
        bridge: br(b),
        masq: vec![],
        internal,
        subnets: vec![],
        spoof_check: None,
    };
    fw.attach_network(&att("A", "a1"), &net("brA", false))
        .unwrap();
    fw.attach_network(&att("B", "b1"), &net("brB", false))
        .unwrap();

    for nf_call in ["1", "0"] {
        e.ns.ok(&[
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-iptables={nf_call}"),
        ]);
        let ctx = format!("bridge-nf-call-iptables={nf_call}");
        assert!(
            ping(a1, "10.213.20.2"),
            "{ctx}: A1 -> B1 open before isolation"
        );

        fw.attach_isolation(&att("A", "a1"), &br("brA")).unwrap();
        assert!(ping(a1, "10.213.20.2"), "{ctx}: only one side isolated");
        fw.attach_isolation(&att("B", "b1"), &br("brB")).unwrap();
        assert!(!ping(a1, "10.213.20.2"), "{ctx}: A1 -> B1 isolated");
        assert!(!ping(b1, "10.213.10.2"), "{ctx}: B1 -> A1 isolated");
        assert!(ping(a1, "10.213.10.3"), "{ctx}: same bridge passes");
        assert!(ping(a1, "10.213.10.1"), "{ctx}: own gateway passes");
        fw.detach_isolation(&att("A", "a1")).unwrap();
        fw.detach_isolation(&att("B", "b1")).unwrap();

        fw.detach_network(&att("B", "b1")).unwrap();
        fw.attach_network(&att("B", "b1"), &net("brB", true))
            .unwrap();
        assert!(
            !ping(a1, "10.213.20.2"),
            "{ctx}: nothing enters an internal network"
        );
        assert!(!ping(b1, "10.213.10.2"), "{ctx}: nothing leaves it");
        assert!(
            ping(b1, "10.213.20.3"),
            "{ctx}: inside the internal network passes"
        );
        assert!(
            ping(b2, "10.213.20.1"),
            "{ctx}: its gateway address answers"
        );
        fw.detach_network(&att("B", "b1")).unwrap();
        fw.attach_network(&att("B", "b1"), &net("brB", false))
            .unwrap();
        assert!(ping(a2, "10.213.20.3"), "{ctx}: open again");
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn timings_inside_a_netns() {
    require_root!();
    let e = Env::new("time");
    let dir = e.dir.path().join("netns");
    let report = e.ns.run_in(move || {
        let fw = Firewall::with_backend(dir, Box::new(NftCli::new()));
        let t = Instant::now();
        fw.ensure_skeleton().unwrap();
        let first = t.elapsed();
        let t = Instant::now();
        fw.ensure_skeleton().unwrap();
        let again = t.elapsed();
        let (mut add, mut del, mut padd, mut pdel) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let n = 10u32;
        for i in 0..n {
            let a = att("tm", &format!("c{i}"));
            let ne = NetworkElems { bridge: br("br-t"), masq: vec!["10.213.8.0/24".parse().unwrap()], internal: false, subnets: vec![], spoof_check: None,
 };
            let t = Instant::now();
            fw.attach_network(&a, &ne).unwrap();
            add += t.elapsed();
            let t = Instant::now();
            fw.add_ports(&a, &[pm(None, 8080, "10.213.8.2", 80)]).unwrap();
            padd += t.elapsed();
            let t = Instant::now();
            fw.del_ports(&a, &[]).unwrap();
            pdel += t.elapsed();
            let t = Instant::now();
            fw.detach_network(&a).unwrap();
            del += t.elapsed();
        }
        format!(
            "skeleton first {first:?}, reload {again:?}; per call (avg of {n}): network add {:?} (3 elems), \
             port add {:?}, port del {:?}, network del {:?}",
            add / n,
            padd / n,
            pdel / n,
            del / n
        )
    });
    eprintln!("TIMINGS: {report}");
    assert!(e.elems("managed_br").is_empty());
}

/// The in-process netlink element batches (`NftCli::new()` in this netns) leave exactly what
/// `nft -f` leaves for the same scripts, answer errors the same way, and CHECK's `get` reads
/// find present and miss absent elements.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn netlink_element_batches_match_nft_text() {
    require_root!();
    let (text, nl) = (Env::new("nltext"), Env::new("nlnl"));
    let b = br("cnirs-nl");
    let port = IfName::new("vethnl0").unwrap();
    let elems: Vec<Elem> = [
        Elem::ManagedBr { bridge: b.clone() },
        Elem::SameBr { bridge: b.clone() },
        Elem::IsolatedBr { bridge: b.clone() },
        Elem::Port {
            mapping: pm(Some("10.0.0.5"), 8080, "10.213.1.2", 80),
        },
        Elem::Port {
            mapping: pm(None, 53, "10.213.1.3", 5353),
        },
        Elem::Port {
            mapping: pm(Some("fd00::5"), 443, "fd00:213::2", 8443),
        },
        Elem::Port {
            mapping: pm(None, 8081, "fd00:213::3", 81),
        },
    ]
    .into_iter()
    .chain(Elem::spoof_check(&port, "02:00:00:00:00:0a").unwrap())
    // The overlay gate.
    .chain([
        Elem::VtepPort { port: 4789 },
        Elem::Vtep {
            addr: "10.240.0.1".parse().unwrap(),
        },
        Elem::Vtep {
            addr: "fd00:240::1".parse().unwrap(),
        },
    ])
    // NetworkPolicy: exact, two-field and four-field interval concatenations.
    .chain(netpol_samples())
    .collect();
    let mut add = Batch::new();
    add.add(&elems);
    let mut del = Batch::new();
    del.remove(&elems[..2]).delete(&elems[3..4]);
    let load = |env: &Env| {
        env.ns.backend().apply(Batch::new().skeleton()).unwrap();
    };
    load(&text);
    load(&nl);
    text.ns.backend().apply(&add).unwrap();
    text.ns.backend().apply(&del).unwrap();
    let (a, d) = (add.clone(), del.clone());
    let missing_get = Batch::new().get(&elems[3..4]).clone();
    let present_get = Batch::new().get(&elems[4..]).clone();
    let (strict_missing, got_missing, got_present) = nl.ns.run_in(move || {
        let cli = NftCli::new();
        cli.apply(&a).unwrap();
        cli.apply(&d).unwrap();
        // A strict delete of what is gone fails, as with nft, and changes nothing.
        let strict = cli.apply(&d);
        (strict, cli.apply(&missing_get), cli.apply(&present_get))
    });
    assert!(
        matches!(strict_missing, Err(NftError::Netlink { .. })),
        "{strict_missing:?}"
    );
    assert!(got_missing.is_err(), "get of a deleted element must fail");
    got_present.unwrap();
    for set in [
        "managed_br",
        "same_br",
        "isolated_br",
        "pm4",
        "pm4_any",
        "pm6",
        "pm6_any",
        "vtep_ports",
        "vtep4",
        "vtep6",
    ] {
        assert_eq!(nl.elems(set), text.elems(set), "set {set}");
    }
    assert_eq!(nl.elems("vtep4").len(), 1);
    assert_eq!(nl.elems("pm6_any").len(), 1);
    assert!(nl.elems("managed_br").is_empty());
    let spoof = |env: &Env| env.ns.nft(&["list", "table", "bridge", "cnirs"]);
    assert_eq!(spoof(&nl), spoof(&text));
    assert!(spoof(&nl).contains("02:00:00:00:00:0a"), "{}", spoof(&nl));
}

/// The interval sets over nfnetlink: `masq4/6` (rbtree: start and end elements) and
/// `br_net4/6` (pipapo: key and key end) hold after our `add` exactly what nft's own `add`
/// leaves (listing and raw elements), `get` finds only the exact subnet, adjacent subnets of
/// two networks come and go in either order, and what nft added we delete and vice versa.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn netlink_interval_elements_match_nft() {
    require_root!();
    let (text, nl) = (Env::new("ivtext"), Env::new("ivnl"));
    let (a, b) = (br("cnirs-iva"), br("cnirs-ivb"));
    let net = |s: &str| s.parse::<ipnetwork::IpNetwork>().unwrap();
    let brnet = |bridge: &IfName, s: &str| Elem::BrNet {
        bridge: bridge.clone(),
        subnet: net(s),
    };
    // Two networks with adjacent subnets (as nerdctl numbers them), v4 and v6.
    let net_a = vec![
        Elem::masq(net("10.4.0.0/24")),
        Elem::masq(net("fd00:4::/64")),
        brnet(&a, "10.4.0.0/24"),
        brnet(&a, "fd00:4::/64"),
    ];
    let net_b = vec![
        Elem::masq(net("10.4.1.0/24")),
        Elem::masq(net("fd00:4:0:1::/64")),
        brnet(&b, "10.4.1.0/24"),
        brnet(&b, "fd00:4:0:1::/64"),
    ];
    let sets = ["masq4", "masq6", "br_net4", "br_net6"];
    for env in [&text, &nl] {
        env.ns.backend().apply(Batch::new().skeleton()).unwrap();
    }
    let raw = |env: &Env, set: &str| {
        env.ns
            .nft(&["--debug=netlink", "list", "set", "inet", "cnirs", set])
    };
    let snapshot =
        |env: &Env| -> Vec<Vec<serde_json::Value>> { sets.iter().map(|s| env.elems(s)).collect() };
    let text_of = |f: &dyn Fn(&mut Batch)| {
        let mut b = Batch::new();
        f(&mut b);
        b
    };
    let empty = snapshot(&nl);
    assert!(empty.iter().all(Vec::is_empty));

    // Add A then B: nft in one namespace, netlink in the other.
    for elems in [&net_a, &net_b] {
        let t = text_of(&|b| {
            b.add(elems);
        });
        text.ns.backend().apply(&t).unwrap();
        nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
        assert_eq!(snapshot(&nl), snapshot(&text));
        for set in sets {
            assert_eq!(raw(&nl, set), raw(&text, set), "raw elements of {set}");
        }
    }
    assert_eq!(nl.elems("masq4").len(), 2, "{:?}", nl.elems("masq4"));

    // get: every element of both networks is there; subnets that merely overlap, contain, or
    // are the union of ours are not.
    let absent = vec![
        Elem::masq(net("10.4.0.0/23")),
        Elem::masq(net("10.4.0.0/25")),
        Elem::masq(net("10.4.0.128/25")),
        Elem::masq(net("10.4.2.0/24")),
        Elem::masq(net("fd00:4::/63")),
        brnet(&a, "10.4.0.0/25"),
        brnet(&a, "10.4.0.0/23"),
        brnet(&a, "10.4.1.0/24"),
        brnet(&b, "10.4.0.0/24"),
        brnet(&b, "fd00:4::/64"),
    ];
    let gets = |env: &Env, elems: Vec<Elem>| -> Vec<bool> {
        env.ns.run_in(move || {
            let cli = NftCli::new();
            elems
                .iter()
                .map(|e| {
                    cli.apply(&text_of(&|b| {
                        b.get(std::slice::from_ref(e));
                    }))
                    .is_ok()
                })
                .collect()
        })
    };
    let all: Vec<Elem> = net_a.iter().chain(&net_b).cloned().collect();
    assert!(gets(&nl, all.clone()).iter().all(|ok| *ok));
    let found = gets(&nl, absent.clone());
    assert!(
        found.iter().all(|ok| !*ok),
        "{:?}",
        absent
            .iter()
            .zip(&found)
            .filter(|(_, f)| **f)
            .collect::<Vec<_>>()
    );
    // One batch of gets, as CHECK sends it.
    let t = text_of(&|b| {
        b.get(&all);
    });
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();

    // Remove A (the last DEL of a network: add + delete in one transaction): B stays whole,
    // the set reads as if only B had been added.
    let t = text_of(&|b| {
        b.remove(&net_a);
    });
    text.ns.backend().apply(&t).unwrap();
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
    assert_eq!(snapshot(&nl), snapshot(&text));
    for set in sets {
        assert_eq!(raw(&nl, set), raw(&text, set), "raw elements of {set}");
    }
    assert_eq!(gets(&nl, net_a.clone()), [false; 4]);
    assert_eq!(gets(&nl, net_b.clone()), [true; 4]);
    // A strict delete of what is gone fails and changes nothing.
    let before = snapshot(&nl);
    let t = text_of(&|b| {
        b.delete(&net_a[..1]);
    });
    assert!(nl.ns.run_in(move || NftCli::new().apply(&t)).is_err());
    assert_eq!(snapshot(&nl), before);

    // A again (now beside B), then B goes first: the other order.
    let t = text_of(&|b| {
        b.add(&net_a);
    });
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
    assert!(gets(&nl, all.clone()).iter().all(|ok| *ok));
    let t = text_of(&|b| {
        b.remove(&net_b);
    });
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
    assert_eq!(gets(&nl, net_a.clone()), [true; 4]);
    assert_eq!(gets(&nl, net_b.clone()), [false; 4]);
    let t = text_of(&|b| {
        b.remove(&net_a);
    });
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
    assert_eq!(snapshot(&nl), empty, "both gone: empty sets");

    // Interop: nft adds, we delete; we add, nft deletes.
    let t = text_of(&|b| {
        b.add(&net_b);
    });
    let nft_add = t;
    std::fs::write(text.dir.path().join("add.nft"), nft_add.text()).unwrap();
    let path = text.dir.path().join("add.nft");
    nl.ns.nft(&["-f", path.to_str().unwrap()]);
    assert_eq!(gets(&nl, net_b.clone()), [true; 4]);
    let t = text_of(&|b| {
        b.delete(&net_b);
    });
    nl.ns.run_in(move || NftCli::new().apply(&t)).unwrap();
    assert_eq!(snapshot(&nl), empty, "we deleted what nft added");
    nl.ns.run_in(move || NftCli::new().apply(&nft_add)).unwrap();
    let t = text_of(&|b| {
        b.delete(&net_b);
    });
    std::fs::write(&path, t.text()).unwrap();
    nl.ns.nft(&["-f", path.to_str().unwrap()]);
    assert_eq!(snapshot(&nl), empty, "nft deleted what we added");
}

/// The skeleton and the listings through libnftables in-process (`NftCli::new()` in this
/// netns): the same table as `nft -f`, errors reported with nft's text, listings equal to
/// `nft -j`'s.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn libnftables_runs_the_skeleton_and_listings_in_process() {
    require_root!();
    let (cli, lib) = (Env::new("skcli"), Env::new("sklib"));
    let mut s = Batch::new();
    s.skeleton();
    cli.ns.backend().apply(&s).unwrap();
    let (loaded, again, bad, listing, chains, missing) = lib.ns.run_in(move || {
        let nft = NftCli::new();
        let loaded = nft.apply(&s);
        let again = nft.apply(&s);
        // A rule command on a table that does not exist (no iptables-nft here).
        let bad = nft.apply(Batch::new().push(Cmd::DeleteForwardRule {
            family: IpFamily::V4,
            handle: 1,
        }));
        let listing = nft.query(&["list", "table", "inet", "cnirs"]).unwrap();
        let chains = nft.query(&["-a", "list", "chain", "inet", "cnirs", "forward"]);
        let missing = nft
            .query(&["list", "table", "ip", "no_such_table"])
            .unwrap();
        (loaded, again, bad, listing, chains.unwrap(), missing)
    });
    loaded.unwrap();
    again.unwrap();
    match bad {
        Err(NftError::Nft { stderr, .. }) => {
            assert!(stderr.contains("No such file or directory"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
    let list = |env: &Env| env.ns.nft(&["list", "table", "inet", "cnirs"]);
    assert_eq!(list(&lib), list(&cli));
    assert_eq!(lib.rules(), SKELETON_RULES, "the reload left one copy");
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(json(&listing.unwrap()), lib.json());
    let chains = json(&chains.unwrap());
    let cli_chains = json(
        &lib.ns
            .nft(&["-j", "-a", "list", "chain", "inet", "cnirs", "forward"]),
    );
    assert_eq!(chains, cli_chains);
    assert!(chains.to_string().contains("\"handle\""), "{chains}");
    assert_eq!(missing, None);
}

/// Three networks side by side (10.244.1-3.0/24, as the conformance test and nerdctl number
/// them), added in every order: `get` of each subnet finds it exactly.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn netlink_get_of_three_adjacent_subnets() {
    require_root!();
    let env = Env::new("adj3");
    env.ns.backend().apply(Batch::new().skeleton()).unwrap();
    // Each network: its masquerade interval and its hairpin element, all on one bridge so that
    // the pipapo ranges are adjacent too.
    let nets: Vec<Vec<Elem>> = (1..=3)
        .map(|i| {
            let subnet = format!("10.244.{i}.0/24").parse().unwrap();
            vec![
                Elem::masq(subnet),
                Elem::BrNet {
                    bridge: br("cnirs-adj"),
                    subnet,
                },
            ]
        })
        .collect();
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]] {
        let nets = nets.clone();
        let found = env.ns.run_in(move || {
            let cli = NftCli::new();
            for i in order {
                cli.apply(Batch::new().add(&nets[i])).unwrap();
            }
            let found: Vec<_> = nets
                .iter()
                .flatten()
                .map(|e| {
                    cli.apply(Batch::new().get(std::slice::from_ref(e)))
                        .map_err(|err| format!("{e}: {err}"))
                })
                .collect();
            for net in &nets {
                cli.apply(Batch::new().remove(net)).unwrap();
            }
            found
        });
        assert!(
            found.iter().all(Result::is_ok),
            "order {order:?}: {found:?}"
        );
    }
}

/// One element of each NetworkPolicy set (v4 and v6, ingress and egress, with and without
/// ports).
fn netpol_samples() -> Vec<Elem> {
    use nftplan::{NpDir, NpPorts, Protocol};
    let mut v = Vec::new();
    for (pod, first, last) in [
        ("10.1.0.2", "10.1.0.0", "10.1.0.255"),
        ("fd00:1::2", "fd00:1::", "fd00:1::ff"),
    ] {
        let pod: std::net::IpAddr = pod.parse().unwrap();
        for dir in [NpDir::Ingress, NpDir::Egress] {
            v.push(Elem::NpIsolated { dir, pod });
            for ports in [
                None,
                Some(NpPorts {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 81,
                }),
            ] {
                v.push(Elem::NpAllow {
                    dir,
                    pod,
                    first: first.parse().unwrap(),
                    last: last.parse().unwrap(),
                    ports,
                });
            }
            // A pod peer: every port (np_*_pp*, hash), one port (np_*_one*, hash), a port
            // range (np_*_pr*, pipapo).
            for (a, b) in [(0, 0), (53, 53), (53, 60)] {
                v.push(Elem::NpPair {
                    dir,
                    pod,
                    peer: last.parse().unwrap(),
                    ports: (a != 0).then_some(NpPorts {
                        protocol: Protocol::Udp,
                        first: a,
                        last: b,
                    }),
                });
            }
        }
    }
    v
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn netpol_ranges_are_replaced_by_wider_ones_in_one_transaction() {
    require_root!();
    use nftplan::{NpDir, NpPorts, Protocol};
    let e = Env::new("np");
    let dir = e.dir.path().join("netns");
    let allow = |last: &str, port_last: u16| Elem::NpAllow {
        dir: NpDir::Ingress,
        pod: "10.1.0.2".parse().unwrap(),
        first: "10.1.0.0".parse().unwrap(),
        last: last.parse().unwrap(),
        ports: Some(NpPorts {
            protocol: Protocol::Udp,
            first: 80,
            last: port_last,
        }),
    };
    let iso = Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod: "10.1.0.2".parse().unwrap(),
    };
    let (narrow, wide) = (allow("10.1.0.127", 80), allow("10.1.0.255", 90));
    let (n2, w2, i2) = (narrow.clone(), wide.clone(), iso.clone());
    let (first, second, overlap) = e.ns.run_in(move || {
        // In-process: element batches over nfnetlink, as the plugin sends them.
        let fw = Firewall::with_backend(dir, Box::new(NftCli::new()));
        let first = fw.set_netpol(&[i2.clone(), n2.clone()].into());
        let second = fw.set_netpol(&[i2.clone(), w2.clone()].into());
        // An element overlapping one that stays is refused by the kernel (pipapo).
        let overlap = fw.set_netpol(&[i2, w2, allow("10.1.0.3", 80)].into());
        (first, second, overlap)
    });
    assert_eq!(first.unwrap(), (2, 0));
    assert_eq!(second.unwrap(), (1, 1));
    assert!(overlap.is_err(), "{overlap:?}");
    let got: Vec<String> = e.elems("np_in4").iter().map(|v| v.to_string()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    // nft shows 10.1.0.0-10.1.0.255 as the prefix it is.
    assert!(
        got[0].contains(r#"{"addr":"10.1.0.0","len":24}"#) && got[0].contains("[80,90]"),
        "{got:?}"
    );
    assert_eq!(e.elems("np_iiso4").len(), 1);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn guard_table_is_owned_survives_a_flush_and_goes_with_its_owner() {
    require_root!();
    let ns = Ns::new("guard");
    let (listing, after_flush, delete, gone) = ns.run_in(|| {
        let nft = |args: &[&str]| {
            std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap()
        };
        let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
        let mut g = nftplan::guard::Guard::create().unwrap();
        let want: std::collections::BTreeSet<(NpDir, std::net::IpAddr)> = [
            (NpDir::Ingress, "10.9.0.2".parse().unwrap()),
            (NpDir::Egress, "fd00:9::2".parse().unwrap()),
        ]
        .into();
        assert_eq!(g.sync(&want).unwrap(), (2, 0));
        // A second guard in the same namespace is refused (one owner).
        assert!(nftplan::guard::Guard::create().is_err());
        let listing = text(nft(&["list", "table", "inet", "cnirs_guard"]));
        assert!(nft(&["flush", "ruleset"]).status.success());
        let after_flush = text(nft(&["list", "table", "inet", "cnirs_guard"]));
        let delete = nft(&["delete", "table", "inet", "cnirs_guard"])
            .status
            .success();
        assert_eq!(g.sync(&[].into()).unwrap(), (0, 2));
        drop(g);
        // The kernel releases the table when the socket's last reference goes, which under
        // load may be a moment after the close: poll for up to 2 s.
        let mut gone = false;
        for _ in 0..40 {
            if !nft(&["list", "table", "inet", "cnirs_guard"])
                .status
                .success()
            {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (listing, after_flush, delete, gone)
    });
    assert!(listing.contains("flags owner"), "{listing}");
    assert!(
        listing.contains("10.9.0.2") && listing.contains("fd00:9::2"),
        "{listing}"
    );
    assert!(listing.contains("hook forward priority"), "{listing}");
    assert!(listing.contains("meta mark"), "{listing}");
    assert_eq!(
        after_flush, listing,
        "nft flush ruleset skips an owned table"
    );
    assert!(!delete, "only the owner may delete it");
    assert!(gone, "the table goes with its owner's socket");
}
