//! Address and port ranges as numbers: what the `ipBlock` and "any" elements are made of.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

/// An address as a number in its family (v4 in the low 32 bits).
pub(super) fn num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(super) fn addr(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

pub(super) fn max(v6: bool) -> u128 {
    if v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    }
}

pub(super) fn net_range(n: &IpNetwork) -> (u128, u128) {
    let start = num(n.network());
    let bits = if n.is_ipv6() { 128 } else { 32 };
    let host = u32::from(bits - n.prefix());
    let span = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    (start, start | span)
}

/// `[lo, hi]` less every range of `holes`.
pub(super) fn subtract(lo: u128, hi: u128, holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = vec![(lo, hi)];
    for &(a, b) in holes {
        out = out
            .into_iter()
            .flat_map(|(x, y)| {
                let mut v = Vec::new();
                if b < x || a > y {
                    v.push((x, y));
                } else {
                    if a > x {
                        v.push((x, a - 1));
                    }
                    if b < y {
                        v.push((b + 1, y));
                    }
                }
                v
            })
            .collect();
    }
    out
}

/// Sorted, merged (touching ranges joined) union of `r`.
pub(super) fn union(mut r: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    r.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// An address range (first, last) as numbers.
pub(super) type Span = (u128, u128);
/// A peer range and a port range.
pub(super) type Rect = (Span, (u16, u16));

/// Disjoint rectangles covering exactly the union of `rects`: the port axis cut at every
/// edge of a port range (a handful: the distinct port ranges of the rules), each piece with
/// the union of the peer ranges over it, equal neighbours merged. O(k x n log n) for k
/// distinct port ranges and n peer ranges (the peer axis holds the many values: one per pod).
pub(super) fn disjoint(rects: &[Rect]) -> Vec<Rect> {
    let mut by_ports: BTreeMap<(u16, u16), Vec<Span>> = BTreeMap::new();
    for (span, ports) in rects {
        by_ports.entry(*ports).or_default().push(*span);
    }
    let mut cuts: Vec<u32> = Vec::new();
    for (a, b) in by_ports.keys() {
        cuts.push(u32::from(*a));
        cuts.push(u32::from(*b) + 1);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<((u32, u32), Vec<Span>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let peers = union(
            by_ports
                .iter()
                .filter(|((a, b), _)| u32::from(*a) <= lo && hi <= u32::from(*b))
                .flat_map(|(_, spans)| spans.iter().copied())
                .collect(),
        );
        if peers.is_empty() {
            continue;
        }
        match pieces.last_mut() {
            Some(((_, e), ps)) if *e + 1 == lo && *ps == peers => *e = hi,
            _ => pieces.push(((lo, hi), peers)),
        }
    }
    let port = |p: u32| u16::try_from(p).unwrap_or(u16::MAX);
    pieces
        .into_iter()
        .flat_map(|((lo, hi), peers)| peers.into_iter().map(move |s| (s, (port(lo), port(hi)))))
        .collect()
}
