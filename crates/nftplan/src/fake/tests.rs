//! The fake's own semantics, each as the kernel has it.

use std::sync::Arc;

use super::*;
use crate::{IfName, PortMapping, Protocol};

fn br(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn port(host_port: u16, container_port: u16) -> Elem {
    Elem::Port {
        mapping: PortMapping {
            host_ip: None,
            host_port,
            protocol: Protocol::Tcp,
            container_ip: "10.1.0.2".parse().unwrap(),
            container_port,
        },
    }
}

fn masq(s: &str) -> Elem {
    Elem::masq(s.parse().unwrap())
}

fn loaded() -> Arc<FakeNft> {
    let nft = FakeNft::new();
    nft.apply(Batch::new().skeleton()).unwrap();
    nft.clear();
    nft
}

fn errno(e: &NftError) -> Option<i32> {
    match e {
        NftError::Netlink { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn elements_need_the_table() {
    let nft = FakeNft::new();
    assert_eq!(nft.probe_table().unwrap(), TableProbe::Missing);
    let e = Elem::ManagedBr { bridge: br("b") };
    for b in [
        Batch::new().add(std::slice::from_ref(&e)).clone(),
        Batch::new().delete(std::slice::from_ref(&e)).clone(),
        Batch::new().get(std::slice::from_ref(&e)).clone(),
    ] {
        let err = nft.apply(&b).unwrap_err();
        assert_eq!(errno(&err), Some(libc::ENOENT), "{err}");
    }
    // The skeleton and the element in one batch: fine, and the table has a handle now.
    nft.apply(Batch::new().skeleton().add(std::slice::from_ref(&e)))
        .unwrap();
    assert!(matches!(nft.probe_table().unwrap(), TableProbe::Present(_)));
    assert_eq!(nft.elems(), [e]);
}

#[test]
fn add_of_an_existing_element_is_a_no_op_unless_its_data_differs() {
    let nft = loaded();
    nft.apply(Batch::new().add(&[port(8080, 80)])).unwrap();
    nft.apply(Batch::new().add(&[port(8080, 80)])).unwrap();
    assert_eq!(nft.elems(), [port(8080, 80)]);
    let err = nft.apply(Batch::new().add(&[port(8080, 81)])).unwrap_err();
    assert_eq!(errno(&err), Some(libc::EEXIST), "{err}");
    assert_eq!(nft.elems(), [port(8080, 80)]);
    // `get` and `delete` go by the key: the data does not matter.
    nft.apply(Batch::new().get(&[port(8080, 81)])).unwrap();
    nft.apply(Batch::new().delete(&[port(8080, 81)])).unwrap();
    assert!(nft.elems().is_empty());
}

#[test]
fn delete_and_get_of_a_missing_element_fail_and_remove_tolerates_it() {
    let nft = loaded();
    let e = Elem::IsolatedBr { bridge: br("b") };
    for b in [
        Batch::new().delete(std::slice::from_ref(&e)).clone(),
        Batch::new().get(std::slice::from_ref(&e)).clone(),
    ] {
        assert_eq!(errno(&nft.apply(&b).unwrap_err()), Some(libc::ENOENT));
    }
    // add + delete in one transaction: whether it was there or not.
    nft.apply(Batch::new().remove(std::slice::from_ref(&e)))
        .unwrap();
    nft.apply(Batch::new().add(std::slice::from_ref(&e)))
        .unwrap();
    nft.apply(Batch::new().remove(std::slice::from_ref(&e)))
        .unwrap();
    assert!(nft.elems().is_empty());
}

#[test]
fn a_failed_batch_changes_nothing() {
    let nft = loaded();
    let keep = Elem::ManagedBr { bridge: br("keep") };
    nft.apply(Batch::new().add(std::slice::from_ref(&keep)))
        .unwrap();
    let before = nft.dump();
    // The first two commands would work; the third fails the whole transaction.
    let mut b = Batch::new();
    b.add(&[Elem::ManagedBr { bridge: br("new") }])
        .delete(std::slice::from_ref(&keep))
        .delete(&[Elem::SameBr { bridge: br("nope") }]);
    assert!(nft.apply(&b).is_err());
    assert_eq!(nft.dump(), before);
    // An injected failure too, and it is logged like any batch.
    nft.fail_next(&[true]);
    assert!(matches!(
        nft.apply(Batch::new().delete(std::slice::from_ref(&keep))),
        Err(NftError::Nft { .. })
    ));
    assert_eq!(nft.dump(), before);
    assert_eq!(nft.batches().len(), 3);
}

#[test]
fn intervals_may_touch_but_not_overlap() {
    let nft = loaded();
    nft.apply(Batch::new().add(&[masq("10.4.0.0/24"), masq("10.4.1.0/24")]))
        .unwrap();
    for over in ["10.4.0.0/23", "10.4.0.128/25", "0.0.0.0/0"] {
        let err = nft.apply(Batch::new().add(&[masq(over)])).unwrap_err();
        assert_eq!(errno(&err), Some(libc::EEXIST), "{over}");
    }
    // The same subnet on two bridges is two elements of br_net4; a delete must be exact.
    let on = |b: &str, s: &str| Elem::BrNet {
        bridge: br(b),
        subnet: s.parse().unwrap(),
    };
    nft.apply(Batch::new().add(&[on("a", "10.4.0.0/24"), on("b", "10.4.0.0/24")]))
        .unwrap();
    assert!(nft
        .apply(Batch::new().delete(&[masq("10.4.0.0/25")]))
        .is_err());
    assert!(nft.apply(Batch::new().get(&[masq("10.4.0.0/23")])).is_err());
    assert_eq!(nft.elems().len(), 4);
}

#[test]
fn the_skeleton_keeps_elements_and_a_new_table_gets_a_new_handle() {
    let nft = loaded();
    let TableProbe::Present(h1) = nft.probe_table().unwrap() else {
        panic!("no table")
    };
    let e = Elem::ManagedBr { bridge: br("b") };
    nft.apply(Batch::new().add(std::slice::from_ref(&e)))
        .unwrap();
    nft.apply(Batch::new().skeleton()).unwrap();
    assert_eq!(nft.probe_table().unwrap(), TableProbe::Present(h1));
    assert_eq!(nft.elems(), std::slice::from_ref(&e));
    nft.replace_table();
    assert!(nft.elems().is_empty());
    let TableProbe::Present(h2) = nft.probe_table().unwrap() else {
        panic!("no table")
    };
    assert_ne!(h1, h2, "handles are never reused");
    nft.flush_ruleset();
    assert_eq!(nft.probe_table().unwrap(), TableProbe::Missing);
    nft.set_blind(true);
    assert_eq!(nft.probe_table().unwrap(), TableProbe::Unknown);
}

#[test]
fn dump_lists_tables_elements_and_host_chains() {
    let nft = loaded();
    nft.add_forward_chain(IpFamily::V4, true);
    let b = br("cni0");
    nft.apply(
        Batch::new()
            .add(&[masq("10.88.0.0/16"), port(8080, 80)])
            .add(&Elem::spoof_check(&b, "02:00:00:00:00:0A").unwrap())
            .push(Cmd::AllowForward {
                family: IpFamily::V4,
                bridge: b,
            }),
    )
    .unwrap();
    assert_eq!(
        nft.dump(),
        "add table inet cnirs\n\
         add element inet cnirs masq4 { 10.88.0.0/16 }\n\
         add element inet cnirs pm4_any { tcp . 8080 : 10.1.0.2 . 80 }\n\
         add table bridge cnirs\n\
         add element bridge cnirs spoof_ports { \"cni0\" }\n\
         add element bridge cnirs spoof_ok { \"cni0\" . 02:00:00:00:00:0a }\n\
         add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }\n\
         add rule ip filter FORWARD iifname \"cni0\" accept comment \"cnirs:cni0\"\n\
         add rule ip filter FORWARD oifname \"cni0\" ct state established,related accept comment \"cnirs:cni0\"\n\
         add rule ip filter FORWARD oifname \"cni0\" ct status dnat accept comment \"cnirs:cni0\"\n"
    );
}

#[test]
fn host_chains_are_listed_and_their_rules_deleted_by_handle() {
    let nft = FakeNft::new();
    assert!(nft
        .apply(Batch::new().push(Cmd::AllowForward {
            family: IpFamily::V6,
            bridge: br("x"),
        }))
        .is_err());
    nft.add_forward_chain(IpFamily::V6, false);
    nft.apply(Batch::new().push(Cmd::AllowForward {
        family: IpFamily::V6,
        bridge: br("x"),
    }))
    .unwrap();
    let chains = nft.query(&["list", "chains"]).unwrap().unwrap();
    assert!(chains.contains(r#""family":"ip6""#) && chains.contains(r#""policy":"accept""#));
    let listing = nft
        .query(&["-a", "list", "chain", "ip6", "filter", "FORWARD"])
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let handles: Vec<u64> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["rule"]["handle"].as_u64())
        .collect();
    assert_eq!(handles.len(), 3);
    let mut del = Batch::new();
    for handle in &handles[..2] {
        del.push(Cmd::DeleteForwardRule {
            family: IpFamily::V6,
            handle: *handle,
        });
    }
    nft.apply(&del).unwrap();
    assert_eq!(nft.forward_rules(IpFamily::V6).len(), 1);
    assert!(nft.apply(&del).is_err(), "those handles are gone");
    assert_eq!(
        nft.query(&["-a", "list", "chain", "ip", "filter", "FORWARD"])
            .unwrap(),
        None
    );
}
