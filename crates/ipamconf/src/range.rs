//! Address ranges and range sets, with the address arithmetic the allocator needs.
//!
//! A [`Range`] is always valid once built (see `config`): start <= end, both inside the subnet,
//! gateway inside the subnet. Addresses are handled as `u128` within one family.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

/// One pool: `[start, end]` of `subnet`, with its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// Ranges of one family from which one address is handed out per ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

/// The address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`] for the family of `like`.
pub fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// IPv4-mapped IPv6 addresses become IPv4, as the reference's `canonicalizeIP` does.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl Range {
    /// `start <= ip <= end` (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(self.start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Addresses never handed out: the gateway, the network address and (IPv4) the broadcast.
    pub fn is_reserved_address(&self, ip: IpAddr) -> bool {
        ip == self.gateway
            || ip == self.subnet.network()
            || (self.subnet.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// How many addresses of the range can be handed out (saturating for huge IPv6 ranges).
    pub fn capacity(&self) -> u128 {
        let span = (to_u128(self.end) - to_u128(self.start)).saturating_add(1);
        let mut skipped: Vec<IpAddr> = vec![self.gateway, self.subnet.network()];
        if self.subnet.is_ipv4() {
            skipped.push(self.subnet.broadcast());
        }
        skipped.sort();
        skipped.dedup();
        let skipped = skipped.iter().filter(|ip| self.contains(**ip)).count() as u128;
        span.saturating_sub(skipped)
    }

    /// Whether two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

impl fmt::Display for Range {
    /// `start-end`, as the reference names a range in its errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl RangeSet {
    /// The range holding `ip` (within start..=end).
    pub fn range_for(&self, ip: IpAddr) -> Option<(usize, &Range)> {
        self.0.iter().enumerate().find(|(_, r)| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.start.is_ipv4())
    }

    /// Addresses that can be handed out in the whole set (saturating).
    pub fn capacity(&self) -> u128 {
        self.0
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }

    /// Whether `ip` can be handed out: inside a range and not a reserved address of it.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.range_for(ip)
            .is_some_and(|(_, r)| !r.is_reserved_address(ip))
    }

    /// The candidates in round-robin order: from the address after `last` (when it lies in
    /// the set) or from the first range's start, through every range, wrapping around once.
    /// Reserved addresses (gateway, network, broadcast) are skipped. Lazy: huge IPv6 ranges
    /// cost nothing until walked.
    pub fn candidates(&self, last: Option<IpAddr>) -> Candidates<'_> {
        let (range_idx, next) = match last.and_then(|l| self.range_for(l).map(|(i, _)| (i, l))) {
            Some((i, l)) => {
                let r = &self.0[i];
                if l == r.end {
                    let j = (i + 1) % self.0.len();
                    (j, to_u128(self.0[j].start))
                } else {
                    (i, to_u128(l) + 1)
                }
            }
            None => (0, self.0.first().map(|r| to_u128(r.start)).unwrap_or(0)),
        };
        Candidates {
            set: self,
            range_idx,
            next,
            first: (range_idx, next),
            done: self.0.is_empty(),
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Iterator returned by [`RangeSet::candidates`]: `(range index, address)`.
#[derive(Debug)]
pub struct Candidates<'a> {
    set: &'a RangeSet,
    range_idx: usize,
    next: u128,
    first: (usize, u128),
    done: bool,
}

impl Iterator for Candidates<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let idx = self.range_idx;
            let r = &self.set.0[idx];
            let ip = from_u128(self.next, r.start);
            // Advance the cursor, wrapping to the next range after `end`.
            if self.next >= to_u128(r.end) {
                self.range_idx = (self.range_idx + 1) % self.set.0.len();
                self.next = to_u128(self.set.0[self.range_idx].start);
            } else {
                self.next += 1;
            }
            if (self.range_idx, self.next) == self.first {
                self.done = true;
            }
            if !r.is_reserved_address(ip) {
                return Some((idx, ip));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
