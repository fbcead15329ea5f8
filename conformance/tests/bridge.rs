//! Kernel conformance tests of OUR `bridge` and `internal-bridge` (with our host-local),
//! driven through cnitool (libcni 1.1.2) or, where a runtime would do so, the binary itself.
//! Every test makes its own [`TestNet`] (private host netns, pods, outside) and temp dirs.
//!
//! Needs the release binaries: `cargo build --release -p bridge -p internal-bridge -p
//! host-local -p portmap -p isolation`, then, as root:
//! `cargo test -p conformance --test bridge -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::time::Instant;

use conformance::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

/// A one-plugin conflist (cniVersion 1.0.0, the newest libcni 1.1.2 knows): `plugin` is
/// `bridge` or `internal-bridge`, with `isGateway` and host-local over `ranges` in the test's
/// dataDir; `extra` keys are merged into the plugin (an `ipam` object into its ipam).
fn conf(
    net: &TestNet,
    name: &str,
    plugin: &str,
    bridge: &str,
    ranges: Value,
    extra: Value,
) -> Value {
    let mut p = json!({
        "type": plugin,
        "bridge": bridge,
        "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": net.data_dir(), "ranges": ranges},
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if k == "ipam" {
            for (ik, iv) in v.as_object().cloned().unwrap_or_default() {
                p["ipam"][ik] = iv;
            }
        } else {
            p[k] = v;
        }
    }
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [p]})
}

/// `[[{"subnet": S}]]` for each subnet (one range set per subnet).
fn ranges(subnets: &[&str]) -> Value {
    Value::Array(subnets.iter().map(|s| json!([{ "subnet": s }])).collect())
}

/// The first plugin of a conflist as a standalone plugin config (what a runtime pipes into
/// the binary).
fn plugin_conf(conflist: &Value) -> String {
    let mut p = conflist["plugins"][0].clone();
    p["name"] = conflist["name"].clone();
    p["cniVersion"] = conflist["cniVersion"].clone();
    p.to_string()
}

/// The `n`-th address of a result, without its prefix.
fn ip(result: &Value, n: usize) -> String {
    let a = result["ips"][n]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no ips[{n}]: {result}"));
    ip_of(a).to_string()
}

/// The result's address of one family (v6 or not), without its prefix.
fn ip_fam(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| ip_of(i["address"].as_str().unwrap()))
        .find(|a| a.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("no {} address in {result}", if v6 { "v6" } else { "v4" }))
        .to_string()
}

/// host-local's lease file for `addr` of network `network`.
fn lease(net: &TestNet, network: &str, addr: &str) -> PathBuf {
    net.data_dir().join(network).join(addr)
}

/// The host veth name our bridge derives: "veth" + 11 hex of FNV-1a(network, ctr, ifname),
/// each part followed by a NUL (plugins/bridge/src/plan.rs `host_veth_name`). Checked against
/// a real ADD result in [`bridge_two_pods_gateway_masquerade_and_del`].
fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// Runs every check on its own thread (a failed ping costs 1 s, so negative checks run
/// together) and returns the labels of those that returned `true`.
fn parallel(checks: Vec<(String, Box<dyn FnOnce() -> bool + Send + '_>)>) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .into_iter()
            .map(|(label, f)| (label, s.spawn(f)))
            .collect();
        handles
            .into_iter()
            .filter_map(|(label, h)| h.join().unwrap().then_some(label))
            .collect()
    })
}

type Check<'a> = (String, Box<dyn FnOnce() -> bool + Send + 'a>);

fn ping_check<'a>(label: &str, from: &'a Netns, addr: String) -> Check<'a> {
    (label.to_owned(), Box::new(move || can_ping(from, &addr)))
}

fn ping_eventually_check<'a>(label: &str, from: &'a Netns, addr: String) -> Check<'a> {
    (
        label.to_owned(),
        Box::new(move || can_ping_eventually(from, &addr, 5)),
    )
}

/// Asserts that every check passes (checks run in parallel).
#[track_caller]
fn assert_all(what: &str, checks: Vec<Check<'_>>) {
    let labels: Vec<String> = checks.iter().map(|c| c.0.clone()).collect();
    let ok = parallel(checks);
    let failed: Vec<&String> = labels.iter().filter(|l| !ok.contains(l)).collect();
    assert!(
        failed.is_empty(),
        "{what}: these should pass but failed: {failed:?}"
    );
}

/// Asserts that no check passes (checks run in parallel).
#[track_caller]
fn assert_none(what: &str, checks: Vec<Check<'_>>) {
    let ok = parallel(checks);
    assert!(
        ok.is_empty(),
        "{what}: these should fail but passed: {ok:?}"
    );
}

/// A fake IPAM plugin in the test's temp dir that fails ADD (code 11) and accepts anything
/// else; returns its directory (to add to CNI_PATH).
fn failing_ipam(net: &TestNet) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = net.tmp().join("ipambin");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("cnirs-failing-ipam");
    std::fs::write(
        &bin,
        "#!/bin/sh\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then\n\
           echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"cnirs test IPAM refuses\"}'\n\
           exit 1\n\
         fi\n\
         exit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

// ---------------------------------------------------------------- bridge

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_two_pods_gateway_masquerade_and_del() {
    let t0 = Instant::now();
    let net = TestNet::new();
    let out = net.outside();
    out.remove_return_routes();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let c = conf(
        &net,
        "cnirs-n1",
        "bridge",
        "cnirs-br1",
        ranges(&["10.231.1.0/24"]),
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let tool = net.cnitool(&c);
    let add_a = tool.add(&a);
    let ra = add_a.assert_ok().json().clone();
    let add_b = tool.add(&b);
    let rb = add_b.assert_ok().json().clone();
    eprintln!(
        "cnitool add (bridge + host-local): first {:?} (creates the bridge and the table), second {:?}",
        add_a.elapsed, add_b.elapsed
    );
    let (ip_a, ip_b) = (ip(&ra, 0), ip(&rb, 0));
    assert_ne!(ip_a, ip_b);
    assert_eq!(a.addrs("eth0"), vec![format!("{ip_a}/24")]);
    // An IPv4-only network: the pod's interface has no IPv6 at all (no link-local address to
    // probe, solicit or report from), as Docker does.
    let v6 = a.ip(&["-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v6.stdout.trim().is_empty(), "{}", v6.stdout);
    assert_eq!(a.sysctl("net.ipv6.conf.eth0.disable_ipv6"), "1");

    // The result names bridge, host veth (the derived name), pod interface.
    let cid_a = tool.container_id_for(&a);
    let veth_a = host_veth_name("cnirs-n1", &cid_a, "eth0");
    assert_eq!(ra["interfaces"][0]["name"], "cnirs-br1", "{ra}");
    assert_eq!(ra["interfaces"][1]["name"], veth_a.as_str(), "{ra}");
    assert_eq!(ra["interfaces"][2]["name"], "eth0", "{ra}");
    assert_eq!(ra["interfaces"][2]["sandbox"], a.path_str(), "{ra}");
    assert!(net.host().link(&veth_a).is_some(), "{veth_a} on the host");
    let lease_a = lease(&net, "cnirs-n1", &ip_a);
    assert_eq!(
        std::fs::read_to_string(&lease_a).unwrap(),
        format!("{cid_a}\r\neth0")
    );

    // Pods reach each other and the gateway.
    let gw = "10.231.1.1".to_owned();
    assert_all(
        "same bridge",
        vec![
            ping_eventually_check("a->b", &a, ip_b.clone()),
            ping_eventually_check("b->a", &b, ip_a.clone()),
            ping_eventually_check("a->gw", &a, gw.clone()),
            ping_eventually_check("b->gw", &b, gw.clone()),
        ],
    );

    // The outside answers only masqueraded traffic (no return route to 10.231.1.0/24).
    assert!(can_ping(&a, &out.far_v4.to_string()), "a -> outside");
    let srv = TcpServer::start(&out.ns, "0.0.0.0", 0, "far");
    let reply = tcp_request(&a, &out.far_v4.to_string(), srv.port()).expect("a reaches far");
    assert!(reply.starts_with("far "), "{reply}");
    let peers = srv.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        peers[0].ip().to_string(),
        out.host_v4.to_string(),
        "source must be masqueraded to the host's address, not the pod's {ip_a}"
    );
    drop(srv);

    // DEL a: its veth (both ends) and lease go; b keeps working.
    let del_a = tool.del(&a);
    del_a.assert_ok();
    eprintln!("cnitool del (bridge + host-local): {:?}", del_a.elapsed);
    assert!(
        net.host().link(&veth_a).is_none(),
        "{veth_a} left on the host"
    );
    assert!(a.link("eth0").is_none(), "eth0 left in pod a");
    assert!(!lease_a.exists(), "lease {} left", lease_a.display());
    assert!(lease(&net, "cnirs-n1", &ip_b).exists(), "b's lease kept");
    assert!(can_ping(&b, &gw), "b -> gateway after DEL a");
    assert!(
        can_ping(&b, &out.far_v4.to_string()),
        "b -> outside after DEL a"
    );
    // DEL twice succeeds.
    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    eprintln!(
        "bridge_two_pods_gateway_masquerade_and_del: {:?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_pod_on_two_networks_reaches_both() {
    let t0 = Instant::now();
    let net = TestNet::new();
    let (p, n1, n2) = (net.pod("p"), net.pod("n1"), net.pod("n2"));
    let c1 = conf(
        &net,
        "cnirs-two1",
        "bridge",
        "cnirs-brA",
        ranges(&["10.232.1.0/24"]),
        json!({"isDefaultGateway": true}),
    );
    let c2 = conf(
        &net,
        "cnirs-two2",
        "bridge",
        "cnirs-brB",
        ranges(&["10.232.2.0/24"]),
        json!({"isDefaultGateway": true, "multicastSnooping": true}),
    );
    let (t1, t2) = (net.cnitool(&c1), net.cnitool(&c2));
    let t2p = net.cnitool(&c2).ifname("eth1");
    let rp1 = t1.add(&p).assert_ok().json().clone();
    let rp2 = t2p.add(&p).assert_ok().json().clone();
    let r1 = t1.add(&n1).assert_ok().json().clone();
    let r2 = t2.add(&n2).assert_ok().json().clone();
    assert_eq!(p.addrs("eth0"), vec![format!("{}/24", ip(&rp1, 0))]);
    assert_eq!(p.addrs("eth1"), vec![format!("{}/24", ip(&rp2, 0))]);
    // IGMP/MLD snooping: off on the bridges we create unless the conf asks for it.
    for (br, want) in [("cnirs-brA", 0), ("cnirs-brB", 1)] {
        let l = net.host().link(br).expect(br);
        assert_eq!(
            l["linkinfo"]["info_data"]["mcast_snooping"], want,
            "{br}: {l}"
        );
    }
    // Two host veths, one per network, on their own bridges.
    let cid = t1.container_id_for(&p);
    for (netname, ifname, br) in [
        ("cnirs-two1", "eth0", "cnirs-brA"),
        ("cnirs-two2", "eth1", "cnirs-brB"),
    ] {
        let v = host_veth_name(netname, &cid, ifname);
        let l = net.host().link(&v).unwrap_or_else(|| panic!("{v} missing"));
        assert_eq!(l["master"], br, "{l}");
    }
    assert_all(
        "pod on two networks",
        vec![
            ping_eventually_check("p->n1", &p, ip(&r1, 0)),
            ping_eventually_check("p->n2", &p, ip(&r2, 0)),
            ping_eventually_check("n1->p(eth0)", &n1, ip(&rp1, 0)),
            ping_eventually_check("n2->p(eth1)", &n2, ip(&rp2, 0)),
        ],
    );
    // The second network's default route was skipped (first network wins): CHECK of both
    // attachments still passes.
    t1.check(&p).assert_ok();
    t2p.check(&p).assert_ok();
    t2p.del(&p).assert_ok();
    assert!(p.link("eth1").is_none() && p.link("eth0").is_some());
    assert!(can_ping(&p, &ip(&r1, 0)), "eth0 still works after DEL eth1");
    t1.del(&p).assert_ok();
    t1.del(&n1).assert_ok();
    t2.del(&n2).assert_ok();
    eprintln!(
        "bridge_pod_on_two_networks_reaches_both: {:?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_dual_stack_reaches_neighbour_over_both() {
    let t0 = Instant::now();
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let c = conf(
        &net,
        "cnirs-ds",
        "bridge",
        "cnirs-brds",
        ranges(&["10.234.1.0/24", "fd00:234::/64"]),
        json!({}),
    );
    let tool = net.cnitool(&c);
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    for (pod, r) in [(&a, &ra), (&b, &rb)] {
        let mut have = pod.addrs("eth0");
        have.sort();
        let mut want = vec![
            format!("{}/24", ip_fam(r, false)),
            format!("{}/64", ip_fam(r, true)),
        ];
        want.sort();
        assert_eq!(have, want, "{}", pod.name());
    }
    assert_all(
        "dual stack",
        vec![
            ping_eventually_check("a->b v4", &a, ip_fam(&rb, false)),
            ping_eventually_check("a->b v6", &a, ip_fam(&rb, true)),
            ping_eventually_check("b->a v4", &b, ip_fam(&ra, false)),
            ping_eventually_check("b->a v6", &b, ip_fam(&ra, true)),
            ping_eventually_check("a->gw v6", &a, "fd00:234::1".into()),
        ],
    );
    // With an IPv6 address from IPAM the pod keeps IPv6 whole, its link-local address too.
    let ll = a.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
    assert!(ll.stdout.contains("fe80::"), "{}", ll.stdout);
    // IPv6 is bridged, yet the bridge's ports (host ends) have no IPv6 of their own.
    let host_end = host_veth_name("cnirs-ds", &tool.container_id_for(&a), "eth0");
    let addrs = net
        .host()
        .ip(&["-6", "-o", "addr", "show", "dev", &host_end]);
    assert!(addrs.stdout.trim().is_empty(), "{}", addrs.stdout);
    let routes = net
        .host()
        .ip(&["-6", "route", "show", "table", "all", "dev", &host_end]);
    assert!(routes.stdout.trim().is_empty(), "{}", routes.stdout);
    tool.check(&a).assert_ok();
    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    for r in [&ra, &rb] {
        for v6 in [false, true] {
            assert!(!lease(&net, "cnirs-ds", &ip_fam(r, v6)).exists());
        }
    }
    eprintln!(
        "bridge_dual_stack_reaches_neighbour_over_both: {:?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_check_passes_then_fails_when_address_removed() {
    let net = TestNet::new();
    let a = net.pod("a");
    let c = conf(
        &net,
        "cnirs-chk",
        "bridge",
        "cnirs-brchk",
        ranges(&["10.238.1.0/24"]),
        json!({}),
    );
    let tool = net.cnitool(&c);
    let r = tool.add(&a).assert_ok().json().clone();
    tool.check(&a).assert_ok();
    let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
    a.ip(&["addr", "del", &addr, "dev", "eth0"]);
    let out = tool.check(&a);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(105), "{out}");
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains(&addr), "message names {addr}: {out}");
    tool.del(&a).assert_ok();
}

// ---------------------------------------------------------------- failures leave nothing

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_failing_ipam_leaves_nothing() {
    let net = TestNet::new();
    let a = net.pod("a");
    let dir = failing_ipam(&net);
    let c = conf(
        &net,
        "cnirs-fail",
        "bridge",
        "cnirs-brf",
        ranges(&["10.235.1.0/24"]),
        json!({}),
    );
    let mut c = c;
    c["plugins"][0]["ipam"] = json!({"type": "cnirs-failing-ipam"});
    let tool = net.cnitool(&c).cni_path(&[cni_path(), dir]);
    let before = HostState::of(&net);
    let pod_before = a.link_names();
    let out = tool.add(&a);
    out.assert_err();
    assert_eq!(
        out.cni_error_code(),
        Some(11),
        "IPAM's code passed up: {out}"
    );
    assert!(
        out.stdout.contains("cnirs test IPAM refuses"),
        "IPAM's error passed up: {out}"
    );
    before
        .diff(&HostState::of(&net))
        .without(legit_leftover(&["cnirs-brf"]))
        .assert_empty("ADD with a failing IPAM");
    assert_eq!(a.link_names(), pod_before, "pod untouched");
    // An IPAM type that is not in CNI_PATH at all.
    c["plugins"][0]["ipam"] = json!({"type": "cnirs-no-such-ipam"});
    let out = net.cnitool(&c).add(&a);
    out.assert_err();
    assert!(
        out.stdout.contains("cnirs-no-such-ipam"),
        "names the missing plugin: {out}"
    );
    before
        .diff(&HostState::of(&net))
        .without(legit_leftover(&["cnirs-brf"]))
        .assert_empty("ADD with a missing IPAM plugin");
    assert_eq!(a.link_names(), pod_before, "pod untouched");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_full_range_leaves_nothing() {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let c = conf(
        &net,
        "cnirs-full",
        "bridge",
        "cnirs-brfull",
        json!([[{"subnet": "10.235.2.0/24", "rangeStart": "10.235.2.10", "rangeEnd": "10.235.2.10"}]]),
        json!({"ipMasq": true}),
    );
    let tool = net.cnitool(&c);
    let ra = tool.add(&a).assert_ok().json().clone();
    assert_eq!(ip(&ra, 0), "10.235.2.10");
    let before = HostState::of(&net);
    let out = tool.add(&b);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(104), "range exhausted: {out}");
    before
        .diff(&HostState::of(&net))
        .assert_empty("ADD into a full range");
    assert!(b.link("eth0").is_none(), "no eth0 in b");
    assert!(can_ping(&a, "10.235.2.1"), "a unharmed");
    tool.del(&a).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_failure_after_ipam_rolls_back() {
    let net = TestNet::new();
    let a = net.pod("a");
    // The IPAM route's gateway is not on any link: the route add fails after the veth and
    // the addresses are in place, so the rollback and the IPAM release must undo them.
    let c = conf(
        &net,
        "cnirs-rb",
        "bridge",
        "cnirs-brrb",
        json!([[{"subnet": "10.235.3.0/24", "rangeStart": "10.235.3.2", "rangeEnd": "10.235.3.2"}]]),
        json!({"ipam": {"routes": [{"dst": "10.99.0.0/16", "gw": "192.168.77.1"}]}}),
    );
    let tool = net.cnitool(&c);
    let before = HostState::of(&net);
    let out = tool.add(&a);
    out.assert_err();
    assert_eq!(
        out.cni_error_code(),
        Some(100),
        "kernel refused the route: {out}"
    );
    assert!(
        out.stdout.contains("10.99.0.0/16"),
        "message names the route: {out}"
    );
    let diff = before
        .diff(&HostState::of(&net))
        .without(legit_leftover(&["cnirs-brrb"]));
    diff.assert_empty("ADD failing after IPAM");
    assert!(
        a.link("eth0").is_none(),
        "eth0 left in pod: {:?}",
        a.link_names()
    );
    // The address was released: the next ADD (fixed config) gets the range's only address.
    let ok = conf(
        &net,
        "cnirs-rb",
        "bridge",
        "cnirs-brrb",
        json!([[{"subnet": "10.235.3.0/24", "rangeStart": "10.235.3.2", "rangeEnd": "10.235.3.2"}]]),
        json!({}),
    );
    let r = net.cnitool(&ok).add(&a).assert_ok().json().clone();
    assert_eq!(ip(&r, 0), "10.235.3.2", "{r}");
    net.cnitool(&ok).del(&a).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_del_after_netns_gone_twice_and_without_netns() {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let c = conf(
        &net,
        "cnirs-gone",
        "bridge",
        "cnirs-brg",
        ranges(&["10.239.1.0/24"]),
        json!({"ipMasq": true}),
    );
    let tool = net.cnitool(&c);
    let before = HostState::of(&net);

    // 1. the pod's netns is deleted before DEL.
    let ra = tool.add(&a).assert_ok().json().clone();
    let mid = HostState::of(&net);
    assert!(
        mid.of_kind("nft").any(|i| i.text.contains("cnirs-brg")),
        "ADD put the bridge into the firewall sets"
    );
    let cid_a = tool.container_id_for(&a);
    run_ok("ip", &["netns", "del", a.name()]);
    tool.del_path(a.path_str(), &cid_a).assert_ok();
    assert!(
        !lease(&net, "cnirs-gone", &ip(&ra, 0)).exists(),
        "lease released"
    );
    let after = HostState::of(&net);
    before
        .diff(&after)
        .without(legit_leftover(&["cnirs-brg"]))
        .assert_empty("DEL after the netns is gone");
    // 2. DEL twice.
    tool.del_path(a.path_str(), &cid_a).assert_ok();

    // 3. DEL with CNI_NETNS="" (nerdctl after the container is gone), run directly.
    let rb = tool.add(&b).assert_ok().json().clone();
    let cid_b = tool.container_id_for(&b);
    let veth_b = host_veth_name("cnirs-gone", &cid_b, "eth0");
    assert!(net.host().link(&veth_b).is_some());
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", cid_b.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", ""),
    ];
    net.run_plugin(&plugin_bin("bridge"), &env, &plugin_conf(&c))
        .assert_ok();
    assert!(
        net.host().link(&veth_b).is_none(),
        "{veth_b} removed without a netns"
    );
    assert!(b.link("eth0").is_none(), "pod end went with the host end");
    assert!(
        !lease(&net, "cnirs-gone", &ip(&rb, 0)).exists(),
        "lease released"
    );
    // libcni's cached result is the only thing left; cnitool DEL clears it (DEL again).
    tool.del(&b).assert_ok();
    before
        .diff(&HostState::of(&net))
        .without(legit_leftover(&["cnirs-brg"]))
        .assert_empty("after every DEL");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_ifname_taken_is_conflict_and_untouched() {
    let net = TestNet::new();
    let a = net.pod("a");
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "cnirs-peer",
    ]);
    a.ip(&["addr", "add", "10.236.9.9/24", "dev", "eth0"]);
    a.ip(&["link", "set", "eth0", "up"]);
    let pod_before = HostState::capture(&a, &[]);
    let c = conf(
        &net,
        "cnirs-dup",
        "bridge",
        "cnirs-brdup",
        ranges(&["10.236.1.0/24"]),
        json!({}),
    );
    let before = HostState::of(&net);
    let out = net.cnitool(&c).add(&a);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(103), "{out}");
    assert!(
        out.stdout.contains("eth0"),
        "message names the interface: {out}"
    );
    before
        .diff(&HostState::of(&net))
        .assert_empty("conflicting ADD (host)");
    pod_before
        .diff(&HostState::capture(&a, &[]))
        .assert_empty("conflicting ADD (pod)");
    assert_eq!(a.link("eth0").unwrap()["linkinfo"]["info_kind"], "veth");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_del_removes_half_made_attachment() {
    // What an ADD killed midway leaves: the derived host veth (with its peer in the pod) and
    // a lease, nothing in libcni's cache. DEL must remove both.
    let net = TestNet::new();
    let a = net.pod("a");
    let c = conf(
        &net,
        "cnirs-kill",
        "bridge",
        "cnirs-brk",
        ranges(&["10.237.1.0/24"]),
        json!({}),
    );
    let tool = net.cnitool(&c).container_id("cnirs-kill-ctr");
    let veth = host_veth_name("cnirs-kill", "cnirs-kill-ctr", "eth0");
    net.host().ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        a.name(),
    ]);
    let dir = net.data_dir().join("cnirs-kill");
    std::fs::create_dir_all(&dir).unwrap();
    let lease_file = dir.join("10.237.1.5");
    std::fs::write(&lease_file, "cnirs-kill-ctr\r\neth0").unwrap();
    tool.del(&a).assert_ok();
    assert!(net.host().link(&veth).is_none(), "{veth} left");
    assert!(a.link("eth0").is_none(), "pod end left");
    assert!(!lease_file.exists(), "lease left");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_config_errors_through_the_binary() {
    let net = TestNet::new();
    let a = net.pod("a");
    let good = conf(
        &net,
        "cnirs-cfg",
        "bridge",
        "cnirs-brcfg",
        ranges(&["10.240.1.0/24"]),
        json!({}),
    );
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c["plugins"][0][k] = v;
        plugin_conf(&c)
    };
    let mut bad_version = good.clone();
    bad_version["cniVersion"] = json!("9.9.9");
    let cases: Vec<(&str, String, u64, &[&str])> = vec![
        ("mtu 10", with("mtu", json!(10)), 7, &["mtu"]),
        ("mtu 70000", with("mtu", json!(70000)), 7, &["mtu"]),
        (
            "bridge name too long",
            with("bridge", json!("cnirs-much-too-long")),
            7,
            &["bridge"],
        ),
        (
            "unknown cniVersion",
            plugin_conf(&bad_version),
            1,
            &["9.9.9"],
        ),
        (
            "garbage JSON",
            "{\"cniVersion\": \"1.0.0\", \"name\": ".to_owned(),
            6,
            &[],
        ),
    ];
    let before = HostState::of(&net);
    let pod_before = a.link_names();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "cnirs-cfg-ctr"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", a.path_str()),
    ];
    let mut failures = Vec::new();
    for (what, stdin, code, words) in &cases {
        let out = net.run_plugin(&plugin_bin("bridge"), &env, stdin);
        let msg = out
            .json
            .as_ref()
            .and_then(|j| j["msg"].as_str())
            .unwrap_or_default()
            .to_owned();
        if out.success()
            || out.cni_error_code() != Some(*code)
            || !words.iter().all(|w| msg.contains(w))
        {
            failures.push(format!(
                "{what}: want code {code} naming {words:?}, got:\n{out}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    before
        .diff(&HostState::of(&net))
        .assert_empty("config errors");
    assert_eq!(a.link_names(), pod_before);
}

/// Every name-bearing key refused before the first side effect: a bad `bridge` (for both
/// plugins) or a bad `CNI_IFNAME` is code 7 / 4 and leaves no link, address, lease or nft
/// object on the host and nothing in the pod. `br"x` and `brü` are names the kernel would
/// take: they used to create the bridge, then fail at the firewall step and leave it behind.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bad_interface_names_leave_no_link() {
    let net = TestNet::new();
    let a = net.pod("a");
    let before = HostState::of(&net);
    let pod_before = a.link_names();
    let mut failures = Vec::new();
    let bad_bridges = [
        "br\"x",
        "brü",
        "br x",
        "br/x",
        "br:x",
        "cnirs-much-too-long",
        "",
    ];
    for plugin in ["bridge", "internal-bridge"] {
        for bridge in bad_bridges {
            let c = conf(
                &net,
                "cnirs-badname",
                plugin,
                bridge,
                ranges(&["10.241.1.0/24"]),
                json!({}),
            );
            let env = [
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "cnirs-badname-ctr"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", a.path_str()),
            ];
            let out = net.run_plugin(&plugin_bin(plugin), &env, &plugin_conf(&c));
            if out.success() || out.cni_error_code() != Some(7) || !out.stdout.contains("bridge") {
                failures.push(format!(
                    "{plugin} bridge {bridge:?}: want code 7 naming bridge, got:\n{out}"
                ));
            }
        }
    }
    let good = conf(
        &net,
        "cnirs-badname",
        "bridge",
        "cnirs-brbad",
        ranges(&["10.241.1.0/24"]),
        json!({}),
    );
    for ifname in ["eth\"0", "ethü", "eth 0", "eth0123456789abc"] {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "cnirs-badname-ctr"),
            ("CNI_IFNAME", ifname),
            ("CNI_NETNS", a.path_str()),
        ];
        let out = net.run_plugin(&plugin_bin("bridge"), &env, &plugin_conf(&good));
        if out.success() || out.cni_error_code() != Some(4) || !out.stdout.contains("CNI_IFNAME") {
            failures.push(format!("CNI_IFNAME {ifname:?}: want code 4, got:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    before
        .diff(&HostState::of(&net))
        .assert_empty("ADDs with bad interface names");
    assert_eq!(a.link_names(), pod_before, "pod links changed");
}

// ---------------------------------------------------------------- internal-bridge

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn internal_bridge_is_sealed_on_the_host() {
    let t0 = Instant::now();
    let net = TestNet::new();
    let out = net.outside(); // return routes kept: only our firewall can stop traffic
    let (i1, i2, e) = (net.pod("i1"), net.pod("i2"), net.pod("e"));
    let ci = conf(
        &net,
        "cnirs-int",
        "internal-bridge",
        "cnirs-brint",
        ranges(&["10.233.1.0/24", "fd00:233::/64"]),
        // A default route from IPAM and isDefaultGateway/ipMasq must all be ignored.
        json!({"isDefaultGateway": true, "ipMasq": true, "ipam": {"routes": [{"dst": "0.0.0.0/0"}]}}),
    );
    let ce = conf(
        &net,
        "cnirs-ext",
        "bridge",
        "cnirs-brext",
        ranges(&["10.233.2.0/24"]),
        json!({"isDefaultGateway": true}),
    );
    let (ti, te) = (net.cnitool(&ci), net.cnitool(&ce));
    let r1 = ti.add(&i1).assert_ok().json().clone();
    let r2 = ti.add(&i2).assert_ok().json().clone();
    let re = te.add(&e).assert_ok().json().clone();
    let (ip1, ip2, ipe) = (ip_fam(&r1, false), ip_fam(&r2, false), ip(&re, 0));
    let (ip1_6, ip2_6) = (ip_fam(&r1, true), ip_fam(&r2, true));
    ti.check(&i1).assert_ok();

    // No default route inside, none in the result.
    for pod in [&i1, &i2] {
        for v6 in [false, true] {
            let routes = pod.routes(v6);
            assert!(
                !routes.iter().any(|r| r["dst"] == "default"),
                "{}: {routes:?}",
                pod.name()
            );
        }
    }
    assert!(
        !r1["routes"]
            .as_array()
            .map(|a| a.iter().any(|r| r["dst"] == "0.0.0.0/0"))
            .unwrap_or(false),
        "{r1}"
    );
    // Even with a default route via the bridge address the outside stays out of reach.
    for pod in [&i1, &i2] {
        pod.ip(&["route", "add", "default", "via", "10.233.1.1"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:233::1"]);
    }
    ti.check(&i1).assert_ok(); // routes the pod added itself are not CHECK's business
    let far = out.far_v4.to_string();
    let link = out.link_v4.to_string();
    let srv = TcpServer::start(&out.ns, "0.0.0.0", 0, "far");
    let port = srv.port();
    let (far_tcp, i1_tcp) = (far.clone(), i1.clone());
    let mut negative = vec![
        ping_check("i1->far", &i1, far.clone()),
        ping_check("i2->far", &i2, far.clone()),
        ping_check("i1->outside link", &i1, link.clone()),
        ping_check("i1->e (other bridge)", &i1, ipe.clone()),
        ping_check("e->i1", &e, ip1.clone()),
        ping_check("outside->i1", &out.ns, ip1.clone()),
        ping_check("outside->i2", &out.ns, ip2.clone()),
        ping_check("i1->far v6", &i1, out.far_v6.to_string()),
        ping_check("i1->outside link v6", &i1, out.link_v6.to_string()),
        ping_check("outside->i1 v6", &out.ns, ip1_6.clone()),
    ];
    negative.push((
        "i1 tcp->far".into(),
        Box::new(move || can_connect_tcp(&i1_tcp, &far_tcp, port)),
    ));
    let positive = vec![
        ping_eventually_check("i1->i2", &i1, ip2.clone()),
        ping_eventually_check("i2->i1", &i2, ip1.clone()),
        ping_eventually_check("i1->i2 v6", &i1, ip2_6.clone()),
        ping_eventually_check("e->far (control)", &e, far.clone()),
        ping_eventually_check("outside->e (control)", &out.ns, ipe.clone()),
    ];
    // Positives first (they also warm up ARP), then the negatives together.
    assert_all("internal-bridge allowed paths", positive);
    assert_none("internal-bridge sealed paths", negative);
    assert!(srv.peers().is_empty(), "the outside saw {:?}", srv.peers());
    drop(srv);
    // CHECK reports a missing kernel-level seal rule, and passes again once it is back.
    let subnet_rule = |verb: &str| {
        net.host().ip(&[
            "-4",
            "rule",
            verb,
            "priority",
            "10",
            "to",
            "10.233.1.0/24",
            "unreachable",
        ]);
    };
    subnet_rule("del");
    let chk = ti.check(&i1);
    chk.assert_err();
    assert!(
        format!("{chk}").contains("to 10.233.1.0/24 unreachable"),
        "CHECK names the missing seal rule: {chk}"
    );
    subnet_rule("add");
    ti.check(&i1).assert_ok();

    // Two seals: the host's firewall (the internal_br set) and, independent of nftables,
    // policy rules: `iif BR unreachable` (out) and `to SUBNET unreachable` unless from the
    // host itself (in). Either alone holds; without both the pod gets out and the outside in.
    net.host()
        .exec_ok("nft", &["flush", "set", "inet", "cnirs", "internal_br"]);
    assert!(
        !can_ping(&i2, &far),
        "without internal_br, the kernel-level seal still holds"
    );
    net.host().exec_ok("nft", &["flush", "ruleset"]);
    assert_none(
        "after nft flush ruleset, routed into the internal network",
        vec![
            ping_check("outside->i1", &out.ns, ip1.clone()),
            ping_check("outside->i1 v6", &out.ns, ip1_6.clone()),
            ping_check("e->i1", &e, ip1.clone()),
            ping_check("i2->far", &i2, far.clone()),
        ],
    );
    assert_all(
        "after nft flush ruleset, the host and the bridge itself",
        vec![
            ping_eventually_check("host->i1", net.host(), ip1.clone()),
            ping_eventually_check("i1->i2 (switched)", &i1, ip2.clone()),
        ],
    );
    for fam in ["-4", "-6"] {
        net.host().ip(&[
            fam,
            "rule",
            "del",
            "priority",
            "10",
            "iif",
            "cnirs-brint",
            "unreachable",
        ]);
    }
    assert!(
        !can_ping(&out.ns, &ip1),
        "without the iif rules, the subnet rule still keeps the outside out"
    );
    subnet_rule("del");
    net.host().ip(&[
        "-6",
        "rule",
        "del",
        "priority",
        "10",
        "to",
        "fd00:233::/64",
        "unreachable",
    ]);
    assert_all(
        "without nftables and the seal rules (so those were the seals)",
        vec![
            ping_eventually_check("i2->far", &i2, far.clone()),
            ping_eventually_check("outside->i1", &out.ns, ip1.clone()),
            ping_eventually_check("outside->i1 v6", &out.ns, ip1_6.clone()),
        ],
    );

    // The next ADD seals again; the network's last DEL removes every seal rule.
    let i3 = net.pod("i3");
    ti.add(&i3).assert_ok();
    let rules = || {
        let v4 = net.host().ip(&["-4", "rule"]).stdout.clone();
        v4 + &net.host().ip(&["-6", "rule"]).stdout
    };
    let sealed = rules();
    for want in ["iif cnirs-brint", "to 10.233.1.0/24", "to fd00:233::/64"] {
        assert!(sealed.contains(want), "{want} after ADD:\n{sealed}");
    }
    ti.del(&i1).assert_ok();
    ti.del(&i2).assert_ok();
    assert!(rules().contains("to 10.233.1.0/24"), "{}", rules());
    ti.del(&i3).assert_ok();
    let left = rules();
    for gone in ["cnirs-brint", "10.233.1.0", "fd00:233::"] {
        assert!(!left.contains(gone), "{gone} after the last DEL:\n{left}");
    }
    te.del(&e).assert_ok();
    eprintln!("internal_bridge_is_sealed_on_the_host: {:?}", t0.elapsed());
}

// ---------------------------------------------------------------- br_netfilter

fn same_bridge_with_nf_call_iptables(value: &str) {
    let t0 = Instant::now();
    let net = TestNet::new();
    net.host()
        .set_sysctl("net.bridge.bridge-nf-call-iptables", value);
    assert_eq!(
        net.host().sysctl("net.bridge.bridge-nf-call-iptables"),
        value
    );
    let (a, b, c, d) = (net.pod("a"), net.pod("b"), net.pod("c"), net.pod("d"));
    let ce = conf(
        &net,
        "cnirs-nfx",
        "bridge",
        "cnirs-brnfx",
        ranges(&["10.241.1.0/24"]),
        json!({"ipMasq": true}),
    );
    let ci = conf(
        &net,
        "cnirs-nfi",
        "internal-bridge",
        "cnirs-brnfi",
        ranges(&["10.241.2.0/24"]),
        json!({}),
    );
    let (te, ti) = (net.cnitool(&ce), net.cnitool(&ci));
    let ra = te.add(&a).assert_ok().json().clone();
    let rb = te.add(&b).assert_ok().json().clone();
    let rc = ti.add(&c).assert_ok().json().clone();
    let rd = ti.add(&d).assert_ok().json().clone();
    assert_all(
        &format!("bridge-nf-call-iptables={value}"),
        vec![
            ping_eventually_check("a->b", &a, ip(&rb, 0)),
            ping_eventually_check("b->a", &b, ip(&ra, 0)),
            ping_eventually_check("c->d (internal)", &c, ip(&rd, 0)),
            ping_eventually_check("d->c (internal)", &d, ip(&rc, 0)),
        ],
    );
    // TCP too (conntrack sees bridged flows when the sysctl is 1).
    let srv = TcpServer::start(&b, "0.0.0.0", 0, "b");
    assert!(
        tcp_request(&a, &ip(&rb, 0), srv.port()).is_some(),
        "a -tcp-> b"
    );
    let srv_d = TcpServer::start(&d, "0.0.0.0", 0, "d");
    assert!(
        tcp_request(&c, &ip(&rd, 0), srv_d.port()).is_some(),
        "c -tcp-> d"
    );
    for (t, p) in [(&te, &a), (&te, &b), (&ti, &c), (&ti, &d)] {
        t.del(p).assert_ok();
    }
    eprintln!(
        "same_bridge_with_nf_call_iptables({value}): {:?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_same_bridge_traffic_with_nf_call_iptables_0() {
    same_bridge_with_nf_call_iptables("0");
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_same_bridge_traffic_with_nf_call_iptables_1() {
    same_bridge_with_nf_call_iptables("1");
}

/// `macspoofchk`: frames from the pod whose source MAC is not the pod's are dropped on the
/// host (bridge-family table), while the pod with its own MAC talks normally; DEL removes the
/// pod's elements.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_macspoofchk_drops_frames_from_another_mac() {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let c = conf(
        &net,
        "cnirs-spoof",
        "bridge",
        "cnirs-brspf",
        ranges(&["10.238.7.0/24"]),
        json!({"macspoofchk": true}),
    );
    let tool = net.cnitool(&c);
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    let b_ip = ip(&rb, 0);
    let a_mac = ra["interfaces"][2]["mac"].as_str().unwrap().to_owned();
    assert!(can_ping(&a, &b_ip), "a reaches b with its own MAC");
    tool.check(&a).assert_ok();
    let elems = net
        .host()
        .exec_ok("nft", &["list", "set", "bridge", "cnirs", "spoof_ok"]);
    assert!(
        elems.stdout.contains(&a_mac),
        "a's MAC is in spoof_ok: {elems}"
    );

    // The pod changes its MAC: its frames are dropped (the neighbour never sees them).
    a.ip(&["link", "set", "eth0", "address", "0a:58:de:ad:be:ef"]);
    a.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(!can_ping(&a, &b_ip), "a spoofed MAC must not get through");
    // Back to its own MAC: traffic flows again.
    a.ip(&["link", "set", "eth0", "address", &a_mac]);
    assert!(
        can_ping_eventually(&a, &b_ip, 3),
        "a with its own MAC again"
    );

    tool.del(&a).assert_ok();
    let elems = net
        .host()
        .exec_ok("nft", &["list", "set", "bridge", "cnirs", "spoof_ok"]);
    assert!(
        !elems.stdout.contains(&a_mac),
        "DEL removed a's element: {elems}"
    );
    tool.del(&b).assert_ok();
}

// ---------------------------------------------------------------- DEL off the kernel's clock

/// DEL retires the pair (down, off the bridge, renamed on both sides) and leaves the slow
/// kernel delete to a detached process. The deleter is held still here (test hook), so every
/// check runs while the old pair still exists: the address, the host veth name and the pod's
/// ifname are free at once, no traffic reaches the old pod, and after a SIGKILL of the deleter
/// the retired link is all that is left, which GC removes.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bridge_del_frees_everything_at_once_and_gc_removes_a_killed_deleters_link() {
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    // Two addresses only: a's address is the one a new ADD can get after DEL a.
    let c = conf(
        &net,
        "cnirs-doff",
        "bridge",
        "cnirs-brdo",
        json!([[{"subnet": "10.238.7.0/24", "rangeStart": "10.238.7.10", "rangeEnd": "10.238.7.11"}]]),
        json!({}),
    );
    let tool = net.cnitool(&c);
    let before = HostState::of(&net);
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    let (ip_a, ip_b) = (ip(&ra, 0), ip(&rb, 0));
    assert_all(
        "before DEL",
        vec![ping_eventually_check("b->a", &b, ip_a.clone())],
    );
    let cid_a = tool.container_id_for(&a);
    let veth_a = host_veth_name("cnirs-doff", &cid_a, "eth0");

    let mut stall = StalledDeleter::new(&net, "a");
    let stalled = net
        .cnitool(&c)
        .env("CNIRS_RETIRE_STALL", stall.file.to_str().unwrap());
    stalled.del(&a).assert_ok();
    stall.pid();

    // The pair is still there, retired: down and unbridged on the host, down in the pod.
    let host_retired = retired_links(net.host());
    assert_eq!(host_retired.len(), 1, "{host_retired:?}");
    let l = &host_retired[0];
    assert!(
        l.get("master").is_none(),
        "retired host end still bridged: {l}"
    );
    let flags: Vec<&str> = l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!flags.contains(&"UP"), "retired host end is up: {l}");
    assert!(net.host().link(&veth_a).is_none(), "host veth name freed");
    assert!(a.link("eth0").is_none(), "pod ifname freed");
    let pod_retired = retired_links(&a);
    assert_eq!(pod_retired.len(), 1, "{pod_retired:?}");
    // (3) no traffic reaches the old pod.
    assert_none(
        "after DEL a",
        vec![ping_check("b->old a", &b, ip_a.clone())],
    );

    // (1) the same ifname in the same netns, the same container id, the freed address: at once.
    let ra2 = tool.add(&a).assert_ok().json().clone();
    assert_eq!(ip(&ra2, 0), ip_a, "the freed address is allocated again");
    assert_eq!(ra2["interfaces"][1]["name"], veth_a.as_str(), "{ra2}");
    // From the new pod: b's neighbour entry for ip_a still names the old MAC until it hears
    // from the new one (as with any address reused by a new interface).
    assert_all(
        "the new pod a",
        vec![ping_eventually_check("new a->b", &a, ip_b.clone())],
    );
    tool.check(&a).assert_ok();

    // (4) SIGKILL of the deleter: only the retired link is left; GC removes it and keeps the
    // live attachments.
    assert!(stall.kill(), "the deleter was alive until killed");
    assert_eq!(retired_links(net.host()).len(), 1, "retired link left");
    let cid_b = tool.container_id_for(&b);
    net.cnitool(&c)
        .valid_attachments(json!([
            {"containerID": cid_a, "ifname": "eth0"},
            {"containerID": cid_b, "ifname": "eth0"},
        ]))
        .gc()
        .assert_ok();
    assert!(retired_links(net.host()).is_empty(), "GC removed it");
    assert!(
        retired_links(&a).is_empty(),
        "the pod end went with the pair"
    );
    assert!(lease(&net, "cnirs-doff", &ip_a).exists(), "a's lease kept");
    assert!(lease(&net, "cnirs-doff", &ip_b).exists(), "b's lease kept");
    assert_all(
        "after GC",
        vec![
            ping_eventually_check("new a->b", &a, ip_b.clone()),
            ping_eventually_check("b->new a", &b, ip_a.clone()),
        ],
    );

    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    before
        .diff(&HostState::of(&net))
        .without(legit_leftover(&["cnirs-brdo"]))
        .assert_empty("after every DEL");
}

/// An internal network whose bridge has no address (`isGateway: false`) and whose last DEL
/// comes without a prevResult (a runtime that lost its cache): the subnet seal rules go too,
/// from the network's own record.
#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn internal_bridge_last_del_without_prev_result_removes_the_subnet_seal() {
    let net = TestNet::new();
    let p = net.pod("p");
    let c = conf(
        &net,
        "cnirs-intng",
        "internal-bridge",
        "cnirs-brintng",
        ranges(&["10.233.7.0/24", "fd00:233:7::/64"]),
        json!({"isGateway": false}),
    );
    let rules = |net: &TestNet| {
        net.host()
            .seal_rules("cnirs-brintng", &["10.233.7.0", "fd00:233:7::"])
    };
    net.cnitool(&c).add(&p).assert_ok();
    assert!(net.host().link("cnirs-brintng").is_some());
    assert_eq!(
        net.host().addrs("cnirs-brintng"),
        Vec::<String>::new(),
        "isGateway false: no address on the bridge"
    );
    assert_eq!(rules(&net).len(), 6, "{:?}", rules(&net));
    // The plugin alone, as a runtime without a cache calls it: no prevResult.
    let env = cni_env(
        "DEL",
        &net.cnitool(&c).container_id_for(&p),
        &p.path().display().to_string(),
        "eth0",
    );
    net.run_plugin(&plugin_bin("internal-bridge"), &env, &plugin_conf(&c))
        .assert_ok();
    assert!(rules(&net).is_empty(), "{:?}", rules(&net));
}
