//! The geometry of blocks: which blocks a range set has, and which addresses a block holds.

use std::net::IpAddr;

use cluster::ipam::block_prefix;
use ipamconf::range::{from_u128, to_u128, Range, RangeSet};
use ipnetwork::IpNetwork;

pub(super) fn bits(ip: &IpAddr) -> u32 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The block of `r` that holds `ip`.
pub(super) fn block_in(r: &Range, ip: IpAddr) -> Option<IpNetwork> {
    let p = block_prefix(r.subnet);
    let n = IpNetwork::new(ip, p).ok()?;
    IpNetwork::new(n.network(), p).ok()
}

/// The addresses of `set` that can be handed out and lie in `block`.
pub fn addresses_in_block(set: &RangeSet, block: IpNetwork) -> Vec<IpAddr> {
    let base = to_u128(block.network());
    let size = 1u128 << (bits(&block.network()) - u32::from(block.prefix()));
    if size > 1 << 16 {
        return Vec::new(); // not one of our blocks
    }
    (0..size)
        .map(|i| from_u128(base + i, block.network()))
        .filter(|ip| set.is_allocatable(*ip))
        .collect()
}

/// Does `block` belong to `set` (a block of one of its ranges with an address to hand out)?
pub(super) fn block_of_set(set: &RangeSet, block: IpNetwork) -> bool {
    set.0
        .iter()
        .any(|r| block_prefix(r.subnet) == block.prefix() && r.subnet.contains(block.network()))
        && !addresses_in_block(set, block).is_empty()
}

/// Every block of `set` as (range, first block base, count): lazily walked.
pub(super) fn spans(set: &RangeSet) -> Vec<(&Range, u128, u128, u128)> {
    set.0
        .iter()
        .map(|r| {
            let bp = block_prefix(r.subnet);
            let size = 1u128 << (bits(&r.start) - u32::from(bp));
            let first = to_u128(r.start) & !(size - 1);
            let last = to_u128(r.end) & !(size - 1);
            (r, first, (last - first) / size + 1, size)
        })
        .collect()
}

/// How many blocks `set` has (saturating for huge IPv6 ranges).
pub fn block_count(set: &RangeSet) -> u128 {
    spans(set).iter().fold(0, |a, s| a.saturating_add(s.2))
}
