use super::*;
use crate::store::MemStore;

fn range(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
    Range {
        subnet: subnet.parse().unwrap(),
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
        gateway: gw.parse().unwrap(),
    }
}

fn set29() -> RangeSet {
    // 10.0.0.0/29: .0 network, .1 gateway, .7 broadcast -> .2-.6 usable.
    RangeSet(vec![range(
        "10.0.0.0/29",
        "10.0.0.0",
        "10.0.0.7",
        "10.0.0.1",
    )])
}

fn add(s: &mut MemStore, set: &RangeSet, id: &str) -> Result<Allocation, Error> {
    allocate(s, "net", 0, set, id, "eth0", None)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn order_skips_network_gateway_broadcast_then_exhausts() {
    let set = set29();
    let mut s = MemStore::default();
    let got: Vec<String> = (0..5)
        .map(|i| {
            add(&mut s, &set, &format!("c{i}"))
                .unwrap()
                .address
                .to_string()
        })
        .collect();
    assert_eq!(
        got,
        [
            "10.0.0.2/29",
            "10.0.0.3/29",
            "10.0.0.4/29",
            "10.0.0.5/29",
            "10.0.0.6/29"
        ]
    );
    let e = add(&mut s, &set, "c9").unwrap_err();
    assert!(
        matches!(e, Error::Exhausted(ipamconf::Exhausted { index: 0, .. })),
        "{e}"
    );
    let cni: cni_core::CniError = e.into();
    assert_eq!(cni.code(), 104);
    assert!(cni.msg.contains("10.0.0.0-10.0.0.7"), "{}", cni.msg);
}

#[test]
fn round_robin_does_not_reuse_a_just_released_address() {
    let set = set29();
    let mut s = MemStore::default();
    let a = add(&mut s, &set, "a").unwrap();
    assert_eq!(a.gateway, ip("10.0.0.1"));
    s.release_by_id("a", "eth0").unwrap();
    assert_eq!(add(&mut s, &set, "b").unwrap().address.ip(), ip("10.0.0.3"));
    // After the end it wraps to the start.
    s.last.insert(0, ip("10.0.0.6"));
    assert_eq!(add(&mut s, &set, "c").unwrap().address.ip(), ip("10.0.0.2"));
}

#[test]
fn same_id_and_ifname_gets_its_lease_back() {
    let set = set29();
    let mut s = MemStore::default();
    let a = add(&mut s, &set, "a").unwrap();
    let again = add(&mut s, &set, "a").unwrap();
    assert_eq!(a.address, again.address);
    assert!(a.new && !again.new);
    assert_eq!(s.leases.len(), 1);
    // Another ifname of the same container is another attachment.
    let b = allocate(&mut s, "net", 0, &set, "a", "eth1", None).unwrap();
    assert_ne!(a.address, b.address);
    // Legacy id-only lease counts for the id.
    s.leases.insert(
        ip("10.0.0.6"),
        Owner {
            container_id: "old".into(),
            ifname: None,
        },
    );
    assert_eq!(
        add(&mut s, &set, "old").unwrap().address.ip(),
        ip("10.0.0.6")
    );
}

#[test]
fn requested_addresses() {
    let set = set29();
    let mut s = MemStore::default();
    let req = |ip: &str| Requested {
        ip: ip.parse().unwrap(),
        field: "CNI_ARGS IP".into(),
    };
    let a = allocate(&mut s, "n", 0, &set, "a", "eth0", Some(&req("10.0.0.5"))).unwrap();
    assert_eq!(a.address.to_string(), "10.0.0.5/29");
    // Asking again for the same: same answer.
    assert!(allocate(&mut s, "n", 0, &set, "a", "eth0", Some(&req("10.0.0.5"))).is_ok());
    let e: cni_core::CniError = allocate(&mut s, "n", 0, &set, "b", "eth0", Some(&req("10.0.0.5")))
        .unwrap_err()
        .into();
    assert_eq!(e.code(), 103);
    assert!(e.msg.contains("a/eth0"), "{}", e.msg);
    let e: cni_core::CniError = allocate(&mut s, "n", 0, &set, "a", "eth0", Some(&req("10.0.0.4")))
        .unwrap_err()
        .into();
    assert_eq!(e.code(), 103);
    for bad in ["10.0.0.1", "10.0.0.0", "10.0.0.7", "10.0.1.3"] {
        let e: cni_core::CniError = allocate(&mut s, "n", 0, &set, "c", "eth0", Some(&req(bad)))
            .unwrap_err()
            .into();
        assert_eq!(e.code(), 7, "{bad}");
        assert!(e.msg.contains("CNI_ARGS IP"), "{}", e.msg);
    }
}

#[test]
fn ipv6_range() {
    let set = RangeSet(vec![range("fd00::/120", "fd00::1", "fd00::ff", "fd00::1")]);
    let mut s = MemStore::default();
    let a = add(&mut s, &set, "a").unwrap();
    assert_eq!(a.address.to_string(), "fd00::2/120");
    assert_eq!(a.gateway, ip("fd00::1"));
    // The last IPv6 address is usable (no broadcast).
    s.last.insert(0, ip("fd00::fe"));
    assert_eq!(add(&mut s, &set, "b").unwrap().address.ip(), ip("fd00::ff"));
    assert_eq!(free_addresses(&s, &set), 254 - 2);
}

#[test]
fn gc_keeps_valid_attachments_and_legacy_ids() {
    let set = set29();
    let mut s = MemStore::default();
    for id in ["keep", "drop"] {
        add(&mut s, &set, id).unwrap();
    }
    allocate(&mut s, "n", 0, &set, "keep", "eth1", None).unwrap();
    s.leases.insert(
        ip("10.0.0.6"),
        Owner {
            container_id: "keep".into(),
            ifname: None,
        },
    );
    let valid = [Attachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    }];
    let released = gc(&mut s, &valid).unwrap();
    assert_eq!(released.len(), 2, "{released:?}"); // drop/eth0 and keep/eth1
    let left: Vec<IpAddr> = s.leases.keys().copied().collect();
    assert_eq!(left, [ip("10.0.0.2"), ip("10.0.0.6")]);
    assert_eq!(gc(&mut s, &[]).unwrap().len(), 2);
    assert!(s.leases.is_empty());
}

#[test]
fn check_needs_a_lease_in_every_set() {
    let v4 = set29();
    let v6 = RangeSet(vec![range("fd00::/120", "fd00::1", "fd00::ff", "fd00::1")]);
    let mut s = MemStore::default();
    add(&mut s, &v4, "a").unwrap();
    assert!(check(&s, "n", std::slice::from_ref(&v4), "a", "eth0").is_ok());
    let e: cni_core::CniError = check(&s, "n", &[v4, v6], "a", "eth0").unwrap_err().into();
    assert_eq!(e.code(), 105);
    assert!(
        e.msg.contains("range set 1") && e.msg.contains("a/eth0"),
        "{}",
        e.msg
    );
}
