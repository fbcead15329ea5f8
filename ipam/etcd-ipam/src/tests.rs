//! The allocator over the in-memory store, several nodes sharing it.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use cni_core::{Attachment, Command, ErrorCode, Request};

use super::*;
use crate::store::MemStore;

/// A config whose host state (`run_dir`) is a temp dir of the test, kept alive by `_dir`.
struct Fx {
    c: Config,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Fx {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.c
    }
}

fn cfg(ranges: serde_json::Value) -> Fx {
    cfg_with(ranges, serde_json::json!({}))
}

fn cfg_with(ranges: serde_json::Value, extra: serde_json::Value) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    Fx {
        c: cfg_in(ranges, extra, dir.path()),
        _dir: dir,
    }
}

fn cfg_in(
    ranges: serde_json::Value,
    extra: serde_json::Value,
    run_dir: &std::path::Path,
) -> Config {
    let mut conf = serde_json::json!({"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
        "ipam": {"type": "etcd-ipam", "ranges": ranges, "etcdEndpoints": ["http://127.0.0.1:1"]}});
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    let req = Request::build(
        Command::Add,
        "c",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let mut c = config::parse(&req).unwrap();
    c.run_dir = run_dir.to_path_buf();
    c
}

fn dual() -> Fx {
    cfg(serde_json::json!([[{"subnet": "10.9.0.0/16"}], [{"subnet": "fd09::/64"}]]))
}

/// The addresses node `node`'s host holds for the network.
fn leases(c: &Config, node: &str) -> Vec<IpAddr> {
    match crate::local::Local::open_existing(c, node).unwrap() {
        Some(l) => l.taken().into_iter().collect(),
        None => Vec::new(),
    }
}

fn ips(g: &[Got]) -> Vec<IpAddr> {
    g.iter().map(|g| g.ip).collect()
}

fn block(ip: IpAddr) -> IpNetwork {
    let p = if ip.is_ipv4() { 25 } else { 121 };
    let n = IpNetwork::new(ip, p).unwrap();
    IpNetwork::new(n.network(), p).unwrap()
}

#[test]
fn dual_stack_add_claims_one_block_per_family_and_answers_again_for_the_same_attachment() {
    let s = MemStore::default();
    let c = dual();
    let got = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].ip.is_ipv4() && got[1].ip.is_ipv6());
    assert_eq!(
        (got[0].prefix, got[1].prefix),
        (16, 64),
        "the range's prefix"
    );
    assert_eq!(got[0].gateway, "10.9.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        (got[0].block, got[1].block),
        (block(got[0].ip), block(got[1].ip))
    );
    // The agents' keys: one block per family, naming the node.
    let blocks = s.list("/cnirs/blocks/net1/").unwrap().0;
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert!(blocks.iter().all(|b| b.value == br#"{"node":"a"}"#));
    let again = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert_eq!(ips(&again), ips(&got));
    assert!(again.iter().all(|g| !g.fresh));
    // The addresses are the host's leases; etcd has the blocks and nothing per pod.
    assert_eq!(leases(&c, "a"), ips(&got));
    assert_eq!(
        s.keys("/cnirs/ipam/net1/").len(),
        2,
        "nodes/a/<block> per family, no address key, no index: {:?}",
        s.keys("/cnirs/ipam/net1/")
    );
}

#[test]
fn a_steady_add_is_one_etcd_read_and_no_write_and_a_del_no_etcd_call() {
    let s = MemStore::default();
    let c = dual();
    add(&s, &c, "a", "first", "eth0").unwrap(); // claims the node's blocks
    let (w0, n0) = (s.writes(), s.round_trips());
    for i in 0..20 {
        add(&s, &c, "a", &format!("c{i}"), "eth0").unwrap();
    }
    assert_eq!(
        s.writes() - w0,
        0,
        "no etcd write for an address of a block held"
    );
    assert_eq!(
        s.round_trips() - n0,
        20,
        "one read per ADD (none from the agent's file)"
    );
    let n1 = s.round_trips();
    for i in 0..20 {
        assert_eq!(del(&c, "a", &format!("c{i}"), "eth0").unwrap().len(), 2);
    }
    assert_eq!(s.round_trips(), n1, "DEL is the host's alone");
    assert!(del(&c, "a", "c0", "eth0").unwrap().is_empty(), "idempotent");
    assert_eq!(leases(&c, "a").len(), 2, "'first' holds its two");
}

#[test]
fn each_node_allocates_inside_its_own_blocks_and_claims_its_blocks_buddy_next() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/16"}]]));
    let a: Vec<IpAddr> = (0..200)
        .map(|i| add(&s, &c, "a", &format!("a{i}"), "eth0").unwrap()[0].ip)
        .collect();
    let b: Vec<IpAddr> = (0..5)
        .map(|i| add(&s, &c, "b", &format!("b{i}"), "eth0").unwrap()[0].ip)
        .collect();
    let blocks_a: HashSet<IpNetwork> = a.iter().map(|ip| block(*ip)).collect();
    let blocks_b: HashSet<IpNetwork> = b.iter().map(|ip| block(*ip)).collect();
    assert_eq!(
        blocks_a.len(),
        2,
        "200 addresses need two /25: {blocks_a:?}"
    );
    assert_eq!(blocks_b.len(), 1);
    assert!(blocks_a.is_disjoint(&blocks_b));
    // a's two blocks are buddies: one route covers them.
    let v: Vec<IpNetwork> = blocks_a.into_iter().collect();
    assert_eq!(cluster::peers::aggregate(&v).len(), 1, "{v:?}");
}

#[test]
fn parallel_adds_from_several_nodes_never_share_an_address() {
    let s = Arc::new(MemStore::default());
    let c = Arc::new(dual());
    let handles: Vec<_> = (0..64)
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
    assert_eq!(all.len(), 128);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 128);
}

#[test]
fn a_small_range_is_one_block_another_node_cannot_borrow_from() {
    let s = MemStore::default();
    // A /29 is one block of 5 usable addresses (network, gateway, broadcast skipped).
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    let held: Vec<IpAddr> = (0..5)
        .map(|i| add(&s, &c, "a", &format!("c{i}"), "eth0").unwrap()[0].ip)
        .collect();
    assert_eq!(held.iter().collect::<HashSet<_>>().len(), 5);
    for (node, id) in [("a", "c5"), ("b", "b0")] {
        let e = add(&s, &c, node, id, "eth0").unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::AddressesExhausted.as_u32(),
            "{node}: {e}"
        );
    }
    assert_eq!(
        status(&s, &c, "a").unwrap_err().code(),
        ErrorCode::NotAvailable.as_u32()
    );
    assert_eq!(del(&c, "a", "c3", "eth0").unwrap(), vec![held[3]]);
    assert!(
        del(&c, "a", "c3", "eth0").unwrap().is_empty(),
        "DEL is idempotent"
    );
    status(&s, &c, "a").unwrap();
    assert_eq!(add(&s, &c, "a", "c5", "eth0").unwrap()[0].ip, held[3]);
    // Node b: the block is a's, so b has nothing (no borrowing across nodes).
    assert_eq!(
        add(&s, &c, "b", "b0", "eth0").unwrap_err().code(),
        ErrorCode::AddressesExhausted.as_u32()
    );
}

#[test]
fn an_exhausted_second_family_writes_no_address() {
    let s = MemStore::default();
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/126"}]]));
    // fd09::/126: fd09::1 is the gateway, fd09::0 the network: 2 usable.
    add(&s, &c, "a", "c1", "eth0").unwrap();
    add(&s, &c, "a", "c2", "eth0").unwrap();
    let before = (s.keys("/cnirs/").len(), leases(&c, "a"));
    assert_eq!(
        add(&s, &c, "a", "c3", "eth0").unwrap_err().code(),
        ErrorCode::AddressesExhausted.as_u32()
    );
    assert_eq!((s.keys("/cnirs/").len(), leases(&c, "a")), before);
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
    check(&s, &c, "a", "keep", "eth0").unwrap();
    check(&s, &c, "b", "other-node", "eth0").unwrap();
    assert_eq!(
        check(&s, &c, "a", "stale", "eth0").unwrap_err().code(),
        ErrorCode::CheckFailed.as_u32()
    );
    // With nothing valid, node a's addresses and then its blocks go; node b's stay.
    gc(&s, &c, "a", &[]).unwrap();
    let (blocks, _) = s.list("/cnirs/blocks/net1/").unwrap();
    assert!(
        blocks.iter().all(|b| b.value == br#"{"node":"b"}"#),
        "{blocks:?}"
    );
    assert_eq!(blocks.len(), 2);
    assert!(s.keys("/cnirs/ipam/net1/nodes/a/").is_empty());
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
    // Node a's agent is alive, node "dead" has no hosts/ key: its block goes.
    s.put("/cnirs/hosts/a", br#"{"vtep":"10.240.0.1"}"#);
    s.put("/cnirs/hosts/alive", br#"{"vtep":"10.240.0.2"}"#);
    let got = add(&s, &c, "a", "c1", "eth0").unwrap();
    assert!(got[0].ip.is_ipv4());
    assert!(s.keys("/cnirs/ipam/net1/nodes/dead/").is_empty());
    let (blocks, _) = s.list("/cnirs/blocks/net1/").unwrap();
    assert!(blocks.iter().all(|b| b.value == br#"{"node":"a"}"#));
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
    let (blocks, _) = s.list("/cnirs/blocks/net1/").unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].value, br#"{"node":"b"}"#);
    assert_eq!(leases(&c, "b").len(), 5);
}

#[test]
fn a_requested_address_is_honoured_in_a_free_block_and_refused_in_another_nodes() {
    let s = MemStore::default();
    let ranges = serde_json::json!([[{"subnet": "10.9.0.0/24"}]]);
    let dir = tempfile::tempdir().unwrap();
    let want = |ip: &str| {
        cfg_in(
            ranges.clone(),
            serde_json::json!({"args": {"cni": {"ips": [ip]}}}),
            dir.path(),
        )
    };
    // In an unclaimed block: the block is claimed for the node.
    assert_eq!(
        add(&s, &want("10.9.0.77"), "a", "c1", "eth0").unwrap()[0].ip,
        "10.9.0.77".parse::<IpAddr>().unwrap()
    );
    // Taken on the same node: 103.
    assert_eq!(
        add(&s, &want("10.9.0.77"), "a", "c2", "eth0")
            .unwrap_err()
            .code(),
        ErrorCode::Conflict.as_u32()
    );
    // In node a's block, asked on node b: 103, naming the block and its node.
    let e = add(&s, &want("10.9.0.78"), "b", "c3", "eth0").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict.as_u32());
    assert!(
        e.msg.contains("10.9.0.0/25") && e.msg.contains("\"a\""),
        "{}",
        e.msg
    );
    // The gateway: code 7 naming the field.
    let e = add(&s, &want("10.9.0.1"), "a", "c4", "eth0").unwrap_err();
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
    let dir = tempfile::tempdir().unwrap();
    let p = EtcdIpam {
        node: "a".into(),
        options: opts.clone(),
        run_dir: dir.path().into(),
    };
    assert_eq!(
        Plugin::add(&p, &req).unwrap_err().code(),
        ErrorCode::TryAgainLater.as_u32()
    );
    assert_eq!(
        Plugin::status(&p, &req).unwrap_err().code(),
        ErrorCode::NotAvailable.as_u32()
    );
    for bad in ["a/b", "..", "."] {
        let p = EtcdIpam {
            node: bad.into(),
            options: opts.clone(),
            run_dir: dir.path().into(),
        };
        assert_eq!(
            Plugin::add(&p, &req).unwrap_err().code(),
            ErrorCode::InvalidEnvironment.as_u32(),
            "{bad}"
        );
    }
}

#[test]
fn node_name_prefers_the_env_then_the_hostname() {
    assert_eq!(node_name(Some(" n1 ".into())), "n1");
    assert!(!node_name(Some("".into())).is_empty());
    assert_eq!(node_name(None), node_name(Some(String::new())));
}

#[test]
fn an_add_from_the_agents_blocks_makes_no_etcd_call_and_never_uses_a_block_given_back() {
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/16"}]]));
    let s = MemStore::default();
    let first = add(&s, &c, "a", "c0", "eth0").unwrap();
    let b = first[0].block;
    let agent = Ahead::Agent([b].into());
    // The agent vouches for the block: the ADD is the host's alone.
    let n = s.round_trips();
    let c1 = add_from(&s, &c, "a", "c1", "eth0", Some(&agent)).unwrap();
    assert_eq!(s.round_trips(), n, "no etcd call");
    assert_eq!(c1[0].block, b);
    // Both gone, GC gives the block back; the agent's file still lists it (it lags):
    // the host's record wins, etcd is read and a block claimed anew.
    del(&c, "a", "c0", "eth0").unwrap();
    del(&c, "a", "c1", "eth0").unwrap();
    gc(&s, &c, "a", &[]).unwrap();
    assert!(s.keys("/cnirs/blocks/net1/").is_empty());
    add_from(&s, &c, "a", "c2", "eth0", Some(&agent)).unwrap();
    assert_eq!(s.keys("/cnirs/blocks/net1/").len(), 1, "claimed again");
    assert!(s.round_trips() > n);
    // A block the agent lists that the host never claimed (another node's, say) is not used.
    let foreign: IpNetwork = "10.9.200.0/25".parse().unwrap();
    let got = add_from(
        &s,
        &c,
        "a",
        "c3",
        "eth0",
        Some(&Ahead::Agent([foreign].into())),
    )
    .unwrap();
    assert!(!foreign.contains(got[0].ip), "{got:?}");
}

#[test]
fn a_host_without_a_record_takes_its_blocks_and_the_old_layouts_addresses_from_etcd() {
    // The layout before December 2026: a block under the node, and an address key in it.
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    let s = MemStore::default();
    s.put("/cnirs/blocks/net1/10.9.0.0_29", br#"{"node":"a"}"#);
    s.put("/cnirs/ipam/net1/nodes/a/10.9.0.0_29", b"{}");
    s.put(
        "/cnirs/ipam/net1/nodes/a/10.9.0.0_29/10.9.0.2",
        br#"{"containerId":"old","ifname":"eth0"}"#,
    );
    // From the agent's file alone the host would not know 10.9.0.2 is held: etcd is read.
    let got = add_from(
        &s,
        &c,
        "a",
        "new",
        "eth0",
        Some(&Ahead::Agent(BTreeSet::new())),
    )
    .unwrap();
    assert_ne!(got[0].ip, "10.9.0.2".parse::<IpAddr>().unwrap());
    assert!(leases(&c, "a").contains(&"10.9.0.2".parse().unwrap()));
    // The pod from before is the host's to release.
    assert_eq!(
        del(&c, "a", "old", "eth0").unwrap(),
        vec!["10.9.0.2".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn check_fails_when_the_block_of_a_held_address_is_no_longer_this_nodes() {
    let c = cfg(serde_json::json!([[{"subnet": "10.9.0.0/29"}]]));
    let s = MemStore::default();
    add(&s, &c, "a", "c1", "eth0").unwrap();
    check(&s, &c, "a", "c1", "eth0").unwrap();
    // Reclaimed (node a judged dead while its pod ran): the address may be another's now.
    for k in s.keys("/cnirs/") {
        s.delete(&k);
    }
    let e = check(&s, &c, "a", "c1", "eth0").unwrap_err();
    assert_eq!(e.code(), ErrorCode::CheckFailed.as_u32(), "{e}");
}
