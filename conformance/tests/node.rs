//! The whole node (issue 28): our `loopback`, `bandwidth`, `ptp`, `macvlan`, `host-device` and
//! `tap`, each driven through cnitool (libcni 1.1.2) and, where Debian's reference plugin
//! exists (`/usr/lib/cni`; its 1.1.1 has no `tap`), the reference on the same conflist as a
//! control, comparing what the pod ends up with: links (kind, MTU, state, macvlan mode),
//! addresses, routes, qdiscs. Bandwidth is measured with iperf3 between the pod and the host.
//!
//! Every run uses a CNI_PATH directory made for it, holding exactly the binaries it names
//! (ours from the release build, or the reference's): a missing binary of ours can never be
//! replaced by the reference's unnoticed. IPAM is `static` (ours with our plugin, the
//! reference's with the reference) where two runs must give the pod the same addresses, else
//! our host-local.
//!
//! Rates are asserted as the issue asks (within ±15% of the limit over the seconds after the
//! first, the first second at most 2x the limit): a shaping limit is the behaviour under test,
//! not a speed of ours; on a loaded 2-core machine iperf3 itself can fall short of a high
//! limit, so the limits are low (20 Mbit/s).
//!
//! Build first (`make build`); run (as root):
//! `cargo test -p conformance --test node -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use conformance::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers

/// A CNI_PATH directory holding exactly `ours` (our release binaries) and `refs` (Debian's).
fn bin_dir(net: &TestNet, tag: &str, ours: &[&str], refs: &[&str]) -> PathBuf {
    let d = net.tmp().join(format!("bin-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    for p in ours {
        std::os::unix::fs::symlink(plugin_bin(p), d.join(p)).unwrap();
    }
    for p in refs {
        std::os::unix::fs::symlink(reference_plugin_bin(p), d.join(p)).unwrap();
    }
    d
}

fn conflist(name: &str, plugins: Vec<Value>) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins})
}

/// The reference `static` IPAM with one address per family and default routes.
fn static_ipam(v4: &str, gw4: &str, v6: &str, gw6: &str) -> Value {
    json!({"type": "static",
        "addresses": [{"address": v4, "gateway": gw4}, {"address": v6, "gateway": gw6}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]})
}

/// Host veth names differ between implementations (both derive or draw them): `VETH`.
fn norm(name: &str) -> String {
    if name.starts_with("veth") {
        "VETH".into()
    } else {
        name.to_string()
    }
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// What a netns holds, comparable between two implementations: links (name, kind, MTU, up,
/// macvlan mode), addresses (not link-local), main-table routes (not link-local IPv6), each
/// as a sorted list of lines; MACs and indexes left out, host veth names normalised.
fn snapshot(ns: &Netns) -> Value {
    let mut links = Vec::new();
    for l in arr(&ns.ip_json(&["-d", "link", "show"])) {
        let name = l["ifname"].as_str().unwrap_or_default();
        let up = arr(&l["flags"]).iter().any(|f| f == "UP");
        let mut line = format!(
            "{} kind={} mtu={} up={up}",
            norm(name),
            l["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
            l["mtu"]
        );
        if let Some(m) = l["linkinfo"]["info_data"]["mode"].as_str() {
            line += &format!(" mode={m}");
        }
        links.push(line);
    }
    let mut addrs = Vec::new();
    for l in arr(&ns.ip_json(&["addr", "show"])) {
        for a in arr(&l["addr_info"]) {
            if a["scope"] == "link" {
                continue;
            }
            addrs.push(format!(
                "{} {}/{}",
                norm(l["ifname"].as_str().unwrap_or_default()),
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            ));
        }
    }
    let mut routes = Vec::new();
    for fam in ["-4", "-6"] {
        for r in arr(&ns.ip_json(&[fam, "route", "show"])) {
            let dst = r["dst"].as_str().unwrap_or_default();
            if dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                continue;
            }
            let mut line = dst.to_string();
            if let Some(g) = r["gateway"].as_str() {
                line += &format!(" via {g}");
            }
            line += &format!(" dev {}", norm(r["dev"].as_str().unwrap_or_default()));
            if let Some(s) = r["scope"].as_str() {
                line += &format!(" scope {s}");
            }
            if let Some(s) = r["prefsrc"].as_str() {
                line += &format!(" src {s}");
            }
            routes.push(line);
        }
    }
    for v in [&mut links, &mut addrs, &mut routes] {
        v.sort();
    }
    json!({"links": links, "addrs": addrs, "routes": routes})
}

/// `tc -j qdisc show dev DEV` in `ns`, without the per-device counters.
fn qdiscs(ns: &Netns, dev: &str) -> Vec<Value> {
    let out = ns.exec_ok("tc", &["-j", "qdisc", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Array(vec![]));
    arr(&v)
        .into_iter()
        .map(|mut q| {
            if let Some(o) = q.as_object_mut() {
                o.remove("refcnt");
            }
            q
        })
        .collect()
}

/// The pod's host veth: the host interface of a result that is a veth (not the bridge, not
/// an IFB).
fn host_iface(result: &Value) -> String {
    arr(&result["interfaces"])
        .iter()
        .find(|i| {
            i["sandbox"].as_str().unwrap_or_default().is_empty()
                && i["name"].as_str().unwrap_or_default().starts_with("veth")
        })
        .and_then(|i| i["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no host interface in {result}"))
}

/// An IFB listed in a result (`bwp…`).
fn ifb_of(result: &Value) -> Option<String> {
    arr(&result["interfaces"])
        .iter()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bwp"))
        .map(str::to_owned)
}

/// The pod netns with `lo` down again (TestNet::pod brings it up).
fn pod_lo_down(net: &TestNet, name: &str) -> Netns {
    let p = net.pod(name);
    p.ip(&["link", "set", "lo", "down"]);
    p
}

// ---------------------------------------------------------------------------------------------
// loopback

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn loopback_brings_lo_up_answers_as_the_reference_and_del_takes_it_down() {
    let net = TestNet::new();
    let conf = conflist("lo", vec![json!({"type": "loopback"})]);
    let mut results = Vec::new();
    let mut snaps = Vec::new();
    for (tag, ours, refs) in [
        ("ours", &["loopback"][..], &[][..]),
        ("ref", &[][..], &["loopback"][..]),
    ] {
        let pod = pod_lo_down(&net, &format!("lo-{tag}"));
        assert!(!arr(&pod.ip_json(&["link", "show", "lo"]))[0]["flags"]
            .to_string()
            .contains("\"UP\""));
        let tool = net
            .cnitool(&conf)
            .cni_path(&[bin_dir(&net, tag, ours, refs)]);
        let r = tool.add(&pod).assert_ok().json().clone();
        // The spec's loopback result, sandbox normalised.
        let mut r2 = r.clone();
        r2["interfaces"][0]["sandbox"] = json!("SANDBOX");
        results.push(r2);
        snaps.push(snapshot(&pod));
        assert!(can_ping(&pod, "127.0.0.1"), "{tag}: lo does not answer");
        tool.check(&pod).assert_ok();
        tool.del(&pod).assert_ok();
        let lo = &arr(&pod.ip_json(&["link", "show", "lo"]))[0];
        assert!(
            !arr(&lo["flags"]).iter().any(|f| f == "UP"),
            "{tag}: lo still up after DEL: {lo}"
        );
        // CHECK of a pod whose lo is down fails, as the reference's.
        tool.check(&pod).assert_err();
        // DEL again, and with the netns gone: success.
        tool.del(&pod).assert_ok();
        tool.del_path("/run/netns/does-not-exist", "gone")
            .assert_ok();
    }
    eprintln!("ours: {}\nref:  {}", results[0], results[1]);
    assert_eq!(
        results[0], results[1],
        "the result differs from the reference's"
    );
    assert_eq!(results[0]["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(results[0]["ips"][1]["address"], "::1/128");
    assert_eq!(snaps[0], snaps[1], "lo differs from the reference's");
}

// ---------------------------------------------------------------------------------------------
// bandwidth

/// bridge (ours) + host-local, then `bandwidth` with `bw` merged into its config.
fn shaped_net(net: &TestNet, name: &str, bridge: &str, subnet: &str, bw: Value) -> Value {
    let mut b = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
    for (k, v) in bw.as_object().unwrap() {
        b[k] = v.clone();
    }
    conflist(
        name,
        vec![
            json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                         "ranges": [[{"subnet": subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}}),
            b,
        ],
    )
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_sets_the_references_qdiscs_check_verifies_them_and_del_removes_the_ifb() {
    let net = TestNet::new();
    // 8 Mbit/s, bursts under the cap (100 ms of the rate): the reference's exact qdiscs.
    let conf = shaped_net(
        &net,
        "bw",
        "cnibw0",
        "10.28.1.0/24",
        json!({"ingressRate": 8_000_000, "ingressBurst": 400_000,
               "egressRate": 4_000_000, "egressBurst": 200_000}),
    );
    let mut seen = Vec::new();
    for (tag, refs) in [("ours", &[][..]), ("ref", &["bandwidth"][..])] {
        let ours: Vec<&str> = if refs.is_empty() {
            vec!["bridge", "host-local", "bandwidth"]
        } else {
            vec!["bridge", "host-local"]
        };
        let tool = net
            .cnitool(&conf)
            .cni_path(&[bin_dir(&net, tag, &ours, refs)]);
        let pod = net.pod(&format!("bw-{tag}"));
        let r = tool.add(&pod).assert_ok().json().clone();
        let veth = host_iface(&r);
        let ifb = ifb_of(&r).unwrap_or_else(|| panic!("{tag}: no IFB in the result {r}"));
        let on_veth = qdiscs(net.host(), &veth);
        let on_ifb = qdiscs(net.host(), &ifb);
        let filters = net
            .host()
            .exec_ok("tc", &["-j", "filter", "show", "dev", &veth, "ingress"])
            .stdout
            .replace(&ifb, "IFB");
        eprintln!("{tag}: {veth}: {on_veth:?}\n{tag}: {ifb}: {on_ifb:?}\n{tag}: filters {filters}");
        tool.check(&pod).assert_ok();
        seen.push((
            on_veth,
            on_ifb,
            filters.contains("mirred") && filters.contains("IFB"),
        ));
        tool.del(&pod).assert_ok();
        assert!(
            net.host().link(&ifb).is_none(),
            "{tag}: DEL left the IFB {ifb}"
        );
        tool.del(&pod).assert_ok();
    }
    assert_eq!(
        seen[0].0, seen[1].0,
        "the host veth's qdiscs differ from the reference's"
    );
    assert_eq!(
        seen[0].1, seen[1].1,
        "the IFB's qdisc differs from the reference's"
    );
    assert!(seen[0].2 && seen[1].2, "no redirect filter to the IFB");
    assert!(seen[0].0.iter().any(|q| q["kind"] == "tbf"));
    assert!(seen[0].0.iter().any(|q| q["kind"] == "ingress"));
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_check_fails_when_the_qdisc_is_gone_and_a_config_without_limits_passes_through() {
    let net = TestNet::new();
    let conf = shaped_net(
        &net,
        "bwc",
        "cnibwc0",
        "10.28.2.0/24",
        json!({"ingressRate": 8_000_000, "ingressBurst": 400_000}),
    );
    let tool = net.cnitool(&conf).cni_path(&[bin_dir(
        &net,
        "o",
        &["bridge", "host-local", "bandwidth"],
        &[],
    )]);
    let pod = net.pod("p");
    let r = tool.add(&pod).assert_ok().json().clone();
    let veth = host_iface(&r);
    assert!(ifb_of(&r).is_none(), "ingress only: no IFB");
    tool.check(&pod).assert_ok();
    net.host()
        .exec_ok("tc", &["qdisc", "del", "dev", &veth, "root"]);
    let out = tool.check(&pod);
    out.assert_err();
    assert!(
        out.stdout.contains("tbf"),
        "CHECK should name the missing qdisc: {out}"
    );
    tool.del(&pod).assert_ok();

    // No limits at all (the capability unused): the previous result passes through.
    let plain = shaped_net(&net, "bwn", "cnibwn0", "10.28.3.0/24", json!({}));
    let tool = net.cnitool(&plain).cni_path(&[bin_dir(
        &net,
        "n",
        &["bridge", "host-local", "bandwidth"],
        &[],
    )]);
    let r = tool.add(&pod).assert_ok().json().clone();
    assert!(qdiscs(net.host(), &host_iface(&r))
        .iter()
        .all(|q| q["kind"] != "tbf"));
    tool.check(&pod).assert_ok();
    tool.del(&pod).assert_ok();
}

const LIMIT: f64 = 20_000_000.0;

/// iperf3 towards the pod (host sends) and from it (pod sends), 6 s each, at the receiver.
fn measure(net: &TestNet, pod: &Netns, pod_ip: &str, host_ip: &str) -> (Rates, Rates) {
    let towards = {
        let _s = Iperf3Server::start(net.host(), 5201);
        iperf3_receive(pod, host_ip, 5201, 6, None)
    };
    let from = {
        let _s = Iperf3Server::start(pod, 5202);
        iperf3_receive(net.host(), pod_ip, 5202, 6, None)
    };
    (towards, from)
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_holds_the_limit_both_ways_with_containerds_burst_where_the_reference_bursts() {
    let net = TestNet::new();
    let conf = shaped_net(&net, "bwm", "cnibwm0", "10.28.4.0/24", json!({}));
    // What containerd's CRI passes for kubernetes.io/{ingress,egress}-bandwidth: 20M, with the
    // burst it fills in (math.MaxUint32 bits), Go field names.
    let caps = json!({"bandwidth": {"IngressRate": 20_000_000u64, "IngressBurst": 4_294_967_295u64,
                                    "EgressRate": 20_000_000u64, "EgressBurst": 4_294_967_295u64}});
    let mut firsts = Vec::new();
    for (tag, refs) in [("ours", &[][..]), ("ref", &["bandwidth"][..])] {
        let ours: Vec<&str> = if refs.is_empty() {
            vec!["bridge", "host-local", "bandwidth"]
        } else {
            vec!["bridge", "host-local"]
        };
        let tool = net
            .cnitool(&conf)
            .cni_path(&[bin_dir(&net, tag, &ours, refs)])
            .cap_args(caps.clone());
        let pod = net.pod(&format!("m-{tag}"));
        let r = tool.add(&pod).assert_ok().json().clone();
        let pod_ip = first_ip(&r);
        let (towards, from) = measure(&net, &pod, &pod_ip, "10.28.4.1");
        eprintln!(
            "{tag}: towards the pod {towards}; from the pod {from}  (load: {})",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        if tag == "ours" {
            for (dir, r) in [("towards the pod", &towards), ("from the pod", &from)] {
                let mean = r.after_first();
                assert!(
                    (mean - LIMIT).abs() <= 0.15 * LIMIT,
                    "{dir}: {:.1} Mbit/s after the first second, limit 20 (±15%): {r}",
                    mean / 1e6
                );
                assert!(
                    r.first() <= 2.0 * LIMIT,
                    "{dir}: {:.1} Mbit/s in the first second, more than twice the limit: {r}",
                    r.first() / 1e6
                );
            }
        }
        firsts.push(towards.first().max(from.first()));
        tool.del(&pod).assert_ok();
    }
    // The control: the reference with the same burst lets a burst of hundreds of MB through.
    assert!(
        firsts[1] > 2.0 * LIMIT,
        "the reference held its first second to {:.1} Mbit/s: the cap would not be what keeps ours down",
        firsts[1] / 1e6
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_cri_o_burst_is_capped_the_same() {
    let net = TestNet::new();
    let conf = shaped_net(&net, "bwo", "cnibwo0", "10.28.5.0/24", json!({}));
    let crio = u64::from(u32::MAX) * 8 - 1;
    let caps = json!({"bandwidth": {"ingressRate": 20_000_000u64, "ingressBurst": crio,
                                    "egressRate": 20_000_000u64, "egressBurst": crio}});
    let tool = net
        .cnitool(&conf)
        .cni_path(&[bin_dir(
            &net,
            "o",
            &["bridge", "host-local", "bandwidth"],
            &[],
        )])
        .cap_args(caps);
    let pod = net.pod("p");
    let r = tool.add(&pod).assert_ok().json().clone();
    for dev in [host_iface(&r), ifb_of(&r).unwrap()] {
        let q = qdiscs(net.host(), &dev);
        let tbf = q
            .iter()
            .find(|q| q["kind"] == "tbf")
            .unwrap_or_else(|| panic!("{dev}: {q:?}"));
        // 100 ms of 20 Mbit/s: 250000 bytes.
        assert_eq!(tbf["options"]["burst"], 250_000, "{dev}: {tbf}");
    }
    tool.check(&pod).assert_ok();
    tool.del(&pod).assert_ok();
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_unshaped_and_shaped_subnets_choose_what_is_limited() {
    let net = TestNet::new();
    // A second host address the pod reaches through its gateway.
    net.host()
        .ip(&["addr", "add", "10.28.99.1/32", "dev", "lo"]);
    // Each its own subnet: the first network's bridge (and its address) stays after its DEL.
    for (key, shaped, free, subnet) in [
        ("unshapedSubnets", "10.28.6.1", "10.28.99.1", "10.28.6.0/24"),
        ("shapedSubnets", "10.28.99.1", "10.28.7.1", "10.28.7.0/24"),
    ] {
        let conf = shaped_net(
            &net,
            &format!("bws{}", key.len()),
            &format!("cnibws{}", key.len()),
            subnet,
            json!({"ingressRate": 20_000_000, "ingressBurst": 400_000,
                   "egressRate": 20_000_000, "egressBurst": 400_000,
                   key: if key == "unshapedSubnets" { json!(["10.28.99.0/24"]) } else { json!(["10.28.99.1/32"]) }}),
        );
        let tool = net.cnitool(&conf).cni_path(&[bin_dir(
            &net,
            key,
            &["bridge", "host-local", "bandwidth"],
            &[],
        )]);
        let pod = net.pod(&format!("s{}", key.len()));
        let r = tool.add(&pod).assert_ok().json().clone();
        tool.check(&pod).assert_ok();
        let pod_ip = first_ip(&r);
        for (peer, limited) in [(shaped, true), (free, false)] {
            let towards = {
                let _s = Iperf3Server::start(net.host(), 5203);
                iperf3_receive(&pod, peer, 5203, 3, None)
            };
            let from = {
                let _s = Iperf3Server::start(&pod, 5204);
                iperf3_receive(net.host(), &pod_ip, 5204, 3, Some(peer))
            };
            eprintln!("{key}: {peer}: towards the pod {towards}, from it {from}");
            for (dir, r) in [("towards", &towards), ("from", &from)] {
                if limited {
                    assert!(
                        r.after_first() <= 1.15 * LIMIT,
                        "{key}: {peer} {dir}: not limited: {r}"
                    );
                } else {
                    assert!(
                        r.after_first() > 3.0 * LIMIT,
                        "{key}: {peer} {dir}: limited: {r}"
                    );
                }
            }
        }
        let ifbs: Vec<String> = net
            .host()
            .link_names()
            .into_iter()
            .filter(|n| n.starts_with("bw"))
            .collect();
        assert_eq!(ifbs.len(), 2, "one IFB per direction: {ifbs:?}");
        tool.del(&pod).assert_ok();
        let left: Vec<String> = net
            .host()
            .link_names()
            .into_iter()
            .filter(|n| n.starts_with("bw"))
            .collect();
        assert!(left.is_empty(), "DEL left {left:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// ptp

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn ptp_pod_is_the_references_and_routes_through_the_host() {
    let net = TestNet::new();
    let conf = conflist(
        "ptp",
        vec![json!({"type": "ptp", "mtu": 1400,
            "ipam": static_ipam("10.28.10.5/24", "10.28.10.1", "fd00:28:10::5/64", "fd00:28:10::1")})],
    );
    let pod = net.pod("p");
    let mut snaps = Vec::new();
    for (tag, ours, refs) in [
        ("ours", &["ptp", "static"][..], &[][..]),
        ("ref", &[][..], &["ptp", "static"][..]),
    ] {
        let tool = net
            .cnitool(&conf)
            .cni_path(&[bin_dir(&net, tag, ours, refs)]);
        let r = tool.add(&pod).assert_ok().json().clone();
        assert_eq!(
            arr(&r["interfaces"]).len(),
            2,
            "{tag}: host veth and pod interface: {r}"
        );
        assert_eq!(r["ips"][0]["interface"], 1, "{tag}: {r}");
        let host_routes: Vec<String> = snapshot(net.host())["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .filter(|r| r.contains("10.28.10.5") || r.contains("fd00:28:10::5"))
            .map(str::to_owned)
            .collect();
        let host_addrs: Vec<String> = snapshot(net.host())["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .filter(|a| a.starts_with("VETH"))
            .map(str::to_owned)
            .collect();
        snaps.push(
            json!({"pod": snapshot(&pod), "host_routes": host_routes, "host_addrs": host_addrs}),
        );
        assert!(can_ping(&pod, "10.28.10.1"), "{tag}: pod -> gateway");
        assert!(can_ping(net.host(), "10.28.10.5"), "{tag}: host -> pod");
        assert!(
            can_ping_eventually(net.host(), "fd00:28:10::5", 5),
            "{tag}: host -> pod (IPv6)"
        );
        tool.check(&pod).assert_ok();
        tool.del(&pod).assert_ok();
        assert_eq!(pod.link_names(), ["lo"], "{tag}: DEL left links in the pod");
        assert!(
            !net.host()
                .link_names()
                .iter()
                .any(|n| n.starts_with("veth")),
            "{tag}: DEL left the host veth"
        );
        tool.del(&pod).assert_ok();
    }
    eprintln!("ours: {}\nref:  {}", snaps[0], snaps[1]);
    assert_eq!(
        snaps[0], snaps[1],
        "ptp: the pod (or the host's side) differs from the reference's"
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn ptp_ip_masq_masquerades_leaving_the_host_and_del_clears_it() {
    let net = TestNet::new();
    let out = net.outside();
    let conf = conflist(
        "ptpm",
        vec![json!({"type": "ptp", "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                     "ranges": [[{"subnet": "10.28.11.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}})],
    );
    let tool = net
        .cnitool(&conf)
        .cni_path(&[bin_dir(&net, "o", &["ptp", "host-local"], &[])]);
    let (a, b) = (net.pod("a"), net.pod("b"));
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    let srv = TcpServer::start(&out.ns, "0.0.0.0", 7100, "far");
    assert!(
        tcp_request(&a, &out.far_v4.to_string(), 7100).is_some(),
        "pod a does not get out"
    );
    assert_eq!(
        srv.peers().last().unwrap().ip(),
        std::net::IpAddr::V4(out.host_v4),
        "not masqueraded"
    );
    // Between the network's pods the source stays (the reference's per-subnet exception).
    let in_b = TcpServer::start(&b, "0.0.0.0", 7101, "b");
    assert!(
        tcp_request(&a, &first_ip(&rb), 7101).is_some(),
        "a does not reach b"
    );
    assert_eq!(
        in_b.peers().last().unwrap().ip().to_string(),
        first_ip(&ra),
        "pod-to-pod was masqueraded"
    );
    tool.check(&a).assert_ok();
    tool.del(&a).assert_ok();
    tool.del(&b).assert_ok();
    for set in ["masq4", "managed_br"] {
        let elems = nft_elems(&net, "set", set);
        assert!(elems.is_empty(), "DEL left {set} elements: {elems:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// macvlan

/// A "LAN": `mvup` in the host (the master, 10.28.20.1/24, default route through it) whose
/// peer sits in a `lan` netns at 10.28.20.2/24.
fn lan(net: &TestNet) -> Netns {
    let lan = net.pod("lan");
    let h = net.host();
    h.ip(&[
        "link",
        "add",
        "mvup",
        "type",
        "veth",
        "peer",
        "name",
        "mvlan",
        "netns",
        lan.name(),
    ]);
    h.ip(&["addr", "add", "10.28.20.1/24", "dev", "mvup"]);
    h.ip(&["link", "set", "mvup", "up"]);
    h.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.28.20.254",
        "dev",
        "mvup",
    ]);
    lan.ip(&["addr", "add", "10.28.20.2/24", "dev", "mvlan"]);
    lan.ip(&["link", "set", "mvlan", "up"]);
    lan
}

fn macvlan_conf(name: &str, mode: &str, master: Option<&str>, v4: &str, v6: &str) -> Value {
    let mut p = json!({"type": "macvlan", "mode": mode, "mtu": 1400,
        "ipam": static_ipam(v4, "10.28.20.1", v6, "fd00:28:20::1")});
    if let Some(m) = master {
        p["master"] = json!(m);
    }
    conflist(name, vec![p])
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn macvlan_every_mode_gives_the_references_pod_and_the_default_master() {
    let net = TestNet::new();
    let lan = lan(&net);
    for mode in ["bridge", "private", "vepa", "passthru"] {
        // No master: the default route's link (mvup).
        let conf = macvlan_conf(
            &format!("mv{mode}"),
            mode,
            None,
            "10.28.20.5/24",
            "fd00:28:20::5/64",
        );
        let pod = net.pod(mode);
        let mut snaps = Vec::new();
        for (tag, ours, refs) in [
            ("ours", &["macvlan", "static"][..], &[][..]),
            ("ref", &[][..], &["macvlan", "static"][..]),
        ] {
            let tool =
                net.cnitool(&conf)
                    .cni_path(&[bin_dir(&net, &format!("{mode}-{tag}"), ours, refs)]);
            let r = tool.add(&pod).assert_ok().json().clone();
            assert_eq!(r["interfaces"][0]["name"], "eth0");
            let link = pod.link("eth0").unwrap();
            assert_eq!(link["linkinfo"]["info_data"]["mode"], mode, "{tag}: {link}");
            snaps.push(snapshot(&pod));
            assert!(
                can_ping_eventually(&lan, "10.28.20.5", 3),
                "{mode} {tag}: the LAN does not reach the pod"
            );
            tool.check(&pod).assert_ok();
            tool.del(&pod).assert_ok();
            assert_eq!(pod.link_names(), ["lo"], "{mode} {tag}: DEL left links");
            tool.del(&pod).assert_ok();
        }
        assert_eq!(
            snaps[0], snaps[1],
            "macvlan {mode}: differs from the reference's"
        );
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn macvlan_bridge_mode_pods_talk_private_mode_pods_do_not() {
    let net = TestNet::new();
    let _lan = lan(&net);
    let bin = bin_dir(&net, "o", &["macvlan", "static"], &[]);
    for (mode, talk) in [("bridge", true), ("private", false)] {
        let a = net.pod(&format!("{mode}a"));
        let b = net.pod(&format!("{mode}b"));
        let ca = macvlan_conf(
            &format!("mv{mode}a"),
            mode,
            Some("mvup"),
            "10.28.20.11/24",
            "fd00:28:20::11/64",
        );
        let cb = macvlan_conf(
            &format!("mv{mode}b"),
            mode,
            Some("mvup"),
            "10.28.20.12/24",
            "fd00:28:20::12/64",
        );
        let (ta, tb) = (
            net.cnitool(&ca).cni_path(std::slice::from_ref(&bin)),
            net.cnitool(&cb).cni_path(std::slice::from_ref(&bin)),
        );
        ta.add(&a).assert_ok();
        tb.add(&b).assert_ok();
        assert_eq!(
            can_ping_eventually(&a, "10.28.20.12", if talk { 3 } else { 1 }),
            talk,
            "{mode}: a -> b"
        );
        ta.del(&a).assert_ok();
        tb.del(&b).assert_ok();
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn macvlan_mtu_above_the_master_is_refused_and_link_in_container_uses_the_pods_master() {
    let net = TestNet::new();
    let _lan = lan(&net);
    let bin = bin_dir(&net, "o", &["macvlan", "static"], &[]);
    let pod = net.pod("p");
    let mut c = macvlan_conf(
        "mvmtu",
        "bridge",
        Some("mvup"),
        "10.28.20.5/24",
        "fd00:28:20::5/64",
    );
    c["plugins"][0]["mtu"] = json!(1600);
    let out = net
        .cnitool(&c)
        .cni_path(std::slice::from_ref(&bin))
        .add(&pod);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(7), "{out}");
    assert!(out.stdout.contains("MTU"), "{out}");
    assert_eq!(pod.link_names(), ["lo"], "a refused ADD made a link");
    // A master that does not exist.
    let c = macvlan_conf(
        "mvnone",
        "bridge",
        Some("nosuch0"),
        "10.28.20.5/24",
        "fd00:28:20::5/64",
    );
    let out = net
        .cnitool(&c)
        .cni_path(std::slice::from_ref(&bin))
        .add(&pod);
    out.assert_err();
    assert!(out.stdout.contains("nosuch0"), "{out}");
    // linkInContainer: the master is a link of the pod.
    pod.ip(&[
        "link", "add", "inner0", "type", "veth", "peer", "name", "inner1",
    ]);
    pod.ip(&["link", "set", "inner0", "up"]);
    let mut c = macvlan_conf(
        "mvin",
        "bridge",
        Some("inner0"),
        "10.28.21.5/24",
        "fd00:28:21::5/64",
    );
    c["plugins"][0]["linkInContainer"] = json!(true);
    c["plugins"][0]["ipam"] =
        json!({"type": "static", "addresses": [{"address": "10.28.21.5/24"}]});
    let tool = net
        .cnitool(&c)
        .cni_path(std::slice::from_ref(&bin))
        .ifname("net1");
    tool.add(&pod).assert_ok();
    let l = pod.link("net1").unwrap();
    assert_eq!(l["link"], "inner0", "{l}");
    tool.check(&pod).assert_ok();
    tool.del(&pod).assert_ok();
    assert!(pod.link("net1").is_none());
}

// ---------------------------------------------------------------------------------------------
// host-device

/// `aahd0` in the host (10.28.30.1/24, up; named to sort before `lo` in /sys/devices/virtual/net)
/// whose veth peer is in a `far` netns at 10.28.30.2/24.
fn host_dev(net: &TestNet) -> Netns {
    let far = net.pod("far");
    let h = net.host();
    h.ip(&[
        "link",
        "add",
        "aahd0",
        "type",
        "veth",
        "peer",
        "name",
        "hdpeer",
        "netns",
        far.name(),
    ]);
    h.ip(&["addr", "add", "10.28.30.1/24", "dev", "aahd0"]);
    h.ip(&["link", "set", "aahd0", "up"]);
    far.ip(&["addr", "add", "10.28.30.2/24", "dev", "hdpeer"]);
    far.ip(&["link", "set", "hdpeer", "up"]);
    far
}

fn host_dev_state(net: &TestNet) -> (bool, Vec<String>, bool) {
    match net.host().link("aahd0") {
        None => (false, vec![], false),
        Some(l) => (
            true,
            net.host().addrs("aahd0"),
            arr(&l["flags"]).iter().any(|f| f == "UP"),
        ),
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn host_device_moves_in_as_the_reference_and_comes_back_with_name_and_addresses() {
    let net = TestNet::new();
    let far = host_dev(&net);
    let mac = net.host().link("aahd0").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let pod = net.pod("p");
    let ipam = json!({"type": "static", "addresses": [{"address": "10.28.30.5/24"}]});
    let selectors = [
        ("device", json!("aahd0")),
        ("hwaddr", json!(mac)),
        ("kernelpath", json!("/sys/devices/virtual")),
    ];
    for (key, val) in selectors {
        let conf = conflist(
            "hd",
            vec![json!({"type": "host-device", key: val, "ipam": ipam.clone()})],
        );
        let mut snaps = Vec::new();
        for (tag, ours, refs) in [
            ("ours", &["host-device", "static"][..], &[][..]),
            ("ref", &[][..], &["host-device", "static"][..]),
        ] {
            let tool = net
                .cnitool(&conf)
                .cni_path(&[bin_dir(&net, &format!("{key}-{tag}"), ours, refs)])
                .ifname("net0");
            let r = tool.add(&pod).assert_ok().json().clone();
            assert_eq!(r["interfaces"][0]["name"], "net0", "{key} {tag}: {r}");
            assert!(
                net.host().link("aahd0").is_none(),
                "{key} {tag}: still on the host"
            );
            snaps.push(snapshot(&pod));
            assert!(
                can_ping_eventually(&far, "10.28.30.5", 3),
                "{key} {tag}: the pod is not reached through the device"
            );
            tool.check(&pod).assert_ok();
            tool.del(&pod).assert_ok();
            let (there, addrs, up) = host_dev_state(&net);
            assert!(there, "{key} {tag}: aahd0 did not come back under its name");
            if tag == "ours" {
                assert_eq!(addrs, ["10.28.30.1/24"], "{key}: addresses not restored");
                assert!(up, "{key}: not up again");
            } else {
                // The reference brings it back bare and down; put it back for the next run.
                eprintln!("{key}: the reference returned aahd0 with {addrs:?}, up={up}");
                net.host()
                    .ip(&["addr", "replace", "10.28.30.1/24", "dev", "aahd0"]);
                net.host().ip(&["link", "set", "aahd0", "up"]);
                // The reference's DEL is not idempotent: a second one fails ("failed to find
                // net0"); ours succeeds again.
                continue;
            }
            tool.del(&pod).assert_ok();
        }
        assert_eq!(
            snaps[0], snaps[1],
            "host-device by {key}: the pod differs from the reference's"
        );
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn host_device_refuses_pci_without_such_device_and_del_after_the_pod_is_gone_succeeds() {
    let net = TestNet::new();
    let _far = host_dev(&net);
    let bin = bin_dir(&net, "o", &["host-device"], &[]);
    let pod = net.pod("p");
    let conf = conflist(
        "hdpci",
        vec![json!({"type": "host-device", "pciBusID": "0000:7f:1f.7"})],
    );
    let out = net
        .cnitool(&conf)
        .cni_path(std::slice::from_ref(&bin))
        .add(&pod);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(7), "{out}");
    assert!(out.stdout.contains("0000:7f:1f.7"), "{out}");
    let conf = conflist("hdbad", vec![json!({"type": "host-device"})]);
    let out = net
        .cnitool(&conf)
        .cni_path(std::slice::from_ref(&bin))
        .add(&pod);
    assert!(out.stdout.contains("pciBusID"), "{out}");
    // A name taken in the pod: refused before anything moves.
    pod.ip(&[
        "link", "add", "net0", "type", "veth", "peer", "name", "net0p",
    ]);
    let conf = conflist(
        "hd",
        vec![json!({"type": "host-device", "device": "aahd0"})],
    );
    let tool = net
        .cnitool(&conf)
        .cni_path(std::slice::from_ref(&bin))
        .ifname("net0");
    let out = tool.add(&pod);
    out.assert_err();
    assert_eq!(
        host_dev_state(&net).1,
        ["10.28.30.1/24"],
        "the refused ADD touched the device"
    );
    pod.ip(&["link", "del", "net0"]);
    // Moved in, then the pod dies: a virtual device dies with it; DEL still succeeds.
    let path = pod.path_str().to_owned();
    let id = tool.container_id_for(&pod);
    tool.add(&pod).assert_ok();
    run_ok("ip", &["netns", "del", pod.name()]);
    tool.del_path(&path, &id).assert_ok();
}

// ---------------------------------------------------------------------------------------------
// tap

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn tap_is_made_in_the_pod_with_its_owner_queues_mtu_mac_bridge_and_addresses() {
    let net = TestNet::new();
    assert!(
        !Path::new("/usr/lib/cni/tap").exists(),
        "Debian's reference now has tap: add it as a control here"
    );
    let pod = net.pod("p");
    pod.ip(&["link", "add", "br0", "type", "bridge"]);
    pod.ip(&["link", "set", "br0", "up"]);
    let conf = conflist(
        "tap",
        vec![
            json!({"type": "tap", "multiQueue": true, "mtu": 1400, "mac": "02:28:00:00:00:07",
            "owner": 54321, "group": 54322, "bridge": "br0",
            "ipam": {"type": "static", "addresses": [{"address": "10.28.40.5/24"}]}}),
        ],
    );
    let tool = net
        .cnitool(&conf)
        .cni_path(&[bin_dir(&net, "o", &["tap", "static"], &[])])
        .ifname("tap0");
    let r = tool.add(&pod).assert_ok().json().clone();
    assert_eq!(r["interfaces"][0]["mac"], "02:28:00:00:00:07", "{r}");
    let l = pod.link("tap0").unwrap();
    let info = &l["linkinfo"]["info_data"];
    assert_eq!(l["linkinfo"]["info_kind"], "tun", "{l}");
    assert_eq!(info["type"], "tap", "{l}");
    assert_eq!(info["multi_queue"], true, "{l}");
    assert_eq!(info["vnet_hdr"], true, "{l}");
    assert_eq!(info["user"], 54321, "{l}");
    assert_eq!(info["group"], 54322, "{l}");
    assert_eq!(l["mtu"], 1400);
    assert_eq!(l["master"], "br0", "{l}");
    assert_eq!(pod.addrs("tap0"), ["10.28.40.5/24"]);
    tool.check(&pod).assert_ok();
    // A second ADD of the same name is refused, not attached to the existing device.
    let again = net
        .cnitool(&conf)
        .cni_path(&[bin_dir(&net, "o2", &["tap", "static"], &[])])
        .ifname("tap0")
        .container_id("other");
    let out = again.add(&pod);
    out.assert_err();
    assert_eq!(out.cni_error_code(), Some(103), "{out}");
    tool.del(&pod).assert_ok();
    assert!(pod.link("tap0").is_none());
    tool.del(&pod).assert_ok();
}

// ---------------------------------------------------------------------------------------------
// failures and GC

/// Files of host-local's dataDir for `network`: the leases (the lock and last-reserved files
/// left out).
fn leases(net: &TestNet, network: &str) -> Vec<String> {
    match std::fs::read_dir(net.data_dir().join(network)) {
        Err(_) => vec![],
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect(),
    }
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn a_failed_add_undoes_every_step_and_releases_the_address() {
    let net = TestNet::new();
    let _lan = lan(&net);
    let _far = host_dev(&net);
    // IPAM gives a route through a gateway outside the pod's subnet: the kernel refuses it
    // (ENETUNREACH) after the link, the addresses and the other routes are in place.
    let ipam = json!({"type": "host-local", "dataDir": net.data_dir(),
        "ranges": [[{"subnet": "10.28.50.0/24"}]],
        "routes": [{"dst": "192.168.77.0/24", "gw": "10.99.99.1"}]});
    let cases = [
        ("ptp", json!({"type": "ptp", "ipam": ipam.clone()})),
        (
            "macvlan",
            json!({"type": "macvlan", "master": "mvup", "ipam": ipam.clone()}),
        ),
        ("tap", json!({"type": "tap", "ipam": ipam.clone()})),
        (
            "host-device",
            json!({"type": "host-device", "device": "aahd0", "ipam": ipam.clone()}),
        ),
    ];
    let pod = net.pod("p");
    let before_host = snapshot(net.host());
    for (plugin, p) in cases {
        let name = format!("fail-{plugin}");
        let conf = conflist(&name, vec![p]);
        let tool =
            net.cnitool(&conf)
                .cni_path(&[bin_dir(&net, plugin, &[plugin, "host-local"], &[])]);
        let out = tool.add(&pod);
        out.assert_err();
        assert_eq!(out.cni_error_code(), Some(100), "{plugin}: {out}");
        assert!(
            out.stdout.contains("192.168.77.0/24"),
            "{plugin}: the error names the route: {out}"
        );
        assert_eq!(
            pod.link_names(),
            ["lo"],
            "{plugin}: the failed ADD left links in the pod"
        );
        assert_eq!(
            leases(&net, &name),
            Vec::<String>::new(),
            "{plugin}: the address was not released"
        );
        assert_eq!(
            snapshot(net.host()),
            before_host,
            "{plugin}: the host changed"
        );
        tool.del(&pod).assert_ok();
    }
    // host-device came back as it was: name, address, up.
    assert_eq!(
        host_dev_state(&net),
        (true, vec!["10.28.30.1/24".to_string()], true)
    );
}

#[test]
#[ignore = "kernel test (root): run by make conformance"]
fn bandwidth_gc_removes_the_ifbs_of_containers_no_longer_valid() {
    let net = TestNet::new();
    let conf = shaped_net(
        &net,
        "bwgc",
        "cnibwg0",
        "10.28.8.0/24",
        json!({"egressRate": 8_000_000, "egressBurst": 400_000}),
    );
    // GC needs cniVersion 1.1.0 (libcni 1.1.2 reads no 1.1.0 result: ADD stays at 1.0.0).
    let mut gc_conf = conf.clone();
    gc_conf["cniVersion"] = json!("1.1.0");
    let bin = bin_dir(&net, "o", &["bridge", "host-local", "bandwidth"], &[]);
    let tool = net.cnitool(&conf).cni_path(std::slice::from_ref(&bin));
    let (a, b) = (net.pod("a"), net.pod("b"));
    let ra = tool.add(&a).assert_ok().json().clone();
    let rb = tool.add(&b).assert_ok().json().clone();
    let (ifa, ifb) = (ifb_of(&ra).unwrap(), ifb_of(&rb).unwrap());
    let keep = json!([{"containerID": tool.container_id_for(&a), "ifname": "eth0"}]);
    net.cnitool(&gc_conf)
        .cni_path(&[bin])
        .valid_attachments(keep)
        .gc()
        .assert_ok();
    assert!(
        net.host().link(&ifa).is_some(),
        "GC removed a valid container's IFB"
    );
    assert!(net.host().link(&ifb).is_none(), "GC left {ifb}");
    tool.del(&a).assert_ok();
    assert!(net.host().link(&ifa).is_none());
}
