//! The schema of our tables: every set and map with its key and data types and flags
//! ([`SETS`]). Everything about sets is derived from it: their declarations in the skeleton
//! ([`crate::skeleton`], which adds the chains and rules), the nf_tables encoding of elements
//! (`nlbatch.rs`: field sizes, padding, interval layout), the nft text of elements (logs,
//! golden tests, the `nft` fallback) and the in-memory fake ([`crate::FakeNft`]).
//!
//! An element is a list of typed [`Value`]s, one per field of its set's key (and data). Each
//! field is what nft calls a data type (`ifname`, `ipv4_addr`, ...); a value knows its bytes
//! as nf_tables stores them and its nft text.

use std::{fmt, net::IpAddr};

use ipnetwork::IpNetwork;

use crate::types::{IfName, Protocol};

pub use netbase::MacAddr;

/// The name of both our tables (`inet cnirs`, `bridge cnirs`).
pub const TABLE_NAME: &str = "cnirs";

/// The address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `inet cnirs`: routed and bridged (br_netfilter) IPv4 and IPv6 traffic.
    Inet,
    /// `bridge cnirs`: frames on our bridges (the MAC spoof check).
    Bridge,
}

impl Family {
    /// Every family we have a table in, in skeleton order.
    pub const ALL: [Family; 2] = [Family::Inet, Family::Bridge];

    /// nft's keyword.
    pub const fn keyword(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }

    /// `NFPROTO_*` (the `nfgen_family` of nf_tables messages).
    pub const fn nfproto(self) -> u8 {
        match self {
            Family::Inet => crate::nfnl::NFPROTO_INET,
            Family::Bridge => crate::nfnl::NFPROTO_BRIDGE,
        }
    }

    /// Our table of this family, as nft names it: `inet cnirs`.
    pub const fn table(self) -> &'static str {
        match self {
            Family::Inet => "inet cnirs",
            Family::Bridge => "bridge cnirs",
        }
    }
}

/// One field of a key or of map data: an nft data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `ifname`: an interface name, 16 bytes NUL-padded.
    Ifname,
    /// `ether_addr`: 6 bytes.
    Ether,
    /// `ipv4_addr`: 4 bytes, network order.
    Ipv4,
    /// `ipv6_addr`: 16 bytes, network order.
    Ipv6,
    /// `inet_proto`: the IP protocol number, 1 byte.
    Proto,
    /// `inet_service`: a port, 2 bytes, network order.
    Service,
}

impl Field {
    /// nft's name of the type.
    pub const fn nft_type(self) -> &'static str {
        match self {
            Field::Ifname => "ifname",
            Field::Ether => "ether_addr",
            Field::Ipv4 => "ipv4_addr",
            Field::Ipv6 => "ipv6_addr",
            Field::Proto => "inet_proto",
            Field::Service => "inet_service",
        }
    }
}

/// How nf_tables stores a set, which decides how an element is encoded and looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Exact keys (hash): one element per key, with data for a map.
    Exact,
    /// `flags interval` on one field (rbtree): a start and an end element per interval.
    Ranges,
    /// `flags interval` on a concatenation (pipapo): one element with a key and a key end.
    ConcatRanges,
}

/// One set or map of our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDef {
    /// The table's family.
    pub family: Family,
    /// The set's name (unique in its table).
    pub name: &'static str,
    /// Key fields (more than one: a concatenation, `a . b`).
    pub key: &'static [Field],
    /// Data fields of a map (empty: a set).
    pub data: &'static [Field],
    /// `flags interval`: the last key field of an element is a prefix ([`Value::Net`]).
    pub interval: bool,
}

impl SetDef {
    /// A map (elements carry data) rather than a set.
    pub const fn is_map(&self) -> bool {
        !self.data.is_empty()
    }

    pub(crate) const fn layout(&self) -> Layout {
        match (self.interval, self.key.len()) {
            (false, _) => Layout::Exact,
            (true, 1) => Layout::Ranges,
            (true, _) => Layout::ConcatRanges,
        }
    }

    /// The declaration the skeleton holds:
    /// `add map inet cnirs pm4 { type ipv4_addr . inet_proto . inet_service : ...; }`.
    pub fn declaration(&self) -> String {
        let types = |fields: &[Field]| {
            fields
                .iter()
                .map(|f| f.nft_type())
                .collect::<Vec<_>>()
                .join(" . ")
        };
        let mut ty = types(self.key);
        if self.is_map() {
            ty = format!("{ty} : {}", types(self.data));
        }
        format!(
            "add {} {} {} {{ type {ty};{} }}",
            if self.is_map() { "map" } else { "set" },
            self.family.table(),
            self.name,
            if self.interval {
                " flags interval;"
            } else {
                ""
            }
        )
    }
}

use Field::*;

/// Every set and map, in skeleton order. Adding a set is one entry here, the [`crate::Elem`]
/// variant whose elements it holds (see [`crate::Elem::parts`]) and the rules that use it
/// ([`crate::skeleton::RULES`]); the crate docs walk through it.
pub const SETS: &[SetDef] = &[
    set(Family::Inet, "managed_br", &[Ifname]),
    set(Family::Inet, "same_br", &[Ifname, Ifname]),
    set(Family::Inet, "internal_br", &[Ifname]),
    set(Family::Inet, "isolated_br", &[Ifname]),
    ranges(Family::Inet, "masq4", &[Ipv4]),
    ranges(Family::Inet, "masq6", &[Ipv6]),
    ranges(Family::Inet, "br_net4", &[Ifname, Ipv4]),
    ranges(Family::Inet, "br_net6", &[Ifname, Ipv6]),
    map(
        Family::Inet,
        "pm4",
        &[Ipv4, Proto, Service],
        &[Ipv4, Service],
    ),
    map(Family::Inet, "pm4_any", &[Proto, Service], &[Ipv4, Service]),
    map(
        Family::Inet,
        "pm6",
        &[Ipv6, Proto, Service],
        &[Ipv6, Service],
    ),
    map(Family::Inet, "pm6_any", &[Proto, Service], &[Ipv6, Service]),
    set(Family::Inet, "vtep_ports", &[Service]),
    set(Family::Inet, "vtep4", &[Ipv4]),
    set(Family::Inet, "vtep6", &[Ipv6]),
    // NetworkPolicy (`netpol`): pods isolated per direction, and what each may reach or be
    // reached from: `pod . peer range` (a rule without ports: any protocol) or `pod . peer
    // range . protocol . port range`. Elements grow with the allowed (pod, peer, ports); the
    // rules do not (see docs/netpol.md).
    set(Family::Inet, "np_iiso4", &[Ipv4]),
    set(Family::Inet, "np_iiso6", &[Ipv6]),
    set(Family::Inet, "np_eiso4", &[Ipv4]),
    set(Family::Inet, "np_eiso6", &[Ipv6]),
    ranges(Family::Inet, "np_in_any4", &[Ipv4, Ipv4]),
    ranges(Family::Inet, "np_in_any6", &[Ipv6, Ipv6]),
    // The common single peer address on a single port: a hash set (O(1) insert), not pipapo.
    set(Family::Inet, "np_in_one4", &[Ipv4, Ipv4, Proto, Service]),
    set(Family::Inet, "np_in_one6", &[Ipv6, Ipv6, Proto, Service]),
    set(Family::Inet, "np_out_one4", &[Ipv4, Ipv4, Proto, Service]),
    set(Family::Inet, "np_out_one6", &[Ipv6, Ipv6, Proto, Service]),
    ranges(Family::Inet, "np_in4", &[Ipv4, Ipv4, Proto, Service]),
    ranges(Family::Inet, "np_in6", &[Ipv6, Ipv6, Proto, Service]),
    ranges(Family::Inet, "np_out_any4", &[Ipv4, Ipv4]),
    ranges(Family::Inet, "np_out_any6", &[Ipv6, Ipv6]),
    ranges(Family::Inet, "np_out4", &[Ipv4, Ipv4, Proto, Service]),
    ranges(Family::Inet, "np_out6", &[Ipv6, Ipv6, Proto, Service]),
    // Pod peers, never merged into ranges (an ADD adds elements, changes none): `pod . peer`
    // (hash) and `pod . peer . protocol . port range` (a port range needs pipapo).
    set(Family::Inet, "np_in_pp4", &[Ipv4, Ipv4]),
    set(Family::Inet, "np_in_pp6", &[Ipv6, Ipv6]),
    set(Family::Inet, "np_out_pp4", &[Ipv4, Ipv4]),
    set(Family::Inet, "np_out_pp6", &[Ipv6, Ipv6]),
    ranges(Family::Inet, "np_in_pr4", &[Ipv4, Ipv4, Proto, Service]),
    ranges(Family::Inet, "np_in_pr6", &[Ipv6, Ipv6, Proto, Service]),
    ranges(Family::Inet, "np_out_pr4", &[Ipv4, Ipv4, Proto, Service]),
    ranges(Family::Inet, "np_out_pr6", &[Ipv6, Ipv6, Proto, Service]),
    set(Family::Bridge, "spoof_ports", &[Ifname]),
    set(Family::Bridge, "spoof_ok", &[Ifname, Ether]),
];

const fn set(family: Family, name: &'static str, key: &'static [Field]) -> SetDef {
    SetDef {
        family,
        name,
        key,
        data: &[],
        interval: false,
    }
}

const fn ranges(family: Family, name: &'static str, key: &'static [Field]) -> SetDef {
    SetDef {
        interval: true,
        ..set(family, name, key)
    }
}

const fn map(
    family: Family,
    name: &'static str,
    key: &'static [Field],
    data: &'static [Field],
) -> SetDef {
    SetDef {
        data,
        ..set(family, name, key)
    }
}

/// The entry of [`SETS`] called `name`. Used in constants (`const S: &SetDef =
/// schema::def("pm4")`), a name not in the table fails the build.
pub const fn def(name: &str) -> &'static SetDef {
    let mut i = 0;
    while i < SETS.len() {
        if str_eq(SETS[i].name, name) {
            return &SETS[i];
        }
        i += 1;
    }
    panic!("no such set in schema::SETS")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// One field's value in an element. Its variant decides its [`Field`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An interface name (`ifname`).
    Ifname(IfName),
    /// An Ethernet address (`ether_addr`).
    Ether(MacAddr),
    /// An address (`ipv4_addr` / `ipv6_addr`).
    Addr(IpAddr),
    /// tcp / udp / sctp (`inet_proto`).
    Proto(Protocol),
    /// A port (`inet_service`).
    Port(u16),
    /// A prefix, the last key field of an element of an interval set (`ipv4_addr` /
    /// `ipv6_addr` with `flags interval`).
    Net(IpNetwork),
    /// An address range, first and last (same family), a field of a concatenation with
    /// `flags interval` (pipapo: every field is a range).
    AddrRange(IpAddr, IpAddr),
    /// A port range, first and last, a field of a concatenation with `flags interval`.
    PortRange(u16, u16),
}

impl Value {
    /// The nft data type of this value.
    pub fn field(&self) -> Field {
        match self {
            Value::Ifname(_) => Ifname,
            Value::Ether(_) => Ether,
            Value::Addr(IpAddr::V4(_))
            | Value::Net(IpNetwork::V4(_))
            | Value::AddrRange(IpAddr::V4(_), _) => Ipv4,
            Value::Addr(IpAddr::V6(_))
            | Value::Net(IpNetwork::V6(_))
            | Value::AddrRange(IpAddr::V6(_), _) => Ipv6,
            Value::Proto(_) => Proto,
            Value::Port(_) | Value::PortRange(..) => Service,
        }
    }

    /// Append the bytes nf_tables stores, unpadded: a prefix's network address, or with
    /// `last` its last address.
    pub(crate) fn put(&self, out: &mut Vec<u8>, last: bool) {
        match self {
            Value::Ifname(n) => {
                let at = out.len();
                out.extend_from_slice(n.as_str().as_bytes());
                out.resize(at + 16, 0); // IFNAMSIZ
            }
            Value::Ether(m) => out.extend_from_slice(&m.0),
            Value::Addr(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Value::Addr(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Value::Proto(p) => out.push(p.number()),
            Value::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Value::Net(IpNetwork::V4(n)) => {
                let (start, end) = v4_range(n);
                out.extend_from_slice(&if last { end } else { start }.to_be_bytes());
            }
            Value::Net(IpNetwork::V6(n)) => {
                let (start, end) = v6_range(n);
                out.extend_from_slice(&if last { end } else { start }.to_be_bytes());
            }
            Value::AddrRange(a, b) => Value::Addr(if last { *b } else { *a }).put(out, false),
            Value::PortRange(a, b) => {
                out.extend_from_slice(&if last { b } else { a }.to_be_bytes())
            }
        }
    }

    /// The first and last key bytes this value covers (equal for a single value).
    pub(crate) fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        self.put(&mut lo, false);
        self.put(&mut hi, true);
        (lo, hi)
    }

    /// One past a prefix's last address, as bytes; `None` when that overflows (`0.0.0.0/0`)
    /// or the value is not a prefix.
    pub(crate) fn past_end(&self) -> Option<Vec<u8>> {
        match self {
            Value::Net(IpNetwork::V4(n)) => {
                Some(v4_range(n).1.checked_add(1)?.to_be_bytes().to_vec())
            }
            Value::Net(IpNetwork::V6(n)) => {
                Some(v6_range(n).1.checked_add(1)?.to_be_bytes().to_vec())
            }
            _ => None,
        }
    }

    /// How nft asks for this value in `get element`: a prefix by its network address (nft
    /// 1.0.6 fails `get element` of an interval that has an adjacent one beside it, while a
    /// single address finds the interval that holds it).
    pub(crate) fn query_text(&self) -> String {
        match self {
            Value::Net(n) => n.network().to_string(),
            Value::AddrRange(a, _) => a.to_string(),
            Value::PortRange(a, _) => a.to_string(),
            v => v.to_string(),
        }
    }
}

/// nft's text of the value: `"br0"`, `02:00:00:00:00:0a`, `10.0.0.1`, `tcp`, `8080`,
/// `10.1.0.0/24`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // IfName excludes `"` and `\`: it is written as is.
            Value::Ifname(n) => write!(f, "\"{n}\""),
            Value::Ether(m) => write!(f, "{m}"),
            Value::Addr(a) => write!(f, "{a}"),
            Value::Proto(p) => f.write_str(p.as_str()),
            Value::Port(p) => write!(f, "{p}"),
            Value::Net(n) => write!(f, "{n}"),
            Value::AddrRange(a, b) if a == b => write!(f, "{a}"),
            Value::AddrRange(a, b) => write!(f, "{a}-{b}"),
            Value::PortRange(a, b) if a == b => write!(f, "{a}"),
            Value::PortRange(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// A v4 prefix's first and last address.
fn v4_range(n: &ipnetwork::Ipv4Network) -> (u32, u32) {
    let start = u32::from(n.network());
    (
        start,
        start | u32::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0),
    )
}

/// A v6 prefix's first and last address.
fn v6_range(n: &ipnetwork::Ipv6Network) -> (u128, u128) {
    let start = u128::from(n.network());
    (
        start,
        start | u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0),
    )
}

/// `a . b . c`.
pub(crate) fn concat_text(values: &[Value], text: impl Fn(&Value) -> String) -> String {
    values.iter().map(text).collect::<Vec<_>>().join(" . ")
}
