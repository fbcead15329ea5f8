//! Kernel tests of the `overlay` plugin (routed per node block), `etcd-ipam` and the node agent
//! on a simulated three-host cluster ([`conformance::overlay::OverlayCluster`]: an underlay
//! netns with a bridge, three host netns on it, a 3-member etcd over mutual TLS, an agent per
//! host), driven through cnitool with the same conflist on every host; an IPv4 underlay, and
//! an IPv6-only one for the tests that name it.
//!
//! Needs the release binaries (`make build`: overlay, etcd-ipam, isolation, cnirs) and cnitool
//! (`make cnitool`), tcpdump; run as root:
//! `cargo test -p conformance --test overlay -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap
#![allow(clippy::needless_range_loop)] // hosts and pods are indexed together

use std::collections::BTreeSet;
use std::time::Duration;

use conformance::capture::Capture;
use conformance::overlay::{host_addr, OverlayCluster, FAR, ROUTER};
use conformance::*;
use serde_json::{json, Value};

fn ip(r: &Value) -> String {
    ip_of(&first_ip(r)).to_string()
}

/// The pod's address of one family in a result.
fn ip_fam(r: &Value, v6: bool) -> String {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {r}", if v6 { "IPv6" } else { "IPv4" }))
}

/// `ping [-6] -M do -s SIZE` (iputils): a DF packet of SIZE + 28 (IPv6: + 48) bytes.
fn ping_df(from: &Netns, addr: &str, payload: u32) -> CmdOutput {
    let mut args = vec!["-M", "do", "-c1", "-W1"];
    if addr.contains(':') {
        args.insert(0, "-6");
    }
    let size = payload.to_string();
    args.extend(["-s", &size, addr]);
    run_with(
        from.command("ping").args(&args),
        b"",
        Duration::from_secs(5),
    )
}

/// The addresses held in network `net` on every host (etcd-ipam's leases).
fn att_keys(c: &OverlayCluster, net: &str) -> Vec<String> {
    c.all_leases(net)
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pods_on_three_hosts_reach_each_other_routed_per_block_and_del_propagates() {
    let c = OverlayCluster::start(3);
    let vx = "cnirsvx4242";
    let conf = c.conflist(
        "ov",
        4242,
        "10.250.0.0/16",
        json!({"isGateway": true, "isDefaultGateway": true, "ipMasq": true}),
    );
    let pods: Vec<Netns> = (0..3).map(|i| c.host(i).pod(&format!("p{i}"))).collect();
    let res: Vec<Value> = (0..3)
        .map(|i| c.tool(i, &conf).add(&pods[i]).assert_ok().json().clone())
        .collect();
    let ips: Vec<String> = res.iter().map(ip).collect();
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 3, "{ips:?}");
    // The result says what the pod has: its node's block as its on-link prefix.
    for r in &res {
        assert!(
            r["ips"][0]["address"].as_str().unwrap().ends_with("/25"),
            "{r}"
        );
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                assert!(
                    can_ping_eventually(&pods[i], &ips[j], 30),
                    "p{i} (h{}) -> p{j} {} (h{})",
                    i + 1,
                    ips[j],
                    j + 1
                );
            }
        }
    }
    // The pod MTU is the underlay's (1500) minus 50; a 1400-byte DF packet crosses, one over
    // the pod MTU is refused at the source rather than lost on the way.
    let l = pods[0].link("eth0").unwrap();
    assert_eq!(l["mtu"], 1450, "{l}");
    let big = ping_df(&pods[0], &ips[1], 1372);
    assert!(big.success(), "1400-byte DF ping h1 -> h2: {big}");
    assert!(!ping_df(&pods[0], &ips[1], 1423).success());

    // Per remote host: one FDB entry (its device's MAC -> its VTEP), one permanent neighbour
    // (the link-local next hop), one route for its block; no flood entry, nothing per pod.
    let fdb = c.fdb(0, vx);
    for h in [1, 2] {
        let mac = c.link_mac(h, vx).unwrap();
        let want = format!("{mac} dst {}", host_addr(h));
        assert!(
            fdb.iter().any(|l| l.starts_with(&want)),
            "h1 fdb lacks {want}: {fdb:?}"
        );
    }
    assert_eq!(fdb.len(), 2, "{fdb:?}");
    assert!(
        !fdb.iter().any(|l| l.starts_with("00:00:00:00:00:00")),
        "{fdb:?}"
    );
    assert_eq!(c.neighbours(0, vx).len(), 2, "{:?}", c.neighbours(0, vx));
    let routes = c.table_routes(0, 4242);
    let via: Vec<&String> = routes
        .iter()
        .filter(|r| r.contains(" via fe80::"))
        .collect();
    assert_eq!(via.len(), 2, "{routes:?}");
    assert!(
        routes.contains(&"10.250.0.0/16 dev cnirsbr4242".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r.starts_with("unreachable")),
        "{routes:?}"
    );
    // etcd: no pod records, no address records; one block per host. The addresses are
    // their hosts' (etcd-ipam's leases).
    assert!(c.keys(0, "pods/").is_empty(), "{:?}", c.keys(0, "pods/"));
    assert_eq!(
        c.keys(0, "blocks/ov/").len(),
        3,
        "{:?}",
        c.keys(0, "blocks/")
    );
    assert_eq!(att_keys(&c, "ov").len(), 3);
    assert_eq!(c.keys(0, "ipam/ov/").len(), 3, "{:?}", c.keys(0, "ipam/"));
    assert_eq!(c.keys(0, "networks/ov").len(), 1);

    // Egress: masqueraded to the pod's own host's underlay address (the router has no route to
    // the pod subnet, so only a masqueraded connection gets an answer).
    let srv = TcpServer::start(c.underlay().host(), &FAR.to_string(), 0, "far");
    assert!(reaches(&pods[1], &FAR.to_string(), srv.port()), "p1 -> far");
    assert!(eventually(20, || !srv.peers().is_empty()), "no peer seen");
    let peers: Vec<String> = srv.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        peers,
        vec![host_addr(1).to_string()],
        "seen by the far server"
    );
    drop(srv);

    // DEL on h2, its only pod: the address is unreachable from the others, its index goes, and
    // so does h2's device.
    c.tool(1, &conf).del(&pods[1]).assert_ok();
    assert!(!can_ping(&pods[0], &ips[1]));
    assert!(!can_ping(&pods[2], &ips[1]));
    assert_eq!(att_keys(&c, "ov").len(), 2);
    assert!(!c.has_link(1, vx), "h2 keeps its device with no pod");
    c.tool(1, &conf).del(&pods[1]).assert_ok(); // DEL again is fine
    assert!(can_ping(&pods[0], &ips[2]));

    // The agent leaves on SIGTERM: exit 0, its host key revoked, the others drop its entries.
    let mac3 = c.link_mac(2, vx).unwrap();
    assert_eq!(c.stop_agent(2), Some(0), "{}", c.agent_log(2));
    assert!(!c.keys(0, "hosts/").iter().any(|k| k.ends_with("/h3")));
    assert!(
        eventually(30, || !c.fdb(0, vx).iter().any(|l| l.starts_with(&mac3))),
        "{:?}",
        c.fdb(0, vx)
    );
    assert!(eventually(30, || c
        .table_routes(0, 4242)
        .iter()
        .filter(|r| r.contains(" via "))
        .count()
        == 1));
    // CHECK passes on a live pod; GC on h1 listing only p0 releases g's address.
    c.tool(0, &conf).check(&pods[0]).assert_ok();
    let g = c.host(0).pod("g");
    let rg = c.tool(0, &conf).add(&g).assert_ok().json().clone();
    assert_eq!(att_keys(&c, "ov").len(), 3);
    let t0 = c.tool(0, &conf);
    let keep = json!([{"containerID": t0.container_id_for(&pods[0]), "ifname": "eth0"}]);
    c.tool(0, &conf).valid_attachments(keep).gc().assert_ok();
    let left = att_keys(&c, "ov");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&ip(&rg)), "{left:?}");
    c.tool(0, &conf).del(&g).assert_ok();
    for i in [0, 2] {
        c.tool(i, &conf).del(&pods[i]).assert_ok();
    }
    assert!(att_keys(&c, "ov").is_empty(), "{:?}", att_keys(&c, "ov"));
}

/// Dual-stack pods on h1 and h2 reach each other over both families, and their own host
/// through the IPv6 gateway; 1400-byte DF packets cross in both families.
fn dual_stack(c: &OverlayCluster, mtu: u64) {
    let conf = c.conflist_ranges(
        "ds",
        4300,
        &["10.230.0.0/16", "fd30::/64"],
        json!({"isGateway": true, "isDefaultGateway": true, "ipMasq": true}),
    );
    let (a, b) = (c.host(0).pod("a"), c.host(1).pod("b"));
    let ra = c.tool(0, &conf).add(&a).assert_ok().json().clone();
    let rb = c.tool(1, &conf).add(&b).assert_ok().json().clone();
    for v6 in [false, true] {
        let (ta, tb) = (ip_fam(&ra, v6), ip_fam(&rb, v6));
        assert!(can_ping_eventually(&a, &tb, 30), "a -> b {tb}");
        assert!(can_ping_eventually(&b, &ta, 30), "b -> a {ta}");
        // 1400 bytes on the wire: 1372 of ICMP payload over IPv4, 1352 over IPv6.
        let big = ping_df(&a, &tb, if v6 { 1352 } else { 1372 });
        assert!(big.success(), "1400-byte DF ping a -> b {tb}: {big}");
    }
    assert_eq!(a.link("eth0").unwrap()["mtu"], mtu);
    // The IPv6 gateway is the pod's own host: it answers, and its bridge holds it (each
    // bridge is its own segment: no DAD clash between hosts).
    assert!(
        can_ping_eventually(&a, "fd30::1", 30),
        "a -> its gateway fd30::1"
    );
    assert!(
        can_ping_eventually(&b, "fd30::1", 30),
        "b -> its gateway fd30::1"
    );
    let gw = c.host(0).host().addrs("cnirsbr4300");
    assert!(gw.iter().any(|x| x.starts_with("fd30::1/64")), "{gw:?}");
    assert!(
        !c.host(0)
            .host()
            .exec(
                "ip",
                &["-6", "addr", "show", "dev", "cnirsbr4300", "dadfailed"]
            )
            .stdout
            .contains("fd30::1"),
        "the IPv6 gateway failed DAD"
    );
    // Reach the host beyond the bridge over IPv6: the host's own traffic to the pod
    // (answered through the gateway).
    let host_ping = c
        .host(0)
        .host()
        .exec("ping", &["-6", "-c1", "-W1", &ip_fam(&ra, true)]);
    assert!(host_ping.success(), "h1 -> a over IPv6: {host_ping}");
    c.tool(0, &conf).del(&a).assert_ok();
    c.tool(1, &conf).del(&b).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn dual_stack_pods_reach_each_other_and_their_host_over_both_families() {
    let c = OverlayCluster::start(3);
    dual_stack(&c, 1450);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn dual_stack_pods_reach_each_other_over_an_ipv6_underlay() {
    let c = OverlayCluster::start_v6(3);
    // VTEPs are IPv6: the gate's vtep6 set carries the members (the agent fills it from
    // hosts/ once it has listed them; under load that is after the cluster is up, so wait up
    // to 10 s).
    let v6set = || {
        c.host(0)
            .host()
            .exec("nft", &["list", "set", "inet", "cnirs", "vtep6"])
            .stdout
    };
    let all_in = |s: &str| (0..3).all(|h| s.contains(&c.vtep(h).to_string()));
    let mut seen = v6set();
    for _ in 0..100 {
        if all_in(&seen) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        seen = v6set();
    }
    assert!(all_in(&seen), "{seen}");
    // Over IPv6 VXLAN costs 70 bytes: the pod MTU is 1430.
    dual_stack(&c, 1430);
}

/// First contact between two fresh pods on different hosts (IPv4 and IPv6): no ARP request and
/// no Neighbour Solicitation inside VXLAN, nothing flooded; the pods' traffic does cross
/// (the control that the capture sees VXLAN at all).
fn quiet_first_contact(c: &OverlayCluster) {
    let conf = c.conflist_ranges(
        "qt",
        4400,
        &["10.231.0.0/16", "fd31::/64"],
        json!({"isGateway": true, "isDefaultGateway": true}),
    );
    // The network's devices and routes exist first (a pod on each host), then two fresh pods.
    let (w1, w2) = (c.host(0).pod("w1"), c.host(1).pod("w2"));
    c.tool(0, &conf).add(&w1).assert_ok();
    c.tool(1, &conf).add(&w2).assert_ok();
    let (a, b) = (c.host(0).pod("a"), c.host(1).pod("b"));
    let ra = c.tool(0, &conf).add(&a).assert_ok().json().clone();
    let rb = c.tool(1, &conf).add(&b).assert_ok().json().clone();
    assert!(
        eventually(50, || c
            .table_routes(0, 4400)
            .iter()
            .filter(|r| r.contains(" via "))
            .count()
            >= 2),
        "{:?}",
        c.table_routes(0, 4400)
    );
    let cap = Capture::start(
        c.underlay().host(),
        "any",
        c.underlay().tmp(),
        "first-contact",
    );
    for v6 in [false, true] {
        assert!(
            can_ping_eventually(&a, &ip_fam(&rb, v6), 30),
            "a -> b (v6 {v6})"
        );
        assert!(
            can_ping_eventually(&b, &ip_fam(&ra, v6), 30),
            "b -> a (v6 {v6})"
        );
    }
    let frames = cap.stop();
    let mine: Vec<_> = frames.iter().filter(|f| f.vni == 4400).collect();
    assert!(
        mine.len() >= 4,
        "control: the pods' pings cross inside VXLAN: {}",
        frames.len()
    );
    let bad: Vec<String> = mine
        .iter()
        .filter(|f| f.is_arp_request() || f.is_neighbour_solicitation() || f.is_flooded())
        .map(|f| f.describe())
        .collect();
    assert!(
        bad.is_empty(),
        "resolution or flooding inside VXLAN: {bad:#?}"
    );
    for (i, p) in [(0, &w1), (1, &w2), (0, &a), (1, &b)] {
        c.tool(i, &conf).del(p).assert_ok();
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn first_contact_puts_no_arp_or_neighbour_solicitation_inside_vxlan() {
    let c = OverlayCluster::start(3);
    quiet_first_contact(&c);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn first_contact_puts_no_arp_or_neighbour_solicitation_inside_vxlan_over_ipv6() {
    let c = OverlayCluster::start_v6(3);
    quiet_first_contact(&c);
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_host_without_pods_has_no_device_hears_nothing_and_the_device_follows_its_pods() {
    let c = OverlayCluster::start(3);
    let vx = "cnirsvx4500";
    let conf = c.conflist_ranges(
        "dl",
        4500,
        &["10.232.0.0/16", "fd32::/64"],
        json!({"isGateway": true, "isDefaultGateway": true}),
    );
    let (p1, p2) = (c.host(0).pod("p1"), c.host(1).pod("p2"));
    c.tool(0, &conf).add(&p1).assert_ok();
    let r2 = c.tool(1, &conf).add(&p2).assert_ok().json().clone();
    assert!(can_ping_eventually(&p1, &ip(&r2), 30));
    assert!(
        !c.has_link(2, vx),
        "h3 has no pod on the network, so no device"
    );
    // Broadcasts and multicasts of the network (IPv4 broadcast ping, ARP for an address
    // nobody has, IPv6 all-nodes ping): h3 hears none, and nothing crosses the underlay.
    let to_h3 = Capture::start(c.underlay().host(), "ulh3", c.underlay().tmp(), "to-h3");
    let all = Capture::start(c.underlay().host(), "any", c.underlay().tmp(), "all");
    let _ = p1.exec("ping", &["-b", "-c2", "-W1", "255.255.255.255"]);
    let _ = p1.exec("ping", &["-b", "-c2", "-W1", "10.232.255.255"]);
    let _ = p1.exec("ping", &["-c1", "-W1", "10.232.200.7"]);
    let _ = p1.exec("ping", &["-6", "-c2", "-W1", "ff02::1%eth0"]);
    // Control: unicast to the pod on h2 does cross.
    assert!(can_ping(&p1, &ip(&r2)));
    let h3 = to_h3.stop();
    let frames = all.stop();
    assert!(
        h3.is_empty(),
        "h3 received: {:#?}",
        h3.iter().map(|f| f.describe()).collect::<Vec<_>>()
    );
    assert!(!frames.is_empty(), "control: the unicast ping crossed");
    let flooded: Vec<String> = frames
        .iter()
        .filter(|f| f.is_flooded())
        .map(|f| f.describe())
        .collect();
    assert!(flooded.is_empty(), "{flooded:#?}");
    // h3's first pod brings the device and its entries; the others route h3's block.
    let p3 = c.host(2).pod("p3");
    let r3 = c.tool(2, &conf).add(&p3).assert_ok().json().clone();
    assert!(c.has_link(2, vx));
    assert!(
        eventually(50, || c.fdb(2, vx).len() == 2),
        "{:?}",
        c.fdb(2, vx)
    );
    assert!(eventually(50, || c.neighbours(2, vx).len() == 2));
    assert!(can_ping_eventually(&p3, &ip(&r2), 30), "p3 -> p2");
    assert!(
        can_ping_eventually(&p1, &ip_fam(&r3, true), 30),
        "p1 -> p3 over IPv6"
    );
    let routes = c.table_routes(2, 4500);
    assert!(
        routes.iter().filter(|r| r.contains(" via ")).count() >= 4,
        "{routes:?}"
    );
    // Its last pod takes them away: the device (and with it its FDB, neighbours and block
    // routes), the network's table and rules.
    c.tool(2, &conf).del(&p3).assert_ok();
    assert!(!c.has_link(2, vx), "the device stays after the last pod");
    assert!(
        c.table_routes(2, 4500).is_empty(),
        "{:?}",
        c.table_routes(2, 4500)
    );
    let rules = c.host(2).host().exec("ip", &["rule", "show"]).stdout;
    assert!(!rules.contains("10.232.0.0/16"), "{rules}");
    c.tool(0, &conf).del(&p1).assert_ok();
    c.tool(1, &conf).del(&p2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn isolation_chained_after_overlay_keeps_two_dual_stack_overlays_apart_across_hosts() {
    let c = OverlayCluster::start(3);
    let with_isolation = |name: &str, vni: u32, v4: &str, v6: &str| {
        let mut conf = c.conflist_ranges(
            name,
            vni,
            &[v4, v6],
            json!({"isGateway": true, "isDefaultGateway": true}),
        );
        conf["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "isolation"}));
        conf
    };
    let ca = with_isolation("ova", 101, "10.251.0.0/16", "fd51::/64");
    let cb = with_isolation("ovb", 102, "10.252.0.0/16", "fd52::/64");
    // a1, b1 on h1; a2, b2 on h2.
    let (a1, b1) = (c.host(0).pod("a1"), c.host(0).pod("b1"));
    let (a2, b2) = (c.host(1).pod("a2"), c.host(1).pod("b2"));
    let ra1 = c.tool(0, &ca).add(&a1).assert_ok().json().clone();
    let rb1 = c.tool(0, &cb).add(&b1).assert_ok().json().clone();
    let ra2 = c.tool(1, &ca).add(&a2).assert_ok().json().clone();
    let rb2 = c.tool(1, &cb).add(&b2).assert_ok().json().clone();
    let apart = |phase: &str| {
        for v6 in [false, true] {
            assert!(
                can_ping_eventually(&a1, &ip_fam(&ra2, v6), 30),
                "{phase}: a1 -> a2 (same overlay, v6 {v6})"
            );
            assert!(
                can_ping_eventually(&b2, &ip_fam(&rb1, v6), 30),
                "{phase}: b2 -> b1 (same overlay, v6 {v6})"
            );
            for (from, to, what) in [
                (
                    &a1,
                    ip_fam(&rb2, v6),
                    "a1 -> b2 (other overlay, other host)",
                ),
                (&b2, ip_fam(&ra1, v6), "b2 -> a1"),
                (&a1, ip_fam(&rb1, v6), "a1 -> b1 (other overlay, same host)"),
                (&a2, ip_fam(&rb1, v6), "a2 -> b1"),
            ] {
                assert!(
                    !can_ping(from, &to),
                    "{phase}: {what} (v6 {v6}) must be isolated"
                );
            }
        }
    };
    apart("at start");
    // A firewall reload on h1 and h2: the agents (their watchers) put the table back, with the
    // VXLAN devices in the isolated set.
    for i in [0, 1] {
        c.host(i).host().exec_ok("nft", &["flush", "ruleset"]);
    }
    for i in [0, 1] {
        assert!(
            eventually(50, || c
                .host(i)
                .host()
                .exec("nft", &["list", "set", "inet", "cnirs", "isolated_br"])
                .stdout
                .contains("cnirsvx101")),
            "h{}: the table is back with the devices:\n{}",
            i + 1,
            c.agent_log(i)
        );
    }
    apart("after nft flush ruleset");
    // Control: without the isolation elements on h1 and h2, a1 reaches b2 (so the drop above
    // was isolation's, not a missing route).
    for i in [0, 1] {
        c.host(i)
            .host()
            .exec_ok("nft", &["flush", "set", "inet", "cnirs", "isolated_br"]);
    }
    assert!(can_ping_eventually(&a1, &ip(&rb2), 20), "control: a1 -> b2");
    assert!(
        can_ping_eventually(&a1, &ip_fam(&rb2, true), 20),
        "control: a1 -> b2 (v6)"
    );
    c.tool(0, &ca).del(&a1).assert_ok();
    c.tool(0, &cb).del(&b1).assert_ok();
    c.tool(1, &ca).del(&a2).assert_ok();
    c.tool(1, &cb).del(&b2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn internal_dual_stack_overlay_is_sealed_across_hosts_even_without_the_firewall() {
    let c = OverlayCluster::start(3);
    let ci = c.conflist_ranges(
        "ovint",
        201,
        &["10.253.0.0/16", "fd53::/64"],
        json!({"internal": true, "isGateway": true, "ipMasq": true}),
    );
    let ce = c.conflist_ranges(
        "ovext",
        202,
        &["10.254.0.0/16", "fd54::/64"],
        json!({"isGateway": true, "isDefaultGateway": true, "ipMasq": true}),
    );
    let (i1, i2, e1) = (
        c.host(0).pod("i1"),
        c.host(1).pod("i2"),
        c.host(0).pod("e1"),
    );
    let r1 = c.tool(0, &ci).add(&i1).assert_ok().json().clone();
    let r2 = c.tool(1, &ci).add(&i2).assert_ok().json().clone();
    let re = c.tool(0, &ce).add(&e1).assert_ok().json().clone();
    assert!(
        !i1.routes(false).iter().any(|r| r["dst"] == "default"),
        "no default route in an internal overlay"
    );
    // Even with its own default route via the gateway, nothing beyond the overlay answers:
    // not the hosts' underlay addresses, not the router, not the far server, not the other
    // overlay (both families).
    for p in [&i1, &i2] {
        p.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.253.0.1",
            "dev",
            "eth0",
            "onlink",
        ]);
        p.ip(&[
            "-6", "route", "add", "default", "via", "fd53::1", "dev", "eth0", "onlink",
        ]);
    }
    let srv = TcpServer::start(c.underlay().host(), "0.0.0.0", 0, "far");
    // `own_host`: whether the pods' own hosts' underlay addresses are checked. They are
    // delivered locally (the `local` table is looked up before any rule), so only the
    // firewall's input chain keeps them from an internal pod: with the table flushed, they
    // are not part of the kernel-level seal (everything routed is).
    let sealed = |phase: &str, own_host: bool| {
        for v6 in [false, true] {
            assert!(
                can_ping_eventually(&i1, &ip_fam(&r2, v6), 30),
                "{phase}: i1 -> i2 across hosts (v6 {v6})"
            );
            assert!(
                can_ping_eventually(&i2, &ip_fam(&r1, v6), 30),
                "{phase}: i2 -> i1 (v6 {v6})"
            );
            for (from, to) in [(&i1, ip_fam(&re, v6)), (&e1, ip_fam(&r1, v6))] {
                assert!(
                    !can_ping(from, &to),
                    "{phase}: {} -> {to} must be sealed",
                    from.name()
                );
            }
        }
        let mut targets = vec![
            (&i1, host_addr(1).to_string()),
            (&i2, host_addr(0).to_string()),
            (&i1, ROUTER.to_string()),
            (&i1, FAR.to_string()),
        ];
        if own_host {
            targets.push((&i1, host_addr(0).to_string()));
            targets.push((&i2, host_addr(1).to_string()));
        }
        for (from, to) in targets {
            assert!(
                !can_ping(from, &to),
                "{phase}: {} -> {to} must be sealed",
                from.name()
            );
        }
        assert!(!can_connect_tcp(&i1, &FAR.to_string(), srv.port()));
        assert!(srv.peers().is_empty(), "{phase}: {:?}", srv.peers());
    };
    sealed("at start", true);
    // The firewall gone for good on both hosts (their agents killed, so nothing restores it;
    // killed, not stopped, so their leases stay and the hosts keep each other's entries for
    // the 20-30 s the checks need): the kernel-level seal, the network's own routing table
    // and rules, still holds.
    for i in [0, 1] {
        c.kill_agent(i);
        c.host(i).host().exec_ok("nft", &["flush", "ruleset"]);
    }
    sealed("after nft flush ruleset, no agent", false);
    // Control: with the agents back (the table restored, masquerade included), the external
    // overlay's pod does reach the far server.
    for i in [0, 1] {
        c.start_agent(i);
    }
    assert!(
        can_ping_eventually(&e1, &FAR.to_string(), 50),
        "control: e1 -> far"
    );
    c.tool(0, &ci).del(&i1).assert_ok();
    c.tool(1, &ci).del(&i2).assert_ok();
    c.tool(0, &ce).del(&e1).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn adds_keep_working_with_an_etcd_member_killed_and_agents_follow() {
    let c = OverlayCluster::start(3);
    let conf = c.conflist("ovk", 301, "10.249.0.0/16", json!({"isGateway": true}));
    let (p1, p2) = (c.host(0).pod("p1"), c.host(1).pod("p2"));
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    c.tool(1, &conf).add(&p2).assert_ok();
    // Kill the member on h1 (the first endpoint of every client), mid-test.
    c.etcd().kill(0);
    let (q1, q3) = (c.host(0).pod("q1"), c.host(2).pod("q3"));
    let rq1 = c.tool(0, &conf).add(&q1).assert_ok().json().clone();
    let rq3 = c.tool(2, &conf).add(&q3).assert_ok().json().clone();
    let set: BTreeSet<String> = [&r1, &rq1, &rq3].iter().map(|r| ip(r)).collect();
    assert_eq!(set.len(), 3);
    // The agents, whose watch broke or whose member died, still route the new block of h3.
    assert!(
        can_ping_eventually(&q3, &ip(&rq1), 30),
        "q3 (h3) -> q1 (h1)"
    );
    assert!(
        can_ping_eventually(&p2, &ip(&rq3), 30),
        "p2 (h2) -> q3 (h3)"
    );
    let mac3 = c.link_mac(2, "cnirsvx301").unwrap();
    assert!(
        eventually(30, || c
            .fdb(0, "cnirsvx301")
            .iter()
            .any(|l| l.starts_with(&mac3))),
        "h1's agent programmed h3 with its own member down: {:?}\n{}",
        c.fdb(0, "cnirsvx301"),
        c.agent_log(0)
    );
    for (i, p) in [(0, &p1), (1, &p2), (0, &q1), (2, &q3)] {
        c.tool(i, &conf).del(p).assert_ok();
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn sixteen_parallel_adds_across_hosts_get_distinct_addresses() {
    let c = OverlayCluster::start(3);
    let conf = c.conflist("ovp", 401, "10.248.0.0/16", json!({"isGateway": true}));
    let pods: Vec<(usize, Netns)> = (0..16)
        .map(|k| (k % 3, c.host(k % 3).pod(&format!("x{k}"))))
        .collect();
    let results: Vec<CmdOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(h, p)| {
                let (c, conf) = (&c, &conf);
                s.spawn(move || c.tool(*h, conf).add(p))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = Vec::new();
    for r in &results {
        r.assert_ok();
        ips.push(ip(r.json()));
    }
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 16, "duplicates among {ips:?}");
    assert_eq!(att_keys(&c, "ovp").len(), 16);
    // One from each host reaches one on each other host.
    let first_on = |h: usize| pods.iter().position(|(x, _)| *x == h).unwrap();
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let (i, j) = (first_on(a), first_on(b));
        assert!(can_ping_eventually(&pods[i].1, &ips[j], 30), "x{i} -> x{j}");
    }
    for (h, p) in &pods {
        c.tool(*h, &conf).del(p).assert_ok();
    }
    assert!(att_keys(&c, "ovp").is_empty());
    for h in 0..3 {
        assert!(
            !c.has_link(h, "cnirsvx401"),
            "h{}: the device went with the last pod",
            h + 1
        );
    }
}

/// With its agent's lease renewed in the last 15 s, a host hands out addresses of its own block
/// with etcd gone (etcd says who holds a block, the host who holds an address): pods start
/// and reach each other. Once the agent has not renewed for longer (the lease may have expired
/// and the block may be another node's), the same ADD reads etcd and fails with code 11.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pods_start_without_etcd_while_the_agent_vouches_and_fail_closed_once_it_cannot() {
    let c = OverlayCluster::start(1);
    let conf = c.conflist("ovq", 4261, "10.236.0.0/16", json!({"isGateway": true}));
    let (p0, p1, p2) = (
        c.host(0).pod("q0"),
        c.host(0).pod("q1"),
        c.host(0).pod("q2"),
    );
    let r0 = c.tool(0, &conf).add(&p0).assert_ok().json().clone();
    // The agent's file lists the network and the block the first ADD claimed (from the
    // events that followed it).
    let file = c.host(0).run_dir().join("cluster/cnirs/h1/agent.json");
    let lists = || {
        let v: Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap_or_default()).unwrap_or_default();
        v["networks"]["ovq"]["vni"] == 4261
            && v["blocks"]["ovq"].as_array().is_some_and(|b| !b.is_empty())
    };
    assert!(
        eventually(20, lists),
        "{}: {:?}",
        file.display(),
        std::fs::read_to_string(&file)
    );
    for i in 0..c.etcd().len() {
        c.etcd().kill(i);
    }
    let r1 = c.tool(0, &conf).add(&p1).assert_ok().json().clone();
    assert_ne!(ip(&r1), ip(&r0));
    assert!(can_ping(&p1, &ip(&r0)), "q1 -> q0 with etcd down");
    c.tool(0, &conf).del(&p1).assert_ok();
    assert_eq!(
        c.leases(0, "ovq"),
        [ip(&r0)],
        "DEL released q1's without etcd"
    );
    // Control: no renewal for over 15 s, the file no longer vouches: etcd is needed, and down.
    std::thread::sleep(Duration::from_secs(16));
    let out = c.tool(0, &conf).add(&p2);
    assert_eq!(out.cni_error_code(), Some(11), "{out}");
    assert_eq!(
        c.leases(0, "ovq"),
        [ip(&r0)],
        "nothing held for the refused ADD"
    );
    c.tool(0, &conf).del(&p0).assert_ok();
}
