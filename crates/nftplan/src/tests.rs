//! Pure tests: golden text of the skeleton and batches, and the state machine over the
//! in-memory fake table (no root).

use std::{net::IpAddr, sync::Arc};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn br(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn att(net: &str, cid: &str) -> Attachment {
    Attachment::new(net, cid, "eth0").unwrap()
}

fn pm(host: Option<&str>, port: u16, proto: Protocol, ctr: &str, cport: u16) -> PortMapping {
    PortMapping {
        host_ip: host.map(ip),
        host_port: port,
        protocol: proto,
        container_ip: ip(ctr),
        container_port: cport,
    }
}

fn fw(nft: &Arc<FakeNft>) -> (tempfile::TempDir, Firewall) {
    let dir = tempfile::tempdir().unwrap();
    let f = Firewall::with_backend(dir.path().join("netns-1"), Box::new(nft.clone()));
    (dir, f)
}

fn net_a() -> NetworkElems {
    NetworkElems {
        bridge: br("cnirs-a"),
        masq: vec![
            "10.213.1.7/24".parse().unwrap(),
            "fd00:213::/64".parse().unwrap(),
        ],
        internal: false,
        subnets: vec![],
        spoof_check: None,
    }
}

#[test]
fn every_subnet_of_a_bridge_gets_a_hairpin_element() {
    let mut n = net_a();
    n.subnets = vec![
        "10.213.1.7/24".parse().unwrap(),
        "fd00:213::9/64".parse().unwrap(),
    ];
    let texts: Vec<String> = Elem::for_network(&n)
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        texts.contains(&"br_net4 { \"cnirs-a\" . 10.213.1.0/24 }".to_string()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"br_net6 { \"cnirs-a\" . fd00:213::/64 }".to_string()),
        "{texts:?}"
    );
}

#[test]
fn skeleton_matches_golden_file() {
    assert_eq!(
        SKELETON.as_str(),
        include_str!("../tests/golden/skeleton.nft")
    );
}

#[test]
fn skeleton_flushes_each_chain_after_declaring_it_and_counts_its_rules() {
    let lines: Vec<&str> = SKELETON.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("add rule inet cnirs "))
            .count(),
        SKELETON_RULES
    );
    for chain in [
        "portmap",
        "forward",
        "prerouting",
        "output",
        "postrouting",
        "raw_pre",
        "input",
    ] {
        let decl = lines
            .iter()
            .position(|l| l.starts_with(&format!("add chain inet cnirs {chain}")))
            .unwrap();
        let flush = lines
            .iter()
            .position(|l| *l == format!("flush chain inet cnirs {chain}"))
            .unwrap();
        let first_rule = lines
            .iter()
            .position(|l| l.starts_with(&format!("add rule inet cnirs {chain} ")))
            .unwrap();
        assert!(decl < flush && flush < first_rule, "{chain}");
    }
    // The inet nat output hook wants the numeric priority on nft 1.0.6.
    assert!(SKELETON.contains("hook output priority -100;"));
}

#[test]
fn network_elements_golden_add_batch() {
    let mut b = Batch::new();
    let mut n = net_a();
    n.internal = true;
    b.add(&Elem::for_network(&n));
    assert_eq!(
        b.text(),
        "add element inet cnirs managed_br { \"cnirs-a\" }\n\
         add element inet cnirs same_br { \"cnirs-a\" . \"cnirs-a\" }\n\
         add element inet cnirs internal_br { \"cnirs-a\" }\n\
         add element inet cnirs masq4 { 10.213.1.0/24 }\n\
         add element inet cnirs masq6 { fd00:213::/64 }\n"
    );
}

#[test]
fn port_elements_golden_add_remove_get_batches() {
    let elems: Vec<Elem> = [
        pm(Some("10.0.0.5"), 8080, Protocol::Tcp, "10.213.1.2", 80),
        pm(None, 53, Protocol::Udp, "10.213.1.2", 5353),
        pm(Some("fd00::5"), 443, Protocol::Sctp, "fd00:213::2", 8443),
        pm(Some("::"), 8080, Protocol::Tcp, "fd00:213::2", 80),
    ]
    .iter()
    .map(|m| Elem::Port {
        mapping: m.validated().unwrap(),
    })
    .collect();
    let mut b = Batch::new();
    b.add(&elems);
    assert_eq!(
        b.text(),
        "add element inet cnirs pm4 { 10.0.0.5 . tcp . 8080 : 10.213.1.2 . 80 }\n\
         add element inet cnirs pm4_any { udp . 53 : 10.213.1.2 . 5353 }\n\
         add element inet cnirs pm6 { fd00::5 . sctp . 443 : fd00:213::2 . 8443 }\n\
         add element inet cnirs pm6_any { tcp . 8080 : fd00:213::2 . 80 }\n"
    );
    let mut b = Batch::new();
    b.remove(&elems[..2]);
    assert_eq!(
        b.text(),
        "add element inet cnirs pm4 { 10.0.0.5 . tcp . 8080 : 10.213.1.2 . 80 }\n\
         delete element inet cnirs pm4 { 10.0.0.5 . tcp . 8080 }\n\
         add element inet cnirs pm4_any { udp . 53 : 10.213.1.2 . 5353 }\n\
         delete element inet cnirs pm4_any { udp . 53 }\n"
    );
    let mut b = Batch::new();
    b.get(&elems[2..3]).delete(&elems[3..]);
    assert_eq!(
        b.text(),
        "get element inet cnirs pm6 { fd00::5 . sctp . 443 }\n\
         delete element inet cnirs pm6_any { tcp . 8080 }\n"
    );
}

#[test]
fn ifname_validation_at_the_edges() {
    assert!(IfName::new("abcdefghijklmno").is_ok()); // 15 bytes
    assert!(IfName::new("abcdefghijklmnop").is_err()); // 16 bytes
    for bad in ["", ".", "..", "a b", "a/b", "a:b", "a\"b", "a\\b", "é"] {
        assert!(IfName::new(bad).is_err(), "{bad:?}");
    }
    // serde goes through the same check
    assert!(serde_json::from_str::<IfName>("\"x\\\" }\"").is_err());
}

#[test]
fn port_mapping_validation() {
    assert!(pm(None, 0, Protocol::Tcp, "10.0.0.1", 80)
        .validated()
        .is_err());
    assert!(pm(Some("::1"), 80, Protocol::Tcp, "10.0.0.1", 80)
        .validated()
        .is_err());
    assert!(pm(None, 80, Protocol::Tcp, "0.0.0.0", 80)
        .validated()
        .is_err());
    let m = pm(Some("0.0.0.0"), 80, Protocol::Tcp, "10.0.0.1", 80)
        .validated()
        .unwrap();
    assert_eq!(m.host_ip, None);
    assert_eq!(Protocol::parse("UDP").unwrap(), Protocol::Udp);
    assert_eq!(Protocol::parse("").unwrap(), Protocol::Tcp);
    assert!(Protocol::parse("icmp").is_err());
}

#[test]
fn network_elements_are_refcounted_across_attachments() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    // The first call of a namespace finds no table: skeleton and elements in one batch.
    assert_eq!(nft.scripts().len(), 1);
    assert!(nft.scripts()[0].starts_with(SKELETON.as_str()));
    assert!(nft.scripts()[0].contains("\nadd element inet cnirs managed_br { \"cnirs-a\" }\n"));
    assert_eq!(nft.elems(), Elem::for_network(&net_a()), "{}", nft.dump());
    f.attach_network(&att("a", "c2"), &net_a()).unwrap();
    f.attach_network(&att("a", "c1"), &net_a()).unwrap(); // idempotent ADD
    assert_eq!(nft.scripts().len(), 1, "2nd attachment execs nothing");
    f.detach_network(&att("a", "c1")).unwrap();
    assert_eq!(nft.scripts().len(), 1, "c2 still holds the network");
    f.detach_network(&att("a", "c2")).unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 2);
    assert!(s[1].contains("delete element inet cnirs managed_br { \"cnirs-a\" }"));
    assert!(s[1].contains("delete element inet cnirs masq4 { 10.213.1.0/24 }"));
    assert_eq!(nft.dump(), "add table inet cnirs\nadd table bridge cnirs\n");
    // DEL again, and DEL of an attachment never seen: Ok, no nft.
    f.detach_network(&att("a", "c2")).unwrap();
    f.detach_network(&att("zzz", "c9")).unwrap();
    assert_eq!(nft.scripts().len(), 2);
}

#[test]
fn shared_bridge_element_survives_the_other_network_going() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let b = br("cnirs-a");
    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    f.attach_isolation(&att("a", "c1"), &b).unwrap();
    // A second network on the same bridge (odd but possible).
    let n2 = NetworkElems {
        bridge: b.clone(),
        masq: vec![],
        internal: false,
        subnets: vec![],
        spoof_check: None,
    };
    f.attach_network(&att("a2", "c2"), &n2).unwrap();
    nft.clear();
    f.detach_network(&att("a", "c1")).unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 1);
    assert!(
        !s[0].contains("managed_br"),
        "a2 still uses the bridge: {}",
        s[0]
    );
    assert!(s[0].contains("masq4"));
    assert!(nft.contains(&Elem::ManagedBr { bridge: b.clone() }));
    assert!(!nft.contains(&Elem::masq("10.213.1.0/24".parse().unwrap())));
    assert_eq!(
        f.check_isolation(&att("a", "c1")).unwrap(),
        Vec::<Elem>::new()
    );
}

#[test]
fn failed_batch_is_retried_once_with_the_skeleton() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    // A backend that cannot tell whether the table is there: the element batch fails (no
    // table), the skeleton and the batch go again in one transaction.
    nft.set_blind(true);
    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 2);
    assert!(
        s[0].starts_with("add element inet cnirs managed_br"),
        "{}",
        s[0]
    );
    assert!(s[1].starts_with(SKELETON.as_str()) && s[1].ends_with(&s[0]));
    assert!(nft.contains(&Elem::SameBr {
        bridge: br("cnirs-a")
    }));
    // Both fail: the error comes back and nothing is recorded.
    nft.fail_next(&[true, true]);
    let n = NetworkElems {
        bridge: br("cnirs-b"),
        masq: vec![],
        internal: true,
        subnets: vec![],
        spoof_check: None,
    };
    assert!(matches!(
        f.attach_network(&att("b", "c1"), &n),
        Err(NftError::Nft { .. })
    ));
    assert!(matches!(
        f.check_network(&att("b", "c1")),
        Err(NftError::NotAttached { .. })
    ));
}

#[test]
fn port_conflicts_are_refused_and_name_the_owner() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a1 = att("a", "c1");
    f.add_ports(
        &a1,
        &[pm(Some("10.0.0.5"), 8080, Protocol::Tcp, "10.213.1.2", 80)],
    )
    .unwrap();
    nft.clear();
    // Wildcard vs specific, same proto/port: conflict.
    let e = f
        .add_ports(
            &att("a", "c2"),
            &[pm(None, 8080, Protocol::Tcp, "10.213.1.3", 80)],
        )
        .unwrap_err();
    match e {
        NftError::Conflict { port, owner } => {
            assert_eq!(port, "0.0.0.0:8080/tcp");
            assert_eq!(owner, "a/c1/eth0");
        }
        other => panic!("{other:?}"),
    }
    // Same specific address on another network: conflict too.
    assert!(matches!(
        f.add_ports(
            &att("b", "c3"),
            &[pm(Some("10.0.0.5"), 8080, Protocol::Tcp, "10.213.2.2", 80)]
        ),
        Err(NftError::Conflict { .. })
    ));
    assert!(nft.scripts().is_empty(), "a refused ADD touches nothing");
    // Other address, other protocol, other family: fine.
    f.add_ports(
        &att("a", "c2"),
        &[
            pm(Some("10.0.0.6"), 8080, Protocol::Tcp, "10.213.1.3", 80),
            pm(None, 8080, Protocol::Udp, "10.213.1.3", 80),
            pm(None, 8080, Protocol::Tcp, "fd00:213::3", 80),
        ],
    )
    .unwrap();
    // Within one request.
    assert!(matches!(
        f.add_ports(
            &att("a", "c4"),
            &[
                pm(None, 9000, Protocol::Tcp, "10.213.1.4", 80),
                pm(Some("10.0.0.9"), 9000, Protocol::Tcp, "10.213.1.4", 81),
            ]
        ),
        Err(NftError::Conflict { .. })
    ));
}

#[test]
fn del_ports_removes_only_the_attachments_own_elements() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let m1 = pm(None, 8080, Protocol::Tcp, "10.213.1.2", 80);
    let m2 = pm(None, 8081, Protocol::Tcp, "10.213.1.3", 80);
    f.add_ports(&att("a", "c1"), std::slice::from_ref(&m1))
        .unwrap();
    f.add_ports(&att("a", "c2"), std::slice::from_ref(&m2))
        .unwrap();
    f.add_ports(&att("a", "c1"), std::slice::from_ref(&m1))
        .unwrap(); // idempotent: no exec
    assert_eq!(nft.scripts().len(), 2);
    nft.clear();
    // c1's DEL, with a config that (wrongly) also names c2's port: c2's stays.
    f.del_ports(&att("a", "c1"), &[m1.clone(), m2.clone()])
        .unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0],
        "add element inet cnirs pm4_any { tcp . 8080 : 10.213.1.2 . 80 }\n\
         delete element inet cnirs pm4_any { tcp . 8080 }\n"
    );
    let port = |m: &PortMapping| Elem::Port {
        mapping: m.validated().unwrap(),
    };
    assert!(!nft.contains(&port(&m1)) && nft.contains(&port(&m2)));
    // Port 8080 is free again.
    f.add_ports(
        &att("a", "c3"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.4", 80)],
    )
    .unwrap();
    // DEL of an unknown attachment with no config: Ok, nothing run.
    nft.clear();
    f.del_ports(&att("a", "nope"), &[]).unwrap();
    assert!(nft.scripts().is_empty());
    // State lost: DEL with the config's mapping removes it (nobody else owns it).
    f.del_ports(
        &att("a", "ghost"),
        &[pm(None, 7000, Protocol::Tcp, "10.213.1.9", 80)],
    )
    .unwrap();
    assert!(nft.scripts()[0].contains("delete element inet cnirs pm4_any { tcp . 7000 }"));
}

#[test]
fn re_add_with_other_mappings_replaces_them() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a = att("a", "c1");
    f.add_ports(&a, &[pm(None, 8080, Protocol::Tcp, "10.213.1.2", 80)])
        .unwrap();
    nft.clear();
    f.add_ports(&a, &[pm(None, 8080, Protocol::Tcp, "10.213.1.2", 81)])
        .unwrap();
    assert_eq!(
        nft.scripts()[0],
        "add element inet cnirs pm4_any { tcp . 8080 : 10.213.1.2 . 80 }\n\
         delete element inet cnirs pm4_any { tcp . 8080 }\n\
         add element inet cnirs pm4_any { tcp . 8080 : 10.213.1.2 . 81 }\n"
    );
    assert_eq!(
        nft.elems_of("pm4_any"),
        [Elem::Port {
            mapping: pm(None, 8080, Protocol::Tcp, "10.213.1.2", 81)
        }]
    );
}

#[test]
fn gc_drops_attachments_not_listed_and_then_the_network() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.add_ports(
        &att("a", "c1"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.2", 80)],
    )
    .unwrap();
    f.add_ports(
        &att("a", "c2"),
        &[pm(None, 8081, Protocol::Tcp, "10.213.1.3", 80)],
    )
    .unwrap();
    f.add_ports(
        &att("b", "c3"),
        &[pm(None, 8082, Protocol::Tcp, "10.213.2.3", 80)],
    )
    .unwrap();
    nft.clear();
    f.gc(Feature::Portmap, "a", &[("c2".into(), "eth0".into())])
        .unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 1);
    assert!(s[0].contains("{ tcp . 8080 }") && !s[0].contains("8081") && !s[0].contains("8082"));
    assert!(matches!(
        f.check_ports(&att("a", "c1")),
        Err(NftError::NotAttached { .. })
    ));
    assert_eq!(f.check_ports(&att("a", "c2")).unwrap(), Vec::<Elem>::new());

    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    nft.clear();
    f.gc(Feature::Network, "a", &[]).unwrap();
    assert!(nft.scripts()[0].contains("delete element inet cnirs managed_br"));
}

#[test]
fn check_reports_exactly_the_missing_elements() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a = att("a", "c1");
    f.attach_network(&a, &net_a()).unwrap();
    assert!(f.check_network(&a).unwrap().is_empty());
    nft.clear();
    // Someone deletes one: the batch fails, then per element only that one is missing.
    let gone = Elem::SameBr {
        bridge: br("cnirs-a"),
    };
    assert!(nft.remove(&gone));
    let missing = f.check_network(&a).unwrap();
    assert_eq!(missing, [gone]);
    assert_eq!(nft.scripts().len(), 5);
    assert!(nft.scripts()[0].starts_with("get element inet cnirs "));
}

#[test]
fn reconcile_is_one_transaction_with_skeleton_and_every_element() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    f.attach_isolation(&att("a", "c1"), &br("cnirs-a")).unwrap();
    f.add_ports(
        &att("a", "c1"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.2", 80)],
    )
    .unwrap();
    let before = nft.elems();
    assert_eq!(before.len(), 6, "{}", nft.dump());
    assert!(f.missing_elems().unwrap().is_empty());
    nft.flush_ruleset();
    assert_eq!(f.missing_elems().unwrap().len(), 6);
    nft.clear();
    f.reconcile().unwrap();
    assert_eq!(nft.elems(), before, "everything is back");
    assert!(f.missing_elems().unwrap().is_empty());
    let s = nft.scripts();
    assert!(s[0].starts_with(SKELETON.as_str()));
    assert_eq!(s.len(), 2, "the reload and one get batch: {s:?}");
    for want in [
        "managed_br",
        "same_br",
        "isolated_br",
        "masq4",
        "masq6",
        "pm4_any { tcp . 8080",
    ] {
        assert!(s[0].contains(want), "{want}");
    }
}

#[test]
fn state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.add_ports(
        &att("a/..", "c1"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.2", 80)],
    )
    .unwrap();
    let dir = f.state_dir();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(dir.join("lock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let port = dir.join("ports/v4-tcp-8080.json");
    assert_eq!(
        std::fs::metadata(&port).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The network name was escaped into one component inside the state dir.
    assert!(dir.join("portmap/a%2F..").is_dir());
}

#[test]
fn one_container_on_two_networks_shares_its_port_and_hands_it_over() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let (on_a, on_b) = (
        Attachment::new("a", "c1", "eth0").unwrap(),
        Attachment::new("b", "c1", "eth1").unwrap(),
    );
    f.add_ports(
        &on_a,
        &[pm(Some("127.0.0.1"), 8080, Protocol::Tcp, "10.1.0.5", 80)],
    )
    .unwrap();
    nft.clear();
    // podman: the same mappings on the container's second network -> standby, no kernel change
    f.add_ports(
        &on_b,
        &[pm(Some("127.0.0.1"), 8080, Protocol::Tcp, "10.2.0.5", 80)],
    )
    .unwrap();
    assert!(nft.scripts().is_empty(), "{:?}", nft.scripts());
    // another container is still refused
    let other = Attachment::new("a", "c2", "eth0").unwrap();
    let e = f
        .add_ports(&other, &[pm(None, 8080, Protocol::Tcp, "10.1.0.6", 80)])
        .unwrap_err();
    assert!(matches!(e, NftError::Conflict { .. }), "{e}");
    // the first attachment goes: the element now points at the second network's address
    f.del_ports(&on_a, &[]).unwrap();
    let all = nft.scripts().join("");
    assert!(
        all.contains("delete element inet cnirs pm4 { 127.0.0.1 . tcp . 8080 }"),
        "{all}"
    );
    assert!(
        all.contains("add element inet cnirs pm4 { 127.0.0.1 . tcp . 8080 : 10.2.0.5 . 80 }"),
        "{all}"
    );
    assert!(f.check_ports(&on_b).unwrap().is_empty());
    // and when it goes too, the port is free for anyone
    f.del_ports(&on_b, &[]).unwrap();
    f.add_ports(&other, &[pm(None, 8080, Protocol::Tcp, "10.1.0.6", 80)])
        .unwrap();
}

#[test]
fn a_failed_batch_leaves_the_state_as_it_was() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a = att("net-a", "c1");
    // The batch and its skeleton retry both fail: nothing may be recorded.
    nft.fail_next(&[true, true]);
    assert!(f.attach_network(&a, &net_a()).is_err());
    nft.fail_next(&[true, true]);
    assert!(f
        .add_ports(&a, &[pm(None, 8080, Protocol::Tcp, "10.213.1.7", 80)])
        .is_err());
    let files: Vec<String> = walk(f.state_dir());
    assert!(
        files.iter().all(|p| p.ends_with("/lock")),
        "state after failed calls: {files:?}"
    );
    // And the port is still free for someone else.
    f.add_ports(
        &att("net-a", "c2"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.8", 80)],
    )
    .unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn state_written_by_a_newer_version_does_not_break_del() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a = att("net-a", "c1");
    f.attach_network(&a, &net_a()).unwrap();
    let path = f.state_dir().join("network/net-a/network.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["elems"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"FutureKind": {"x": 1}}));
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    nft.clear();
    f.detach_network(&a).unwrap();
    let all = nft.scripts().join("");
    assert!(
        all.contains("delete element inet cnirs managed_br { \"cnirs-a\" }"),
        "{all}"
    );
    assert!(!path.exists());
}

fn internal_a() -> NetworkElems {
    NetworkElems {
        internal: true,
        masq: vec![],
        subnets: vec![
            "10.213.1.7/24".parse().unwrap(),
            "fd00:213::/64".parse().unwrap(),
        ],
        ..net_a()
    }
}

#[test]
fn an_attach_after_a_flush_restores_the_table_in_its_own_batch() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.attach_network(&att("net-a", "c1"), &internal_a())
        .unwrap();
    let first = nft.scripts();
    assert_eq!(
        first.len(),
        1,
        "skeleton and elements in one batch: {first:?}"
    );
    assert!(first[0].starts_with("add table inet cnirs"), "{}", first[0]);
    assert!(
        first[0].contains("internal_br { \"cnirs-a\" }"),
        "{}",
        first[0]
    );

    // The table is there and is the one recorded: the 2nd pod execs nothing.
    nft.clear();
    f.attach_network(&att("net-a", "c2"), &internal_a())
        .unwrap();
    assert!(nft.scripts().is_empty(), "{:?}", nft.scripts());

    // `nft flush ruleset`: the next pod of the network seals it again, ports come back too.
    f.add_ports(
        &att("net-a", "c2"),
        &[pm(None, 8080, Protocol::Tcp, "10.213.1.9", 80)],
    )
    .unwrap();
    let before = nft.elems();
    nft.flush_ruleset();
    nft.clear();
    f.attach_network(&att("net-a", "c3"), &internal_a())
        .unwrap();
    assert_eq!(nft.elems(), before, "{}", nft.dump());
    let s = nft.scripts();
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].contains("add table inet cnirs"), "{}", s[0]);
    assert!(s[0].contains("internal_br { \"cnirs-a\" }"), "{}", s[0]);
    assert!(s[0].contains("pm4_any { tcp . 8080"), "{}", s[0]);

    // Replaced by someone else (another handle): restored as well.
    nft.replace_table();
    assert!(nft.elems().is_empty());
    nft.clear();
    f.attach_network(&att("net-a", "c4"), &internal_a())
        .unwrap();
    assert!(nft.scripts()[0].contains("internal_br { \"cnirs-a\" }"));
    assert_eq!(nft.elems(), before);
}

#[test]
fn a_failed_restore_fails_the_call() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.attach_network(&att("net-a", "c1"), &internal_a())
        .unwrap();
    nft.flush_ruleset();
    nft.fail_next(&[true, true]);
    let e = f
        .attach_network(&att("net-a", "c2"), &internal_a())
        .unwrap_err();
    assert!(matches!(e, NftError::Restore { .. }), "{e}");
    assert!(e.to_string().contains("missing or was replaced"), "{e}");
}

#[test]
fn last_detach_of_an_internal_network_names_its_bridge() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    f.attach_network(&att("net-a", "c1"), &internal_a())
        .unwrap();
    f.attach_network(&att("net-a", "c2"), &internal_a())
        .unwrap();
    assert_eq!(f.detach_network(&att("net-a", "c1")).unwrap(), None);
    let last = f.detach_network(&att("net-a", "c2")).unwrap().unwrap();
    assert_eq!(last.bridge, br("cnirs-a"));
    // The record's subnets, for the seal's removal without a prevResult.
    let mut want: Vec<IpNetwork> = internal_a()
        .subnets
        .iter()
        .map(|s| IpNetwork::new(s.network(), s.prefix()).unwrap())
        .collect();
    want.sort();
    let mut got = last.subnets.clone();
    got.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert_eq!(f.detach_network(&att("net-a", "c2")).unwrap(), None);
}

#[test]
fn last_detach_keeps_the_network_dirs_and_reconcile_prunes_them() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let a = att("net-a", "c1");
    let dir = f.state_dir().join("network/net-a");
    f.attach_network(&a, &net_a()).unwrap();
    f.detach_network(&a).unwrap();
    assert!(!dir.join("network.json").exists());
    assert!(dir.join("a").is_dir(), "kept for the next first ADD");
    assert!(
        f.state_is_empty().unwrap(),
        "an empty directory records nothing"
    );
    // A next cycle reuses them; an attached network's directories survive reconcile.
    f.attach_network(&a, &net_a()).unwrap();
    f.reconcile().unwrap();
    assert!(dir.join("a").is_dir() && dir.join("network.json").exists());
    f.detach_network(&a).unwrap();
    f.reconcile().unwrap();
    assert!(!dir.exists());
    assert!(f.state_dir().join("network").is_dir());
}

fn vteps(v: &[&str]) -> std::collections::BTreeSet<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

#[test]
fn the_overlay_gate_changes_members_in_one_transaction_and_never_empties_the_set() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    // A table loaded by someone else, and a backend that cannot tell which table it is: the
    // calls below run their own batches only.
    nft.apply(Batch::new().skeleton()).unwrap();
    nft.set_blind(true);
    nft.clear();
    let ports: std::collections::BTreeSet<u16> = [4789].into();
    assert_eq!(
        f.set_vteps(&ports, &vteps(&["10.240.0.1", "10.240.0.2"]))
            .unwrap(),
        (3, 0)
    );
    let s = nft.scripts();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0],
        "add element inet cnirs vtep_ports { 4789 }\n\
         add element inet cnirs vtep4 { 10.240.0.1 }\n\
         add element inet cnirs vtep4 { 10.240.0.2 }\n"
    );
    // h2 leaves, h3 joins: one batch adds h3 and deletes h2 (tolerantly); h1 is untouched.
    nft.clear();
    assert_eq!(
        f.set_vteps(&ports, &vteps(&["10.240.0.1", "10.240.0.3"]))
            .unwrap(),
        (1, 1)
    );
    let s = nft.scripts();
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].contains("add element inet cnirs vtep4 { 10.240.0.3 }"));
    assert!(s[0].contains("delete element inet cnirs vtep4 { 10.240.0.2 }"));
    assert!(!s[0].contains("10.240.0.1"), "{}", s[0]);
    // Unchanged: a `get` of every element (level-triggered), nothing added.
    nft.clear();
    assert_eq!(
        f.set_vteps(&ports, &vteps(&["10.240.0.1", "10.240.0.3"]))
            .unwrap(),
        (0, 0)
    );
    let s = nft.scripts();
    assert_eq!(s.len(), 1);
    assert!(s[0].starts_with("get element inet cnirs vtep_ports { 4789 }"));
    // An element someone deleted comes back.
    let h1 = Elem::Vtep {
        addr: ip("10.240.0.1"),
    };
    assert!(nft.remove(&h1));
    nft.clear();
    assert_eq!(
        f.set_vteps(&ports, &vteps(&["10.240.0.1", "10.240.0.3"]))
            .unwrap(),
        (1, 0)
    );
    let s = nft.scripts();
    assert_eq!(
        s.last().unwrap(),
        "add element inet cnirs vtep4 { 10.240.0.1 }\n"
    );
    assert!(nft.contains(&h1));
    assert_eq!(nft.elems_of("vtep4").len(), 2, "{}", nft.dump());
    // IPv6 members go to vtep6.
    assert_eq!(
        Elem::Vtep {
            addr: ip("fd00::1")
        }
        .to_string(),
        "vtep6 { fd00::1 }"
    );
}

#[test]
fn the_gate_is_part_of_the_state_restored_with_the_table() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    assert!(f.state_is_empty().unwrap());
    f.set_vteps(&[4789].into(), &vteps(&["10.240.0.1"]))
        .unwrap();
    assert!(!f.state_is_empty().unwrap(), "the watcher restores a gate");
    nft.clear();
    assert_eq!(f.reconcile().unwrap(), 2);
    let s = nft.scripts();
    assert!(
        s[0].starts_with(SKELETON.as_str()),
        "one transaction: skeleton first"
    );
    assert!(s[0].contains("add element inet cnirs vtep_ports { 4789 }"));
    assert!(s[0].contains("add element inet cnirs vtep4 { 10.240.0.1 }"));
    // A flushed table seen by the agent itself: skeleton, plugin elements and the new gate
    // in one batch, without the member that left.
    f.attach_network(&att("a", "c1"), &net_a()).unwrap();
    nft.flush_ruleset();
    nft.clear();
    f.set_vteps(&[4789].into(), &vteps(&["10.240.0.2"]))
        .unwrap();
    let s = nft.scripts();
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].starts_with(SKELETON.as_str()));
    assert!(s[0].contains("managed_br { \"cnirs-a\" }"));
    assert!(s[0].contains("vtep4 { 10.240.0.2 }"));
    assert!(!s[0].contains("10.240.0.1"), "{}", s[0]);
    assert_eq!(
        nft.elems_of("vtep4"),
        [Elem::Vtep {
            addr: ip("10.240.0.2")
        }]
    );
    assert!(nft.contains(&Elem::ManagedBr {
        bridge: br("cnirs-a")
    }));
}

#[test]
fn forward_rules_go_in_once_per_bridge_and_leave_with_the_last_attachment() {
    let nft = FakeNft::new();
    nft.add_forward_chain(IpFamily::V4, true);
    nft.add_forward_chain(IpFamily::V6, false);
    let (_d, f) = fw(&nft);
    let b = br("cni0");
    f.attach_forward(&att("n", "c1"), &b).unwrap();
    let rules = nft.forward_rules(IpFamily::V4);
    assert_eq!(rules.len(), 3, "{}", nft.dump());
    assert!(rules.iter().all(|r| r.ends_with("comment \"cnirs:cni0\"")));
    assert!(
        nft.forward_rules(IpFamily::V6).is_empty(),
        "a chain that accepts needs nothing"
    );
    nft.clear();
    f.attach_forward(&att("n", "c2"), &b).unwrap();
    assert!(
        nft.batches().is_empty(),
        "the 2nd pod of the network runs nothing"
    );
    f.detach_forward(&att("n", "c1")).unwrap();
    assert_eq!(nft.forward_rules(IpFamily::V4).len(), 3);
    f.detach_forward(&att("n", "c2")).unwrap();
    assert!(nft.forward_rules(IpFamily::V4).is_empty());
    f.detach_forward(&att("n", "c2")).unwrap();

    // A reload recreates the host chain empty: reconcile puts the rules back, GC takes them.
    f.attach_forward(&att("n", "c3"), &b).unwrap();
    nft.flush_ruleset();
    nft.add_forward_chain(IpFamily::V4, true);
    f.reconcile().unwrap();
    assert_eq!(nft.forward_rules(IpFamily::V4), rules);
    f.gc(Feature::Firewall, "n", &[]).unwrap();
    assert!(nft.forward_rules(IpFamily::V4).is_empty(), "{}", nft.dump());
}

#[test]
fn a_bridges_peer_is_managed_paired_sealed_and_isolated_like_the_bridge() {
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let mut n = net_a();
    n.internal = true;
    let vx = br("cnirsvx42");
    let texts: Vec<String> = Elem::for_network_peers(&n, std::slice::from_ref(&vx))
        .iter()
        .map(|e| e.to_string())
        .collect();
    for want in [
        "managed_br { \"cnirsvx42\" }",
        "same_br { \"cnirs-a\" . \"cnirsvx42\" }",
        "same_br { \"cnirsvx42\" . \"cnirs-a\" }",
        "internal_br { \"cnirsvx42\" }",
    ] {
        assert!(texts.contains(&want.to_string()), "{want}: {texts:?}");
    }
    assert!(!texts.contains(&"same_br { \"cnirsvx42\" . \"cnirsvx42\" }".to_string()));
    f.attach_network_peers(&att("a", "c1"), &n, std::slice::from_ref(&vx), None)
        .unwrap();
    assert!(f.network_in_use("a").unwrap());
    for e in [
        Elem::ManagedBr { bridge: vx.clone() },
        Elem::SamePair {
            iif: br("cnirs-a"),
            oif: vx.clone(),
        },
        Elem::InternalBr { bridge: vx.clone() },
    ] {
        assert!(nft.contains(&e), "{e}: {}", nft.dump());
    }
    f.attach_isolation(&att("a", "c1"), &br("cnirs-a")).unwrap();
    for b in ["cnirs-a", "cnirsvx42"] {
        let e = Elem::IsolatedBr { bridge: br(b) };
        assert!(nft.contains(&e), "{e}: {}", nft.dump());
    }
    f.detach_isolation(&att("a", "c1")).unwrap();
    f.detach_network(&att("a", "c1")).unwrap();
    assert!(!f.network_in_use("a").unwrap());
    assert!(nft.elems().is_empty(), "{}", nft.dump());
}

/// One element of each NetworkPolicy set (v4 and v6, ingress and egress, with and without
/// ports).
pub(crate) fn netpol_samples() -> Vec<Elem> {
    use crate::{NpDir, NpPorts};
    let mut v = Vec::new();
    for (pod, first, last) in [
        ("10.1.0.2", "10.1.0.0", "10.1.0.255"),
        ("fd00:1::2", "fd00:1::", "fd00:1::ff"),
    ] {
        let pod: IpAddr = pod.parse().unwrap();
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
fn netpol_elements_change_in_one_batch_and_come_back_after_a_flush() {
    use crate::{NpDir, NpPorts};
    let nft = FakeNft::new();
    let (_d, f) = fw(&nft);
    let pod: IpAddr = ip("10.1.0.2");
    let allow = |last: &str, port_last: u16| Elem::NpAllow {
        dir: NpDir::Ingress,
        pod,
        first: ip("10.1.0.0"),
        last: ip(last),
        ports: Some(NpPorts {
            protocol: Protocol::Tcp,
            first: 80,
            last: port_last,
        }),
    };
    let iso = Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod,
    };
    let v1: std::collections::BTreeSet<Elem> = [iso.clone(), allow("10.1.0.127", 80)].into();
    assert_eq!(f.set_netpol(&v1).unwrap(), (2, 0));
    // A wider range replaces the old one in the same transaction: removal first, else the
    // overlapping add would be refused.
    let v2: std::collections::BTreeSet<Elem> = [iso.clone(), allow("10.1.0.255", 81)].into();
    let before = nft.batches().len();
    assert_eq!(f.set_netpol(&v2).unwrap(), (1, 1));
    assert_eq!(nft.batches().len(), before + 1, "one transaction");
    assert!(nft.contains(&allow("10.1.0.255", 81)));
    assert!(!nft.contains(&allow("10.1.0.127", 80)));
    // An overlapping element is refused, as the kernel's pipapo refuses it.
    let overlap: std::collections::BTreeSet<Elem> =
        [iso.clone(), allow("10.1.0.255", 81), allow("10.1.0.3", 80)].into();
    assert!(f.set_netpol(&overlap).is_err());
    // Flushed: the next call restores the skeleton and every element.
    nft.flush_ruleset();
    assert_eq!(
        f.check_netpol(std::slice::from_ref(&iso)).unwrap(),
        vec![iso.clone()]
    );
    f.set_netpol(&v2).unwrap();
    assert!(nft.contains(&iso) && nft.contains(&allow("10.1.0.255", 81)));
    // Not a netpol element: refused.
    let bad: std::collections::BTreeSet<Elem> = [Elem::VtepPort { port: 1 }].into();
    assert!(f.set_netpol(&bad).is_err());
    assert_eq!(f.netpol_elems().unwrap(), v2);
}

#[test]
fn netpol_changes_are_logged_not_rewritten_and_come_back_after_a_flush() {
    use crate::{NpDir, NpPorts};
    let nft = FakeNft::new();
    let (d, f) = fw(&nft);
    let pod: IpAddr = ip("10.1.0.2");
    let pair = |peer: &str| Elem::NpPair {
        dir: NpDir::Ingress,
        pod,
        peer: ip(peer),
        ports: Some(NpPorts {
            protocol: Protocol::Tcp,
            first: 80,
            last: 80,
        }),
    };
    let iso = Elem::NpIsolated {
        dir: NpDir::Ingress,
        pod,
    };
    let base: std::collections::BTreeSet<Elem> = [iso.clone(), pair("10.1.0.3")].into();
    f.set_netpol(&base).unwrap();
    let record = d.path().join("netns-1/netpol.json");
    let written = std::fs::read(&record).unwrap();
    let before = nft.batches().len();
    f.change_netpol(&[pair("10.1.0.4")], &[pair("10.1.0.3")])
        .unwrap();
    assert_eq!(nft.batches().len(), before + 1, "one transaction");
    assert!(nft.contains(&pair("10.1.0.4")) && !nft.contains(&pair("10.1.0.3")));
    assert_eq!(
        std::fs::read(&record).unwrap(),
        written,
        "record not rewritten"
    );
    let now: std::collections::BTreeSet<Elem> = [iso.clone(), pair("10.1.0.4")].into();
    assert_eq!(f.netpol_elems().unwrap(), now, "record + log");
    // Flushed: the next change restores the skeleton, the record and its log.
    nft.flush_ruleset();
    f.change_netpol(&[pair("10.1.0.5")], &[]).unwrap();
    assert!(nft.contains(&iso) && nft.contains(&pair("10.1.0.4")));
    assert!(nft.contains(&pair("10.1.0.5")) && !nft.contains(&pair("10.1.0.3")));
    // A full set folds the log into the record.
    f.set_netpol(&now).unwrap();
    assert!(!d.path().join("netns-1/netpol.log").exists());
    assert_eq!(f.netpol_elems().unwrap(), now);
    assert!(f.change_netpol(&[Elem::VtepPort { port: 1 }], &[]).is_err());
}
