//! Kernel conformance of `cnirs ls` and `cnirs inspect` (issue 17), with pods attached
//! through cnitool (libcni 1.1.2) to two networks of the test's host netns:
//!
//! ```text
//!   front  bridge + host-local (10.217.1.0/24, fd00:217:1::/64) + portmap + isolation   a, b
//!   back   internal-bridge + host-local (10.217.2.0/24)                                 a (eth1)
//!   a publishes 127.0.0.1:8080 -> 80/tcp and :5353 -> 53/udp
//! ```
//!
//! What is proven: the networks `ls` lists and their attachment counts; for every attachment
//! `inspect` shows the addresses and the MAC the pod netns has (read with `ip -n POD`) and the
//! ports the runtime asked for; drift is empty when healthy, names the table and elements after
//! `nft flush ruleset` in the test's host netns, and is empty again after `cnirs reconcile`;
//! DEL removes the attachment and the last DEL the network; an unknown network exits 1; the
//! state of one netns is not shown in another (`ip netns exec`).
//!
//! Build first: `cargo build --release -p bridge -p internal-bridge -p host-local -p portmap
//! -p isolation -p cnirs`; run: `cargo test -p conformance --test inspect -- --ignored` (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use conformance::*;
use serde_json::{json, Value};

fn front(net: &TestNet) -> Value {
    json!({"cniVersion": "1.0.0", "name": "front", "plugins": [
        {"type": "bridge", "bridge": "cnirs-ifront", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": "10.217.1.0/24"}], [{"subnet": "fd00:217:1::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "isolation"}
    ]})
}

fn back(net: &TestNet) -> Value {
    json!({"cniVersion": "1.0.0", "name": "back", "plugins": [
        {"type": "internal-bridge", "bridge": "cnirs-iback",
         "ipam": {"type": "host-local", "dataDir": net.data_dir(),
                  "ranges": [[{"subnet": "10.217.2.0/24"}]]}}
    ]})
}

fn ports() -> Value {
    json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}
    ]})
}

/// `ip netns exec NS cnirs ARGS` with the test's state root.
fn cnirs_in(net: &TestNet, ns: &Netns, args: &[&str]) -> CmdOutput {
    let bin = plugin_bin("cnirs");
    let mut cmd = ns.command(&bin.display().to_string());
    cmd.args(args).env("CNIRS_RUN_DIR", net.run_dir());
    run(&mut cmd)
}

fn cnirs(net: &TestNet, args: &[&str]) -> CmdOutput {
    cnirs_in(net, net.host(), args)
}

fn inspect_json(net: &TestNet, network: &str) -> Value {
    cnirs(net, &["inspect", network, "--json"])
        .assert_ok()
        .json()
        .clone()
}

fn strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn attachment<'a>(view: &'a Value, cid: &str, ifname: &str) -> &'a Value {
    view["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["containerId"] == cid && a["ifname"] == ifname)
        .unwrap_or_else(|| panic!("no attachment {cid}/{ifname} in {view}"))
}

/// The pod's addresses and MAC of `ifname`, read from its netns.
fn pod_side(pod: &Netns, ifname: &str) -> (Vec<String>, String) {
    let mut addrs = pod.addrs(ifname);
    addrs.sort();
    let mac = pod.link(ifname).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    (addrs, mac)
}

#[test]
#[ignore = "kernel: needs root, nft, ip and the release binaries"]
fn ls_and_inspect_show_what_the_pods_have() {
    require_root();
    require_tools(&["ip", "nft"]);
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let front_tool = net.cnitool(&front(&net));
    let back_tool = net.cnitool(&back(&net)).ifname("eth1");
    net.cnitool(&front(&net))
        .cap_args(ports())
        .add(&a)
        .assert_ok();
    front_tool.add(&b).assert_ok();
    back_tool.add(&a).assert_ok();
    let (cid_a, cid_b) = (
        front_tool.container_id_for(&a),
        front_tool.container_id_for(&b),
    );

    // ls: both networks, with their bridges and attachment counts.
    let ls = cnirs(&net, &["ls", "--json"]).assert_ok().json().clone();
    let by_name = |n: &str| -> Value {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing from {ls}"))
            .clone()
    };
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");
    let (f, k) = (by_name("front"), by_name("back"));
    assert_eq!(
        (
            &f["bridge"],
            &f["attachments"],
            &f["isolated"],
            &f["internal"]
        ),
        (
            &json!("cnirs-ifront"),
            &json!(2),
            &json!(true),
            &json!(false)
        ),
        "{ls}"
    );
    assert_eq!(
        (&k["bridge"], &k["attachments"], &k["internal"]),
        (&json!("cnirs-iback"), &json!(1), &json!(true)),
        "{ls}"
    );
    let text = cnirs(&net, &["ls"]).assert_ok().stdout.clone();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{text}");
    let col = lines[0].find("BRIDGE").unwrap();
    for l in &lines[1..] {
        assert!(l[col..].starts_with("cnirs-i"), "columns aligned:\n{text}");
    }

    // inspect front: every attachment as its pod netns has it.
    let v = inspect_json(&net, "front");
    assert_eq!(v["name"], "front");
    assert_eq!(v["bridge"], "cnirs-ifront");
    assert_eq!(
        strs(&v["subnets"]),
        ["10.217.1.0/24", "fd00:217:1::/64"],
        "{v}"
    );
    assert_eq!(
        (&v["internal"], &v["isolated"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(v["drift"], json!([]), "healthy: no drift\n{v}");
    assert_eq!(v["attachments"].as_array().unwrap().len(), 2, "{v}");
    for (pod, cid) in [(&a, &cid_a), (&b, &cid_b)] {
        let at = attachment(&v, cid, "eth0");
        let (addrs, mac) = pod_side(pod, "eth0");
        assert_eq!(addrs.len(), 2, "one v4 and one v6 address in the pod");
        assert_eq!(strs(&at["ips"]), addrs, "ips of {cid}: {at}");
        assert_eq!(at["mac"].as_str().unwrap(), mac, "mac of {cid}: {at}");
    }
    let pa = attachment(&v, &cid_a, "eth0")["ports"].clone();
    // Every address of the pod, each family's: the wildcard mapping is published in both,
    // 127.0.0.1 only in IPv4.
    let (addrs_a, _) = pod_side(&a, "eth0");
    let bare = |v6: bool| -> String {
        let s = addrs_a.iter().find(|s| s.contains(':') == v6).unwrap();
        s.split('/').next().unwrap().to_owned()
    };
    let (ip_a, ip6_a) = (bare(false), bare(true));
    let mut got: Vec<(String, u64, u64, String, String)> = pa
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["hostIP"].as_str().unwrap_or("").to_owned(),
                p["hostPort"].as_u64().unwrap(),
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_owned(),
                p["containerIP"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("".into(), 5353, 53, "udp".into(), ip_a.clone()),
            ("".into(), 5353, 53, "udp".into(), ip6_a),
            ("127.0.0.1".into(), 8080, 80, "tcp".into(), ip_a),
        ],
        "ports of a: {pa}"
    );
    assert_eq!(attachment(&v, &cid_b, "eth0")["ports"], json!([]));

    // inspect back: a's second interface, internal, not isolated.
    let k = inspect_json(&net, "back");
    assert_eq!(
        (&k["internal"], &k["isolated"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(k["drift"], json!([]), "healthy internal network: {k}");
    // A missing kernel-level seal rule is drift.
    let rule = [
        "-4",
        "rule",
        "del",
        "priority",
        "10",
        "to",
        "10.217.2.0/24",
        "unreachable",
    ];
    net.host().ip(&rule);
    let drift = strs(&inspect_json(&net, "back")["drift"]);
    assert_eq!(
        drift,
        ["seal rule ip -4 rule priority 10 to 10.217.2.0/24 unreachable"],
        "{drift:?}"
    );
    let mut add = rule;
    add[2] = "add";
    net.host().ip(&add);
    assert_eq!(inspect_json(&net, "back")["drift"], json!([]));
    let at = attachment(&k, &cid_a, "eth1");
    let (addrs, mac) = pod_side(&a, "eth1");
    assert_eq!(
        (strs(&at["ips"]), at["mac"].as_str().unwrap()),
        (addrs, &*mac)
    );

    // Human output: aligned columns, one row per attachment.
    let text = cnirs(&net, &["inspect", "front"])
        .assert_ok()
        .stdout
        .clone();
    eprintln!(
        "$ cnirs ls\n{}\n$ cnirs inspect front\n{text}",
        cnirs(&net, &["ls"]).stdout
    );
    assert!(text.contains("Drift        none"), "{text}");
    let header = text.lines().find(|l| l.starts_with("CONTAINER")).unwrap();
    let col = header.find("IPS").unwrap();
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("CONTAINER"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for r in &rows {
        assert!(
            r[col..].starts_with("10.217.1."),
            "aligned IPS column:\n{text}"
        );
    }
    assert!(text.contains("127.0.0.1:8080->80/tcp"), "{text}");
    assert!(text.contains("0.0.0.0:5353->53/udp"), "{text}");

    // Another netns (a pod's) has no state of its own: nothing listed there.
    let there = cnirs_in(&net, &a, &["ls", "--json"])
        .assert_ok()
        .json()
        .clone();
    assert_eq!(there, json!([]), "state is per network namespace");
    let out = cnirs_in(&net, &a, &["inspect", "front"]);
    assert_eq!(out.code, Some(1), "{out}");
}

#[test]
#[ignore = "kernel: needs root, nft, ip and the release binaries"]
fn drift_after_a_flush_then_del_removes_the_attachment() {
    require_root();
    require_tools(&["ip", "nft"]);
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let tool = net.cnitool(&front(&net));
    let tool_a = net.cnitool(&front(&net)).cap_args(ports());
    tool_a.add(&a).assert_ok();
    tool.add(&b).assert_ok();
    let cid_a = tool.container_id_for(&a);
    assert_eq!(inspect_json(&net, "front")["drift"], json!([]));

    // In the test's own host netns, never the machine's.
    net.host().exec_ok("nft", &["flush", "ruleset"]);
    let v = inspect_json(&net, "front");
    let drift = strs(&v["drift"]);
    assert!(drift.iter().any(|d| d == "table inet cnirs"), "{drift:?}");
    for want in [
        "element managed_br { \"cnirs-ifront\" }",
        "element isolated_br { \"cnirs-ifront\" }",
        "element masq4 { 10.217.1.0/24 }",
        "element pm4 { 127.0.0.1 . tcp . 8080 : ",
    ] {
        assert!(
            drift.iter().any(|d| d.starts_with(want)),
            "{want} missing from drift {drift:?}"
        );
    }
    let text = cnirs(&net, &["inspect", "front"])
        .assert_ok()
        .stdout
        .clone();
    eprintln!("$ cnirs inspect front   # after nft flush ruleset\n{text}");
    // Timings are printed, never asserted.
    for _ in 0..3 {
        let (i, l) = (cnirs(&net, &["inspect", "front"]), cnirs(&net, &["ls"]));
        eprintln!("inspect (drifted) {:?}, ls {:?}", i.elapsed, l.elapsed);
    }
    assert!(text.contains("missing: table inet cnirs"), "{text}");

    cnirs(&net, &["reconcile"]).assert_ok();
    for _ in 0..3 {
        eprintln!(
            "inspect (healthy) {:?}",
            cnirs(&net, &["inspect", "front"]).elapsed
        );
    }
    assert_eq!(
        inspect_json(&net, "front")["drift"],
        json!([]),
        "reconcile repaired what inspect reported"
    );

    // The bridge and the pods' host veths are checked too.
    net.host().ip(&["link", "del", "cnirs-ifront"]);
    let drift = strs(&inspect_json(&net, "front")["drift"]);
    assert_eq!(drift, ["link cnirs-ifront (bridge)"], "{drift:?}");

    tool.del(&b).assert_ok();
    let v = inspect_json(&net, "front");
    assert_eq!(v["attachments"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["attachments"][0]["containerId"], cid_a.as_str());

    tool_a.del(&a).assert_ok();
    let out = cnirs(&net, &["inspect", "front"]);
    assert_eq!(
        out.code,
        Some(1),
        "the last DEL removes the network:\n{out}"
    );
    assert!(out.stderr.contains("no network \"front\""), "{out}");
    assert_eq!(
        cnirs(&net, &["ls", "--json"]).assert_ok().json(),
        &json!([])
    );
}

#[test]
#[ignore = "kernel: needs root, nft, ip and the release binaries"]
fn an_unknown_network_exits_non_zero_with_a_clear_message() {
    require_root();
    let net = TestNet::new();
    let out = cnirs(&net, &["inspect", "nosuch"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(
        out.stderr.contains("no network \"nosuch\"") && out.stderr.contains("cnirs ls"),
        "{out}"
    );
    let usage = cnirs(&net, &["inspect"]);
    assert_eq!(usage.code, Some(2), "usage error: {usage}");
}

#[test]
#[ignore = "kernel: needs root, nft, ip and the release binaries"]
fn gc_drops_the_attachments_it_is_not_told_to_keep() {
    require_root();
    require_tools(&["ip", "nft"]);
    let net = TestNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let tool_a = net.cnitool(&front(&net)).cap_args(ports());
    tool_a.add(&a).assert_ok();
    let tool = net.cnitool(&front(&net));
    tool.add(&b).assert_ok();
    assert_eq!(
        inspect_json(&net, "front")["attachments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let keep = tool.container_id_for(&b);
    net.cnitool(&front(&net))
        .valid_attachments(json!([{"containerID": keep, "ifname": "eth0"}]))
        .gc()
        .assert_ok();
    let v = inspect_json(&net, "front");
    let cids: Vec<&str> = v["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["containerId"].as_str().unwrap())
        .collect();
    assert_eq!(cids, [keep.as_str()], "{v}");
    assert_eq!(v["drift"], json!([]), "GC left the kept pod whole: {v}");
    net.cnitool(&front(&net))
        .valid_attachments(json!([]))
        .gc()
        .assert_ok();
    assert_eq!(
        cnirs(&net, &["ls", "--json"]).assert_ok().json(),
        &json!([])
    );
}
