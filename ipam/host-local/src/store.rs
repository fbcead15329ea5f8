//! What the allocator needs from a lease store, and an in-memory store for tests.
//!
//! A store holds the leases of ONE network, and the caller holds the network's lock for the
//! store's whole life (the disk store takes it on open), so methods need no locking of their own.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::error::Error;

/// Who holds an address. `ifname` is `None` for legacy files holding only the container id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            ifname: Some(ifname.to_string()),
        }
    }

    /// Exact match on (id, ifname).
    pub fn is(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && self.ifname.as_deref() == Some(ifname)
    }

    /// A legacy id-only lease of `id`.
    pub fn is_legacy_of(&self, id: &str) -> bool {
        self.ifname.is_none() && self.container_id == id
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ifname {
            Some(i) => write!(f, "{}/{}", self.container_id, i),
            None => write!(f, "{}", self.container_id),
        }
    }
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub owner: Owner,
}

pub trait Store {
    /// Reserve `ip` for `owner` and remember it as the last one of range set `range_set`.
    /// `Ok(false)` when the address is already held.
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, range_set: usize) -> Result<bool, Error>;

    /// Drop the lease of `ip` (no error when there is none).
    fn release(&mut self, ip: IpAddr) -> Result<(), Error>;

    /// The address last reserved in range set `range_set`, if known.
    fn last_reserved(&self, range_set: usize) -> Option<IpAddr>;

    /// Every valid lease (stale entries excluded), in address order, borrowed: ADD and DEL walk
    /// every lease of the network, so no owner is copied.
    fn lease_iter(&self) -> Box<dyn Iterator<Item = (IpAddr, &Owner)> + '_>;

    /// Every valid lease, in address order, copied.
    fn leases(&self) -> Vec<Lease> {
        self.lease_iter()
            .map(|(ip, owner)| Lease {
                ip,
                owner: owner.clone(),
            })
            .collect()
    }

    /// Remove entries that are neither a valid lease nor bookkeeping (e.g. empty files left by
    /// a crash); returns how many.
    fn drop_stale(&mut self) -> Result<usize, Error> {
        Ok(0)
    }

    /// Addresses held by (id, ifname), or by a legacy id-only lease of `id`.
    fn get_by_id(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.lease_iter()
            .filter(|(_, o)| o.is(id, ifname) || o.is_legacy_of(id))
            .map(|(ip, _)| ip)
            .collect()
    }

    /// Release what (id, ifname) holds, and legacy id-only leases of `id` (the reference
    /// releases those only when (id, ifname) holds nothing, which leaks a legacy lease once
    /// an ADD added a lease of another range set next to it). Returns the released addresses.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let ips = self.get_by_id(id, ifname);
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}

/// Leases in memory: the allocator's test double.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    pub leases: BTreeMap<IpAddr, Owner>,
    pub last: HashMap<usize, IpAddr>,
}

impl Store for MemStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, range_set: usize) -> Result<bool, Error> {
        if self.leases.contains_key(&ip) {
            return Ok(false);
        }
        self.leases.insert(ip, owner.clone());
        self.last.insert(range_set, ip);
        Ok(true)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), Error> {
        self.leases.remove(&ip);
        Ok(())
    }

    fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        self.last.get(&range_set).copied()
    }

    fn lease_iter(&self) -> Box<dyn Iterator<Item = (IpAddr, &Owner)> + '_> {
        Box::new(self.leases.iter().map(|(ip, owner)| (*ip, owner)))
    }
}
