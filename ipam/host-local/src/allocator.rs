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

    let exhausted = || {
        Error::from(ipamconf::Exhausted {
            network: network.to_string(),
            index,
            ranges: set.to_string(),
        })
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
mod tests;
