//! The pure allocation logic over a [`Store`]: one address per range set, round-robin from
//! the last reserved address, requested addresses, leases given back to the same
//! (container, ifname), GC and free-space accounting.

use std::net::IpAddr;

use cni_core::Attachment;
use ipnetwork::IpNetwork;

use crate::{
    error::Error,
    range::{Range, RangeSet},
    store::{Owner, Store},
};

pub use ipamconf::Requested;

/// The outcome of [`allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with the subnet's prefix length.
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// `false` when (container, ifname) already held it and got it back.
    pub new: bool,
}

fn allocation(ip: IpAddr, r: &Range, new: bool) -> Result<Allocation, Error> {
    let address = IpNetwork::new(ip, r.subnet.prefix())
        .map_err(|e| Error::config("ipam.ranges", format!("{ip}/{}: {e}", r.subnet.prefix())))?;
    Ok(Allocation {
        address,
        gateway: r.gateway,
        new,
    })
}

/// Hand (id, ifname) one address of range set number `index`.
///
/// - a lease (id, ifname) already holds in the set is given back (an ADD repeated by a runtime
///   gets the same answer);
/// - `requested` must lie in the set and not be its gateway/network/broadcast (code 7), and be
///   free (code 103);
/// - otherwise the first free address after the set's last reserved one; code 104 when none.
pub fn allocate(
    store: &mut dyn Store,
    network: &str,
    index: usize,
    set: &RangeSet,
    id: &str,
    ifname: &str,
    requested: Option<&Requested>,
) -> Result<Allocation, Error> {
    let owner = Owner::new(id, ifname);
    let held: Vec<(IpAddr, &Range)> = store
        .get_by_id(id, ifname)
        .into_iter()
        .filter_map(|ip| set.range_for(ip).map(|(_, r)| (ip, r)))
        .collect();

    if let Some(req) = requested {
        let Some((_, r)) = set.range_for(req.ip) else {
            return Err(Error::config(
                &req.field,
                format!("{} is not in range set {index} ({set})", req.ip),
            ));
        };
        if r.is_reserved_address(req.ip) {
            return Err(Error::config(
                &req.field,
                format!(
                    "{} is the gateway, network or broadcast address of {}",
                    req.ip, r.subnet
                ),
            ));
        }
        if held.iter().any(|(ip, _)| *ip == req.ip) {
            return allocation(req.ip, r, false);
        }
        if let Some((h, _)) = held.first() {
            return Err(Error::AlreadyHolds {
                container: owner.to_string(),
                held: *h,
                index,
                requested: req.ip,
            });
        }
        if store.reserve(&owner, req.ip, index)? {
            return allocation(req.ip, r, true);
        }
        let holder = store
            .lease_iter()
            .find(|(ip, _)| *ip == req.ip)
            .map(|(_, owner)| owner.to_string())
            .unwrap_or_else(|| "another container".to_string());
        return Err(Error::Taken {
            ip: req.ip,
            field: req.field.clone(),
            owner: holder,
        });
    }

    if let Some((ip, r)) = held.first() {
        log::info!("{owner} already holds {ip} in network {network}: giving it back");
        return allocation(*ip, r, false);
    }

    let exhausted = || Error::Exhausted {
        network: network.to_string(),
        index,
        ranges: set.to_string(),
    };
    // Answer a full set at once instead of walking it.
    if free_addresses(&*store, set) == 0 {
        return Err(exhausted());
    }
    for (ri, ip) in set.candidates(store.last_reserved(index)) {
        if store.reserve(&owner, ip, index)? {
            return allocation(ip, &set.0[ri], true);
        }
    }
    Err(exhausted())
}

/// How many addresses of `set` are still free (saturating for huge IPv6 sets).
pub fn free_addresses(store: &dyn Store, set: &RangeSet) -> u128 {
    let used = store
        .lease_iter()
        .filter(|(ip, _)| set.is_allocatable(*ip))
        .count() as u128;
    set.capacity().saturating_sub(used)
}

/// CHECK: (id, ifname) must hold an address in every range set.
pub fn check(
    store: &dyn Store,
    network: &str,
    sets: &[RangeSet],
    id: &str,
    ifname: &str,
) -> Result<(), Error> {
    let held = store.get_by_id(id, ifname);
    for (index, set) in sets.iter().enumerate() {
        if !held.iter().any(|ip| set.contains(*ip)) {
            return Err(Error::NotReserved {
                container: Owner::new(id, ifname).to_string(),
                network: network.to_string(),
                index,
                ranges: set.to_string(),
            });
        }
    }
    Ok(())
}

/// GC: release every lease whose (container, ifname) is not in `valid`; a legacy id-only
/// lease stays when its id matches any valid attachment. Stale entries go too.
/// Returns the released addresses.
pub fn gc(store: &mut dyn Store, valid: &[Attachment]) -> Result<Vec<IpAddr>, Error> {
    let mut released = Vec::new();
    for lease in store.leases() {
        let keep = match &lease.owner.ifname {
            Some(ifname) => valid
                .iter()
                .any(|a| a.container_id == lease.owner.container_id && &a.ifname == ifname),
            None => valid
                .iter()
                .any(|a| a.container_id == lease.owner.container_id),
        };
        if !keep {
            store.release(lease.ip)?;
            released.push(lease.ip);
        }
    }
    store.drop_stale()?;
    Ok(released)
}

#[cfg(test)]
mod tests {
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
        assert!(matches!(e, Error::Exhausted { index: 0, .. }), "{e}");
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
        let e: cni_core::CniError =
            allocate(&mut s, "n", 0, &set, "b", "eth0", Some(&req("10.0.0.5")))
                .unwrap_err()
                .into();
        assert_eq!(e.code(), 103);
        assert!(e.msg.contains("a/eth0"), "{}", e.msg);
        let e: cni_core::CniError =
            allocate(&mut s, "n", 0, &set, "a", "eth0", Some(&req("10.0.0.4")))
                .unwrap_err()
                .into();
        assert_eq!(e.code(), 103);
        for bad in ["10.0.0.1", "10.0.0.0", "10.0.0.7", "10.0.1.3"] {
            let e: cni_core::CniError =
                allocate(&mut s, "n", 0, &set, "c", "eth0", Some(&req(bad)))
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
}
