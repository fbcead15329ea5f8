//! Kernel tests of the `overlay` plugin, `etcd-ipam` and the node agent on a simulated
//! three-host cluster ([`conformance::overlay::OverlayCluster`]: an underlay netns with a
//! bridge, three host netns on it, a 3-member etcd, an agent per host), driven through cnitool
//! with the same conflist on every host.
//!
//! Needs the release binaries (`make build`: overlay, etcd-ipam, isolation, cnirs-agent) and
//! cnitool (`make cnitool`); run as root:
//! `cargo test -p conformance --test overlay -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap
#![allow(clippy::needless_range_loop)] // hosts and pods are indexed together

use std::collections::BTreeSet;
use std::time::Duration;

use conformance::overlay::{host_addr, OverlayCluster, FAR, ROUTER};
use conformance::*;
use serde_json::{json, Value};

fn ip(r: &Value) -> String {
    ip_of(&first_ip(r)).to_string()
}

/// `ping -M do -s SIZE` (iputils): a DF packet of SIZE + 28 bytes.
fn ping_df(from: &Netns, addr: &str, payload: u32) -> CmdOutput {
    run_with(
        from.command("ping")
            .args(["-M", "do", "-c1", "-W1", "-s", &payload.to_string(), addr]),
        b"",
        Duration::from_secs(5),
    )
}

/// Poll `f` up to ~`tries` x 100 ms; true as soon as it holds.
fn eventually(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn pods_on_three_hosts_reach_each_other_with_the_overlay_mtu_and_del_propagates() {
    let c = OverlayCluster::start(3);
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

    // Every pod reaches every other across hosts.
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

    // The cluster knows the pods and the network; the other hosts pin each pod's MAC to its
    // host's VTEP.
    let keys = c.keys(0, "pods/ov/");
    for a in &ips {
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("/{a}"))),
            "{keys:?}"
        );
    }
    assert_eq!(c.keys(0, "networks/ov").len(), 1);
    let mac1 = res[1]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let want = format!("{mac1} dst {}", host_addr(1));
    assert!(
        eventually(30, || c
            .fdb(0, "cnirsvx4242")
            .iter()
            .any(|l| l.contains(&want))),
        "h1 fdb: {:?}",
        c.fdb(0, "cnirsvx4242")
    );
    assert!(c
        .fdb(0, "cnirsvx4242")
        .iter()
        .any(|l| l.starts_with(&format!("00:00:00:00:00:00 dst {}", host_addr(2)))));

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

    // DEL on h2: its address is unreachable from the others, its record and FDB entry go.
    c.tool(1, &conf).del(&pods[1]).assert_ok();
    assert!(!can_ping(&pods[0], &ips[1]));
    assert!(!can_ping(&pods[2], &ips[1]));
    assert!(!c
        .keys(0, "pods/ov/")
        .iter()
        .any(|k| k.ends_with(&format!("/{}", ips[1]))));
    assert!(
        eventually(30, || !c
            .fdb(0, "cnirsvx4242")
            .iter()
            .any(|l| l.contains(&mac1))),
        "{:?}",
        c.fdb(0, "cnirsvx4242")
    );
    // DEL again is fine.
    c.tool(1, &conf).del(&pods[1]).assert_ok();
    // The others still talk.
    assert!(can_ping(&pods[0], &ips[2]));

    // The agent leaves on SIGTERM: exit 0, its host key revoked, the flood entry to it removed
    // (the entries of its pods stay while their records do: a restarting agent does not cut
    // established unicast traffic).
    assert_eq!(c.stop_agent(2), Some(0), "{}", c.agent_log(2));
    assert!(!c.keys(0, "hosts/").iter().any(|k| k.ends_with("/h3")));
    assert!(
        eventually(30, || !c.fdb(0, "cnirsvx4242").iter().any(
            |l| l.starts_with(&format!("00:00:00:00:00:00 dst {}", host_addr(2)))
        )),
        "{:?}",
        c.fdb(0, "cnirsvx4242")
    );
    // CHECK passes on a live pod; GC on h1 listing only p0 drops the record of a pod it does
    // not list (g, on h1) and leaves p0's and h3's alone.
    c.tool(0, &conf).check(&pods[0]).assert_ok();
    let g = c.host(0).pod("g");
    let rg = c.tool(0, &conf).add(&g).assert_ok().json().clone();
    let t0 = c.tool(0, &conf);
    let keep = json!([{"containerID": t0.container_id_for(&pods[0]), "ifname": "eth0"}]);
    c.tool(0, &conf).valid_attachments(keep).gc().assert_ok();
    let left = c.keys(0, "pods/ov/");
    assert!(
        !left.iter().any(|k| k.ends_with(&format!("/{}", ip(&rg)))),
        "{left:?}"
    );
    assert!(
        left.iter().any(|k| k.ends_with(&format!("/{}", ips[0]))),
        "{left:?}"
    );
    assert!(
        left.iter().any(|k| k.ends_with(&format!("/{}", ips[2]))),
        "{left:?}"
    );
    c.tool(0, &conf).del(&g).assert_ok();
    for i in [0, 2] {
        c.tool(i, &conf).del(&pods[i]).assert_ok();
    }
    assert!(c.keys(0, "pods/ov/").is_empty(), "{:?}", c.keys(0, "pods/"));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn isolation_chained_after_overlay_keeps_two_overlays_apart_across_hosts() {
    let c = OverlayCluster::start(3);
    let with_isolation = |name: &str, vni: u32, subnet: &str| {
        let mut conf = c.conflist(
            name,
            vni,
            subnet,
            json!({"isGateway": true, "isDefaultGateway": true}),
        );
        conf["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "isolation"}));
        conf
    };
    let ca = with_isolation("ova", 101, "10.251.0.0/16");
    let cb = with_isolation("ovb", 102, "10.252.0.0/16");
    // a1, b1 on h1; a2, b2 on h2.
    let (a1, b1) = (c.host(0).pod("a1"), c.host(0).pod("b1"));
    let (a2, b2) = (c.host(1).pod("a2"), c.host(1).pod("b2"));
    let ra1 = c.tool(0, &ca).add(&a1).assert_ok().json().clone();
    let rb1 = c.tool(0, &cb).add(&b1).assert_ok().json().clone();
    let ra2 = c.tool(1, &ca).add(&a2).assert_ok().json().clone();
    let rb2 = c.tool(1, &cb).add(&b2).assert_ok().json().clone();
    assert!(
        can_ping_eventually(&a1, &ip(&ra2), 30),
        "a1 -> a2 (same overlay)"
    );
    assert!(
        can_ping_eventually(&b2, &ip(&rb1), 30),
        "b2 -> b1 (same overlay)"
    );
    for (from, to, what) in [
        (&a1, ip(&rb2), "a1 -> b2 (other overlay, other host)"),
        (&b2, ip(&ra1), "b2 -> a1"),
        (&a1, ip(&rb1), "a1 -> b1 (other overlay, same host)"),
        (&a2, ip(&rb1), "a2 -> b1"),
    ] {
        assert!(!can_ping(from, &to), "{what} must be isolated");
    }
    // Control: without the isolation element on h1 and h2, a1 reaches b2 (so the drop above
    // was isolation's, not a missing route).
    for i in [0, 1] {
        c.host(i)
            .host()
            .exec_ok("nft", &["flush", "set", "inet", "cnirs", "isolated_br"]);
    }
    assert!(can_ping_eventually(&a1, &ip(&rb2), 20), "control: a1 -> b2");
    c.tool(0, &ca).del(&a1).assert_ok();
    c.tool(0, &cb).del(&b1).assert_ok();
    c.tool(1, &ca).del(&a2).assert_ok();
    c.tool(1, &cb).del(&b2).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn internal_overlay_is_sealed_across_hosts() {
    let c = OverlayCluster::start(3);
    let ci = c.conflist(
        "ovint",
        201,
        "10.253.0.0/16",
        json!({"internal": true, "isGateway": true, "ipMasq": true}),
    );
    let ce = c.conflist(
        "ovext",
        202,
        "10.254.0.0/16",
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
        can_ping_eventually(&i1, &ip(&r2), 30),
        "i1 -> i2 across hosts"
    );
    assert!(can_ping_eventually(&i2, &ip(&r1), 30), "i2 -> i1");
    assert!(
        !i1.routes(false).iter().any(|r| r["dst"] == "default"),
        "no default route in an internal overlay"
    );
    // Even with its own default route via the gateway, nothing beyond the overlay answers:
    // not the hosts' underlay addresses, not the router, not the far server.
    for p in [&i1, &i2] {
        p.ip(&["route", "add", "default", "via", "10.253.0.1"]);
    }
    let srv = TcpServer::start(c.underlay().host(), "0.0.0.0", 0, "far");
    for (from, to) in [
        (&i1, host_addr(0).to_string()),
        (&i1, host_addr(1).to_string()),
        (&i2, host_addr(1).to_string()),
        (&i2, host_addr(0).to_string()),
        (&i1, ROUTER.to_string()),
        (&i1, FAR.to_string()),
        (&i1, ip(&re)),
        (&e1, ip(&r1)),
    ] {
        assert!(
            !can_ping(from, &to),
            "{} -> {to} must be sealed",
            from.name()
        );
    }
    assert!(!can_connect_tcp(&i1, &FAR.to_string(), srv.port()));
    assert!(srv.peers().is_empty(), "{:?}", srv.peers());
    // A firewall reload on host 1: `cnirs agent` (its watcher) puts the table back, and the
    // pods stay sealed throughout.
    c.host(0).host().exec_ok("nft", &["flush", "ruleset"]);
    assert!(
        eventually(50, || c
            .host(0)
            .host()
            .exec("nft", &["list", "table", "inet", "cnirs"])
            .success()),
        "the agent restores table inet cnirs after a flush:\n{}",
        c.agent_log(0)
    );
    assert!(
        !can_ping(&i1, &host_addr(1).to_string()),
        "sealed after the flush"
    );
    assert!(!can_connect_tcp(&i1, &FAR.to_string(), srv.port()));
    // Control: the external overlay's pod does reach the far server.
    assert!(
        can_ping_eventually(&e1, &FAR.to_string(), 20),
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
    // The agents, whose watch broke or whose member died, still program the new pods.
    assert!(
        can_ping_eventually(&q3, &ip(&rq1), 30),
        "q3 (h3) -> q1 (h1)"
    );
    assert!(
        can_ping_eventually(&p2, &ip(&rq3), 30),
        "p2 (h2) -> q3 (h3)"
    );
    let mac = rq3["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        eventually(30, || c
            .fdb(0, "cnirsvx301")
            .iter()
            .any(|l| l.contains(&mac))),
        "h1's agent programmed q3 with its own member down: {:?}\n{}",
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
    assert_eq!(c.keys(0, "pods/ovp/").len(), 16);
    // One from each host reaches one on each other host.
    let first_on = |h: usize| pods.iter().position(|(x, _)| *x == h).unwrap();
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let (i, j) = (first_on(a), first_on(b));
        assert!(can_ping_eventually(&pods[i].1, &ips[j], 30), "x{i} -> x{j}");
    }
    for (h, p) in &pods {
        c.tool(*h, &conf).del(p).assert_ok();
    }
    assert!(c.keys(0, "pods/ovp/").is_empty());
}
