//! A cluster that admits only its members, on the simulated three-host cluster
//! ([`conformance::overlay::OverlayCluster`], etcd over mutual TLS):
//! - VXLAN from a stranger on the underlay (10.240.0.9, its own VXLAN device towards host 1
//!   with the overlay's VNI and a static neighbour for a pod) reaches no pod, of a normal or an
//!   internal overlay; the same datagram arrives once the gate's rules are removed (control);
//!   strangers stay out after `nft flush ruleset` under a running agent;
//! - a host that leaves is out of the other hosts' gates at once, its pods cut off;
//! - clients without a certificate, or with a stranger's, get clear errors and leave nothing;
//! - a second agent under a node name another host holds is refused, the first does not flap.
//!
//! Needs the release binaries (`make build`) and cnitool (`make cnitool`); run as root:
//! `cargo test -p conformance --test overlay_security -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::net::UdpSocket;
use std::process::Child;
use std::time::{Duration, Instant};

use conformance::etcd::TestPki;
use conformance::overlay::{host_addr, OverlayCluster, UNDERLAY_IF};
use conformance::*;
use serde_json::{json, Value};

/// The stranger's underlay address (never registered).
const STRANGER: &str = "10.240.0.9";

fn ip(r: &Value) -> String {
    ip_of(&first_ip(r)).to_string()
}

/// Host 1's VXLAN device MAC of `vni`.
fn dev_mac(c: &OverlayCluster, vni: u32) -> String {
    c.link_mac(0, &format!("cnirsvx{vni}")).unwrap()
}

/// A netns on the underlay switch at [`STRANGER`], with nothing of ours in it.
fn stranger(c: &OverlayCluster) -> Netns {
    let ns = c.underlay().pod("stranger");
    let sw = c.underlay().host();
    sw.ip(&[
        "link",
        "add",
        "ulstr",
        "type",
        "veth",
        "peer",
        "name",
        UNDERLAY_IF,
        "netns",
        ns.name(),
    ]);
    sw.ip(&["link", "set", "ulstr", "master", "ulbr", "up"]);
    ns.ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", UNDERLAY_IF]);
    ns.ip(&["link", "set", UNDERLAY_IF, "up"]);
    ns
}

/// In the stranger: a VXLAN device `dev` with `vni` towards host 1, the address `src` on the
/// pod subnet, and a permanent neighbour for the pod's address with host 1's VXLAN device's MAC
/// (derived from the VNI and host 1's VTEP: anyone can compute it), so host 1 routes what
/// arrives to the pod.
fn spoof_towards_host1(ns: &Netns, dev: &str, vni: u32, src: &str, pod_ip: &str, dev_mac: &str) {
    ns.ip(&[
        "link",
        "add",
        dev,
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "remote",
        &host_addr(0).to_string(),
        "local",
        STRANGER,
        "dstport",
        "4789",
        "dev",
        UNDERLAY_IF,
        "nolearning",
    ]);
    ns.ip(&["addr", "add", src, "dev", dev]);
    ns.ip(&["link", "set", dev, "up"]);
    ns.ip(&[
        "neigh",
        "replace",
        pod_ip,
        "lladdr",
        dev_mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// Does a UDP datagram sent from `from` to `to:port` reach a socket in `pod`? Three tries,
/// then one second of listening.
fn udp_arrives(pod: &Netns, from: &Netns, to: &str, port: u16) -> bool {
    let sock = pod
        .run_in(move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let payload = format!("spoofed-{port}");
    let (to, p) = (to.to_owned(), payload.clone());
    from.run_in(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = s.send_to(p.as_bytes(), (to.as_str(), port));
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .unwrap();
    let mut buf = [0u8; 128];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if &buf[..n] == payload.as_bytes() {
            return true;
        }
    }
    false
}

/// The elements of one of our sets on host `i` (`nft list set`), as text.
fn set_text(c: &OverlayCluster, i: usize, set: &str) -> String {
    c.host(i)
        .host()
        .exec("nft", &["list", "set", "inet", "cnirs", set])
        .stdout
}

/// Removes the gate's two rules from host `i`'s input chain (by handle); returns how many.
fn remove_gate_rules(c: &OverlayCluster, i: usize) -> usize {
    let out = c
        .host(i)
        .host()
        .exec_ok("nft", &["-a", "list", "chain", "inet", "cnirs", "input"]);
    let handles: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| l.contains("@vtep_ports"))
        .filter_map(|l| l.rsplit("# handle ").next().map(|h| h.trim().to_owned()))
        .collect();
    for h in &handles {
        c.host(i).host().exec_ok(
            "nft",
            &["delete", "rule", "inet", "cnirs", "input", "handle", h],
        );
    }
    handles.len()
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn spoofed_vxlan_from_a_stranger_reaches_no_pod_of_a_normal_or_internal_overlay() {
    let c = OverlayCluster::start(3);
    let normal = c.conflist(
        "ovs",
        101,
        "10.246.0.0/16",
        json!({"isGateway": true, "ipMasq": true}),
    );
    let internal = c.conflist(
        "ovsi",
        102,
        "10.247.0.0/16",
        json!({"internal": true, "isGateway": true}),
    );
    let (n1, n2) = (c.host(0).pod("n1"), c.host(1).pod("n2"));
    let (i1, i2) = (c.host(0).pod("i1"), c.host(1).pod("i2"));
    let rn1 = c.tool(0, &normal).add(&n1).assert_ok().json().clone();
    c.tool(1, &normal).add(&n2).assert_ok();
    let ri1 = c.tool(0, &internal).add(&i1).assert_ok().json().clone();
    c.tool(1, &internal).add(&i2).assert_ok();
    // Members pass the gate: pods on two hosts talk, in both overlays.
    assert!(can_ping_eventually(&n2, &ip(&rn1), 30), "n2 -> n1");
    assert!(can_ping_eventually(&i2, &ip(&ri1), 30), "i2 -> i1");
    // The gate on host 1: the overlay port and the three members.
    let members = set_text(&c, 0, "vtep4");
    for h in 0..3 {
        assert!(
            members.contains(&host_addr(h).to_string()),
            "{members}\n{}",
            c.agent_log(0)
        );
    }
    assert!(set_text(&c, 0, "vtep_ports").contains("4789"));

    let s = stranger(&c);
    spoof_towards_host1(
        &s,
        "vxa",
        101,
        "10.246.255.250/16",
        &ip(&rn1),
        &dev_mac(&c, 101),
    );
    spoof_towards_host1(
        &s,
        "vxb",
        102,
        "10.247.255.250/16",
        &ip(&ri1),
        &dev_mac(&c, 102),
    );
    assert!(
        !udp_arrives(&n1, &s, &ip(&rn1), 7001),
        "a stranger's VXLAN reached a pod of the normal overlay"
    );
    assert!(
        !udp_arrives(&i1, &s, &ip(&ri1), 7002),
        "a stranger's VXLAN reached a pod of the internal overlay"
    );
    // A member's own pod still reaches it while the stranger is refused.
    assert!(
        can_ping(&n2, &ip(&rn1)),
        "n2 -> n1 with the stranger around"
    );

    // Control: the agent of host 1 stopped (it would restore the rules at once) and the two
    // gate rules deleted: the same datagrams arrive. So the drops above were the gate's.
    assert_eq!(c.stop_agent(0), Some(0), "{}", c.agent_log(0));
    // The gate stays in the kernel when the agent stops.
    assert!(set_text(&c, 0, "vtep_ports").contains("4789"));
    assert!(set_text(&c, 0, "vtep4").contains(&host_addr(1).to_string()));
    assert_eq!(remove_gate_rules(&c, 0), 2);
    assert!(
        udp_arrives(&n1, &s, &ip(&rn1), 7003),
        "control: without the gate the stranger's datagram arrives (normal overlay)"
    );
    assert!(
        udp_arrives(&i1, &s, &ip(&ri1), 7004),
        "control: without the gate the stranger's datagram arrives (internal overlay)"
    );
    // The agent back: it repairs the skeleton at start, the stranger is out again.
    c.start_agent(0);
    assert!(
        eventually(50, || c
            .host(0)
            .host()
            .exec("nft", &["list", "chain", "inet", "cnirs", "input"])
            .stdout
            .matches("@vtep_ports")
            .count()
            == 2),
        "{}",
        c.agent_log(0)
    );
    assert!(!udp_arrives(&n1, &s, &ip(&rn1), 7005));
    c.tool(0, &normal).del(&n1).assert_ok();
    c.tool(1, &normal).del(&n2).assert_ok();
    c.tool(0, &internal).del(&i1).assert_ok();
    c.tool(1, &internal).del(&i2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn strangers_stay_out_after_nft_flush_ruleset_under_a_running_agent() {
    let c = OverlayCluster::start(3);
    let conf = c.conflist("ovf", 111, "10.245.0.0/16", json!({"isGateway": true}));
    let (p1, p2) = (c.host(0).pod("p1"), c.host(1).pod("p2"));
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    c.tool(1, &conf).add(&p2).assert_ok();
    assert!(can_ping_eventually(&p2, &ip(&r1), 30), "p2 -> p1");
    let s = stranger(&c);
    spoof_towards_host1(
        &s,
        "vxf",
        111,
        "10.245.255.250/16",
        &ip(&r1),
        &dev_mac(&c, 111),
    );
    assert!(!udp_arrives(&p1, &s, &ip(&r1), 7101));

    // A firewall reload on host 1. There is a window of a few milliseconds between the flush
    // and the watcher's restore in which the gate is open; the restore brings back the table
    // with the member elements in one transaction.
    c.host(0).host().exec_ok("nft", &["flush", "ruleset"]);
    assert!(
        eventually(50, || set_text(&c, 0, "vtep4")
            .contains(&host_addr(1).to_string())),
        "members restored with the table:\n{}",
        c.agent_log(0)
    );
    let members = set_text(&c, 0, "vtep4");
    for h in 0..3 {
        assert!(members.contains(&host_addr(h).to_string()), "{members}");
    }
    assert!(set_text(&c, 0, "vtep_ports").contains("4789"));
    assert!(
        !udp_arrives(&p1, &s, &ip(&r1), 7102),
        "a stranger's VXLAN reached a pod after the restore"
    );
    assert!(
        can_ping(&p2, &ip(&r1)),
        "members still pass after the restore"
    );
    assert!(
        c.agent_log(0).contains("repaired table inet cnirs"),
        "{}",
        c.agent_log(0)
    );
    c.tool(0, &conf).del(&p1).assert_ok();
    c.tool(1, &conf).del(&p2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_host_that_leaves_is_out_of_the_other_gates_at_once_and_back_when_it_returns() {
    let c = OverlayCluster::start(3);
    let conf = c.conflist("ovl", 121, "10.244.0.0/16", json!({"isGateway": true}));
    let (p1, p3) = (c.host(0).pod("p1"), c.host(2).pod("p3"));
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    c.tool(2, &conf).add(&p3).assert_ok();
    assert!(can_ping_eventually(&p3, &ip(&r1), 30), "p3 -> p1");
    let h3 = host_addr(2).to_string();
    assert!(set_text(&c, 0, "vtep4").contains(&h3));
    // h3 leaves: its agent stops and revokes its lease, hosts/h3 goes.
    assert_eq!(c.stop_agent(2), Some(0), "{}", c.agent_log(2));
    let t = Instant::now();
    assert!(
        eventually(20, || !set_text(&c, 0, "vtep4").contains(&h3)),
        "h3 still a member of h1's gate 2 s after it left:\n{}\n{}",
        set_text(&c, 0, "vtep4"),
        c.agent_log(0)
    );
    eprintln!(
        "h3 out of h1's gate {:?} after its lease was revoked",
        t.elapsed()
    );
    // Its pod's VXLAN (outer source 10.240.0.3) is now dropped at h1 (the gate), and h1 no
    // longer routes h3's block either.
    assert!(!can_ping(&p3, &ip(&r1)), "p3 (h3 gone) -> p1 must fail");
    // h3 returns: in again.
    c.start_agent(2);
    assert!(
        eventually(50, || set_text(&c, 0, "vtep4").contains(&h3)),
        "{}",
        c.agent_log(0)
    );
    assert!(
        can_ping_eventually(&p3, &ip(&r1), 30),
        "p3 -> p1 after h3 returned"
    );
    c.tool(0, &conf).del(&p1).assert_ok();
    c.tool(2, &conf).del(&p3).assert_ok();
}

/// A conflist like `c.conflist` but with the ipam TLS keys replaced by `tls`.
fn conf_with_tls(c: &OverlayCluster, name: &str, vni: u32, subnet: &str, tls: Value) -> Value {
    let mut conf = c.conflist(name, vni, subnet, json!({"isGateway": true}));
    let ipam = conf["plugins"][0]["ipam"].as_object_mut().unwrap();
    ipam.remove("etcdCACertFile");
    ipam.remove("etcdCertFile");
    ipam.remove("etcdKeyFile");
    for (k, v) in tls.as_object().unwrap() {
        ipam.insert(k.clone(), v.clone());
    }
    conf
}

/// What an ADD must not leave behind: the host's links are as before, no record under
/// `ipam/` or `blocks/`.
fn assert_nothing_left(c: &OverlayCluster, links_before: &[String], what: &str) {
    assert_eq!(
        c.host(0).host().link_names(),
        links_before,
        "{what}: links left behind"
    );
    for sub in ["ipam/", "blocks/"] {
        assert!(c.keys(0, sub).is_empty(), "{what}: {:?}", c.keys(0, sub));
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn clients_without_a_certificate_or_with_a_strangers_get_clear_errors_and_leave_nothing() {
    let c = OverlayCluster::start(3);
    let pki = c.pki().unwrap();
    let foreign = TestPki::new(&[host_addr(0).into()], &[]);
    let p = c.host(0).pod("p");
    let links = c.host(0).host().link_names();
    let cases = [
        (
            "no TLS keys on https://",
            json!({}),
            "etcdCACertFile",
            "need a CA",
        ),
        (
            "the CA but no certificate",
            json!({"etcdCACertFile": pki.ca()}),
            "etcdCertFile",
            "requires a client certificate",
        ),
        (
            "a certificate from another CA",
            json!({"etcdCACertFile": pki.ca(), "etcdCertFile": foreign.cert("client"),
                   "etcdKeyFile": foreign.key("client")}),
            "etcdCertFile",
            "refused this client's certificate",
        ),
        (
            "a CA that does not verify the members",
            json!({"etcdCACertFile": foreign.ca(), "etcdCertFile": pki.cert("client"),
                   "etcdKeyFile": pki.key("client")}),
            "etcdCACertFile",
            "not signed by the configured CA",
        ),
        (
            "a certificate without its key",
            json!({"etcdCACertFile": pki.ca(), "etcdCertFile": pki.cert("client")}),
            "etcdKeyFile",
            "without",
        ),
    ];
    for (what, tls, key, says) in cases {
        let conf = conf_with_tls(&c, "ovt", 131, "10.243.0.0/16", tls);
        let out = c.tool(0, &conf).add(&p);
        out.assert_err();
        assert_eq!(out.cni_error_code(), Some(7), "{what}: {out}");
        let msg = out.json()["msg"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(key) && msg.contains(says), "{what}: {msg}");
        assert_nothing_left(&c, &links, what);
        // DEL of the failed ADD is fine and still cleans the host side.
        let _ = c.tool(0, &conf).del(&p);
    }
    // The agent without a certificate: exits 1 at once, saying why; registers nothing.
    let before = c.keys(0, "hosts/");
    let args: Vec<String> = [
        "--etcd-endpoints",
        &c.endpoints().join(","),
        "--etcd-cafile",
        &pki.ca().display().to_string(),
        "--underlay",
        UNDERLAY_IF,
        "--node-name",
        "h-nocert",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut agent: Child = c.spawn_agent_args(2, &args, "nocert.log");
    let status = wait_exit(&mut agent, Duration::from_secs(20));
    let log = c.log_file("nocert.log");
    assert_eq!(status, Some(1), "{log}");
    assert!(log.contains("requires a client certificate"), "{log}");
    assert_eq!(c.keys(0, "hosts/"), before);
    // Control: the cluster's own certificate works for the same ADD.
    let conf = c.conflist("ovt", 131, "10.243.0.0/16", json!({"isGateway": true}));
    c.tool(0, &conf).add(&p).assert_ok();
    c.tool(0, &conf).del(&p).assert_ok();
}

/// Waits up to `limit` for `child` to exit (killing it after); its exit code.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_node_name_held_by_another_host_is_refused_and_the_holder_does_not_flap() {
    let c = OverlayCluster::start(3);
    let conf = c.conflist("ovd", 141, "10.242.0.0/16", json!({"isGateway": true}));
    let (p1, p2) = (c.host(0).pod("p1"), c.host(1).pod("p2"));
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    c.tool(1, &conf).add(&p2).assert_ok();
    assert!(can_ping_eventually(&p2, &ip(&r1), 30));
    let fdb_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("overlay entries:"))
            .count()
    };
    let h1_fdb_before = fdb_lines(&c.agent_log(0));
    let h2_fdb_before = fdb_lines(&c.agent_log(1));

    // Host 3 (VTEP 10.240.0.3) starts a second agent calling itself h1 (a cloned image).
    let mut dup = c.spawn_agent(2, "h1", &[], "dup.log");
    let status = wait_exit(&mut dup, Duration::from_secs(20));
    let log = c.log_file("dup.log");
    assert_eq!(status, Some(1), "{log}");
    for want in ["\"h1\"", "10.240.0.1", "10.240.0.3", "--node-name"] {
        assert!(log.contains(want), "{want} missing from:\n{log}");
    }
    // hosts/h1 still names host 1; a few resync rounds later, no FDB churn anywhere.
    let v = c.etcdctl(0, &["get", "--print-value-only", "/cnirs/hosts/h1"]);
    assert!(v.stdout.contains("10.240.0.1"), "{v}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        fdb_lines(&c.agent_log(0)),
        h1_fdb_before,
        "{}",
        c.agent_log(0)
    );
    assert_eq!(
        fdb_lines(&c.agent_log(1)),
        h2_fdb_before,
        "{}",
        c.agent_log(1)
    );
    assert!(can_ping(&p2, &ip(&r1)));

    // An overlay ADD on host 3 under the name h1 fails before any side effect.
    let links = c.host(2).host().link_names();
    let p3 = c.host(2).pod("p3");
    let out = c
        .host(2)
        .cnitool(&conf)
        .env("CNIRS_NODE_NAME", "h1")
        .add(&p3);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(7), "{out}");
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("h1") && msg.contains("10.240.0.3"), "{msg}");
    assert_eq!(c.host(2).host().link_names(), links);
    assert_eq!(
        c.all_leases("ovd").len(),
        2,
        "no address held for the refused ADD"
    );
    assert!(
        !c.host(2).run_dir().join("cluster/cnirs/h1").exists(),
        "nothing of h1's on host 3"
    );

    // Two agents racing for a new name: one wins, the other exits 1.
    c.stop_agent(2);
    let mut a = c.spawn_agent(1, "hx", &[], "race-a.log");
    let mut b = c.spawn_agent(2, "hx", &[], "race-b.log");
    let (sa, sb) = (
        wait_exit(&mut a, Duration::from_secs(6)),
        wait_exit(&mut b, Duration::from_secs(6)),
    );
    // The winner still runs at the deadline (killed: None); the loser exited 1.
    let mut codes = [sa, sb];
    codes.sort();
    assert_eq!(
        codes,
        [None, Some(1)],
        "{}\n{}",
        c.log_file("race-a.log"),
        c.log_file("race-b.log")
    );
    c.tool(0, &conf).del(&p1).assert_ok();
    c.tool(1, &conf).del(&p2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn the_overlay_still_works_over_plain_http_etcd() {
    let c = OverlayCluster::start_plain(2);
    assert!(c.endpoints()[0].starts_with("http://"));
    let conf = c.conflist("ovp", 151, "10.241.0.0/16", json!({"isGateway": true}));
    let (p1, p2) = (c.host(0).pod("p1"), c.host(1).pod("p2"));
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    c.tool(1, &conf).add(&p2).assert_ok();
    assert!(can_ping_eventually(&p2, &ip(&r1), 30), "p2 -> p1");
    c.tool(0, &conf).del(&p1).assert_ok();
    c.tool(1, &conf).del(&p2).assert_ok();
}
