//! The allocator over the in-memory store, several nodes sharing it.

use std::{collections::HashSet, sync::Arc};

use cni_core::{Attachment, Command, ErrorCode, Request};

use super::*;
use crate::store::MemStore;

fn cfg(ranges: serde_json::Value) -> Config {
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
        "ipam": {"type": "etcd-ipam", "ranges": ranges, "etcdEndpoints": ["http://127.0.0.1:1"]}});
    let req = Request::build(
        Command::Add,
        "c",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    config::parse(&req).unwrap()
}

fn dual() -> Config {
    cfg(serde_json::json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]]))
}

fn ips(g: &[Got]) -> Vec<IpAddr> {
    g.iter().map(|g| g.ip).collect()
}

#[test]
fn dual_stack_add_claims_one_block_per_family_and_answers_again_for_the_same_attachment() {
    let s = MemStore::default();
    let c = dual();
    let got = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].ip.is_ipv4() && got[1].ip.is_ipv6());
    assert_eq!((got[0].prefix, got[1].prefix), (24, 64));
    assert_eq!(got[0].gateway, "10.9.0.1".parse::<IpAddr>().unwrap());
    let blocks = s.list("/cnirs/ipam/net1/blocks/").unwrap();
    let names: Vec<String> = blocks.iter().map(|k| k.key_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("_26")) && names.iter().any(|n| n.ends_with("_122")));
    let again = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert_eq!(ips(&again), ips(&got));
    assert!(again.iter().all(|g| g.fresh.is_none()));
    let rec = s
        .list(&format!("/cnirs/ipam/net1/ips/{}", got[0].ip))
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&rec[0].value).unwrap(),
        serde_json::json!({"node": "a", "containerId": "c1", "ifname": "eth0"})
    );
}

#[test]
fn each_node_allocates_inside_its_own_block() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/22"}]]));
    let a: Vec<IpAddr> = (0..5)
        .map(|i| add(&s, &c, "a", &format!("a{i}"), "eth0").unwrap()[0].ip)
        .collect();
    let b: Vec<IpAddr> = (0..5)
        .map(|i| add(&s, &c, "b", &format!("b{i}"), "eth0").unwrap()[0].ip)
        .collect();
    let block = |ip: IpAddr| IpNetwork::new(ip, 26).unwrap().network();
    assert!(a.iter().all(|ip| block(*ip) == block(a[0])), "{a:?}");
    assert!(b.iter().all(|ip| block(*ip) == block(b[0])), "{b:?}");
    assert_ne!(block(a[0]), block(b[0]));
}

#[test]
fn parallel_adds_from_several_nodes_never_share_an_address() {
    let s = Arc::new(MemStore::default());
    let c = Arc::new(dual());
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (s, c) = (Arc::clone(&s), Arc::clone(&c));
            std::thread::spawn(move || {
                add(&*s, &c, &format!("n{}", i % 4), &format!("c{i}"), "eth0").unwrap()
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| ips(&h.join().unwrap()))
        .collect();
    assert_eq!(all.len(), 64);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 64);
}

#[test]
fn a_small_range_is_shared_by_borrowing_then_exhausted_then_freed() {
    let s = MemStore::default();
    // A /29 is one block of 5 usable addresses (network, gateway, broadcast skipped).
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    let mut held = Vec::new();
    for i in 0..5 {
        let node = if i % 2 == 0 { "a" } else { "b" };
        held.push(add(&s, &c, node, &format!("c{i}"), "eth0").unwrap()[0].ip);
    }
    assert_eq!(held.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(
        s.list("/cnirs/ipam/net1/blocks/").unwrap().len(),
        1,
        "b borrowed, claimed nothing"
    );
    let e = add(&s, &c, "b", "c5", "eth0").unwrap_err();
    assert_eq!(e.code(), ErrorCode::AddressesExhausted.as_u32());
    assert_eq!(
        status(&s, &c).unwrap_err().code(),
        ErrorCode::NotAvailable.as_u32()
    );
    assert_eq!(del(&s, &c, "c3", "eth0").unwrap(), vec![held[3]]);
    assert_eq!(
        del(&s, &c, "c3", "eth0").unwrap(),
        Vec::<IpAddr>::new(),
        "DEL is idempotent"
    );
    status(&s, &c).unwrap();
    assert_eq!(add(&s, &c, "b", "c5", "eth0").unwrap()[0].ip, held[3]);
}

#[test]
fn a_failed_second_family_rolls_back_the_first() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/126"}]]));
    // fd09::/126: fd09::1 is the gateway, fd09::0 the network: 2 usable.
    add(&s, &c, "a", "c1", "eth0").unwrap();
    add(&s, &c, "a", "c2", "eth0").unwrap();
    let before = s.list("/cnirs/ipam/net1/ips/").unwrap().len();
    assert_eq!(
        add(&s, &c, "a", "c3", "eth0").unwrap_err().code(),
        ErrorCode::AddressesExhausted.as_u32()
    );
    assert_eq!(
        s.list("/cnirs/ipam/net1/ips/").unwrap().len(),
        before,
        "the v4 address went back"
    );
}

#[test]
fn gc_releases_only_this_nodes_stale_attachments_and_its_empty_blocks() {
    let s = MemStore::default();
    let c = dual();
    add(&s, &c, "a", "keep", "eth0").unwrap();
    add(&s, &c, "a", "stale", "eth0").unwrap();
    add(&s, &c, "b", "other-node", "eth0").unwrap();
    let valid = vec![Attachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    }];
    let released = gc(&s, &c, "a", &valid).unwrap();
    assert_eq!(released.len(), 2, "v4 + v6 of 'stale'");
    check(&s, &c, "keep", "eth0").unwrap();
    check(&s, &c, "other-node", "eth0").unwrap();
    assert_eq!(
        check(&s, &c, "stale", "eth0").unwrap_err().code(),
        ErrorCode::CheckFailed.as_u32()
    );
    // With nothing valid, node a's addresses and then its blocks go; node b's stay.
    gc(&s, &c, "a", &[]).unwrap();
    let blocks = s.list("/cnirs/ipam/net1/blocks/").unwrap();
    assert!(
        blocks.iter().all(|b| b.value == br#"{"node":"b"}"#),
        "{blocks:?}"
    );
    assert_eq!(blocks.len(), 2);
}

#[test]
fn dead_nodes_are_reclaimed_only_when_agents_vouch_and_the_range_is_full() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    for i in 0..5 {
        add(&s, &c, "dead", &format!("d{i}"), "eth0").unwrap();
    }
    // No hosts/ keys at all: nobody runs an agent, nobody is judged dead.
    assert_eq!(
        add(&s, &c, "a", "c1", "eth0").unwrap_err().code(),
        ErrorCode::AddressesExhausted.as_u32()
    );
    // Node a's agent is alive, node "dead" has no hosts/ key: its addresses go.
    s.put("/cnirs/hosts/a", br#"{"vtep":"10.240.0.1"}"#);
    s.put("/cnirs/hosts/alive", br#"{"vtep":"10.240.0.2"}"#);
    let got = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert!(got[0].ip.is_ipv4());
    let left = s.list("/cnirs/ipam/net1/ips/").unwrap();
    assert_eq!(
        left.len(),
        1,
        "the dead node's 5 addresses were released, ours taken"
    );
    assert!(s
        .list("/cnirs/ipam/net1/blocks/")
        .unwrap()
        .iter()
        .all(|b| !b.value.ends_with(br#""dead"}"#)));
}

#[test]
fn a_live_node_is_never_reclaimed() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    for i in 0..5 {
        add(&s, &c, "b", &format!("b{i}"), "eth0").unwrap();
    }
    s.put("/cnirs/hosts/a", b"{}");
    s.put("/cnirs/hosts/b", b"{}");
    assert_eq!(
        add(&s, &c, "a", "c1", "eth0").unwrap_err().code(),
        ErrorCode::AddressesExhausted.as_u32()
    );
    assert_eq!(s.list("/cnirs/ipam/net1/ips/").unwrap().len(), 5);
}

#[test]
fn a_requested_address_is_honoured_or_refused_with_103() {
    let s = MemStore::default();
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
        "args": {"cni": {"ips": ["10.9.0.77"]}},
        "ipam": {"type": "etcd-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]],
                 "etcdEndpoints": ["http://127.0.0.1:1"]}});
    let req = Request::build(
        Command::Add,
        "c",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let c = config::parse(&req).unwrap();
    assert_eq!(
        add(&s, &c, "a", "c1", "eth0").unwrap()[0].ip,
        "10.9.0.77".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        add(&s, &c, "b", "c2", "eth0").unwrap_err().code(),
        ErrorCode::Conflict.as_u32()
    );
    let gw = conf.to_string().replace("10.9.0.77", "10.9.0.1");
    let req = Request::build(Command::Add, "c", Some("/x"), "eth0", gw.as_bytes()).unwrap();
    let e = add(&s, &config::parse(&req).unwrap(), "a", "c3", "eth0").unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidConfig.as_u32());
    assert!(e.to_string().contains("args.cni.ips"), "{e}");
}

#[test]
fn unreachable_etcd_is_code_11_and_a_bad_node_name_code_4() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
        "ipam": {"type": "etcd-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]], "etcdEndpoints": [dead]}});
    let req = Request::build(
        Command::Add,
        "c",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let opts = etcd::Options {
        retry_deadline: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let p = EtcdIpam {
        node: "a".into(),
        options: opts.clone(),
    };
    assert_eq!(
        Plugin::add(&p, &req).unwrap_err().code(),
        ErrorCode::TryAgainLater.as_u32()
    );
    assert_eq!(
        Plugin::status(&p, &req).unwrap_err().code(),
        ErrorCode::NotAvailable.as_u32()
    );
    let p = EtcdIpam {
        node: "a/b".into(),
        options: opts,
    };
    assert_eq!(
        Plugin::add(&p, &req).unwrap_err().code(),
        ErrorCode::InvalidEnvironment.as_u32()
    );
}

#[test]
fn node_name_prefers_the_env_then_the_hostname() {
    assert_eq!(node_name(Some(" n1 ".into())), "n1");
    assert!(!node_name(Some("".into())).is_empty());
    assert_eq!(node_name(None), node_name(Some(String::new())));
}
