//! What a host's VXLAN device of one network needs, derived from `hosts/`, `networks/` and
//! `blocks/` alone (pure): per remote host that holds blocks in the network, its device's MAC
//! ([`crate::vxlan_mac`]), its link-local next hop ([`crate::link_local`]) and the routes of
//! its blocks, merged into as few prefixes as cover exactly those blocks ([`aggregate`]).
//! The agent turns each [`Peer`] into one FDB entry, one permanent neighbour and its routes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

use crate::schema::{self, BlockRecord, HostRecord, Key, NetworkRecord};

/// The cluster as an agent sees it: hosts, networks and blocks; never a pod.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// node -> VTEP
    pub hosts: BTreeMap<String, IpAddr>,
    /// network -> its record
    pub networks: BTreeMap<String, NetworkRecord>,
    /// (network, block) -> node
    pub blocks: BTreeMap<(String, IpNetwork), String>,
    /// node -> its (network, block)s: the index [`View::peer`] reads.
    by_node: BTreeMap<String, BTreeSet<(String, IpNetwork)>>,
}

/// What one key changed in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// What one node's device needs from the others (its VTEP, its blocks).
    Node(String),
    /// Anything (a network's record, a block that moved between nodes).
    All,
}

impl View {
    /// Apply one key: `Some(value)` = put, `None` = delete. Unreadable values count as absent;
    /// keys of other kinds are ignored. Says what changed.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) -> Change {
        let node_if = |changed: bool, node: &str| {
            if changed {
                Change::Node(node.to_string())
            } else {
                Change::None
            }
        };
        match schema::classify(prefix, key) {
            Key::Host { node } => {
                match value.and_then(|v| serde_json::from_slice::<HostRecord>(v).ok()) {
                    Some(h) => node_if(
                        self.hosts.insert(node.to_string(), h.vtep) != Some(h.vtep),
                        node,
                    ),
                    None => node_if(self.hosts.remove(node).is_some(), node),
                }
            }
            Key::Network { network } => {
                let changed =
                    match value.and_then(|v| serde_json::from_slice::<NetworkRecord>(v).ok()) {
                        Some(n) => self.networks.insert(network.to_string(), n.clone()) != Some(n),
                        None => self.networks.remove(network).is_some(),
                    };
                if changed {
                    Change::All
                } else {
                    Change::None
                }
            }
            Key::Block { network, block } => {
                let k = (network.to_string(), block);
                let old = match value.and_then(|v| serde_json::from_slice::<BlockRecord>(v).ok()) {
                    Some(b) => {
                        let old = self.blocks.insert(k.clone(), b.node.clone());
                        if old.as_deref() == Some(b.node.as_str()) {
                            return Change::None;
                        }
                        self.by_node
                            .entry(b.node.clone())
                            .or_default()
                            .insert(k.clone());
                        match old {
                            None => return Change::Node(b.node),
                            Some(o) => o,
                        }
                    }
                    None => match self.blocks.remove(&k) {
                        Some(o) => o,
                        None => return Change::None,
                    },
                };
                if let Some(set) = self.by_node.get_mut(&old) {
                    set.remove(&k);
                    if set.is_empty() {
                        self.by_node.remove(&old);
                    }
                }
                if value.is_some() {
                    Change::All // moved from one node to another
                } else {
                    Change::Node(old)
                }
            }
            Key::Other => Change::None,
        }
    }

    /// `node` as a peer of the device of `vni` on the host whose VTEP is `my_vtep` (None when
    /// it has no block in the VNI's networks, no known VTEP, a VTEP of the other family, or
    /// is this host).
    pub fn peer(&self, node: &str, my_vtep: IpAddr, vni: u32) -> Option<Peer> {
        let vtep = *self.hosts.get(node)?;
        if vtep.is_ipv4() != my_vtep.is_ipv4() || vtep == my_vtep {
            return None;
        }
        let nets: BTreeSet<&str> = self.networks_of(vni).into_iter().collect();
        let blocks: Vec<IpNetwork> = self
            .by_node
            .get(node)?
            .iter()
            .filter(|(net, _)| nets.contains(net.as_str()))
            .map(|(_, b)| *b)
            .collect();
        if blocks.is_empty() {
            return None;
        }
        let mac = crate::vxlan_mac(vni, vtep);
        Some(Peer {
            node: node.to_string(),
            vtep,
            mac,
            next_hop: crate::link_local(mac),
            routes: aggregate(&blocks),
        })
    }

    /// `node`'s blocks, as (network, block), from the index kept per node.
    pub fn blocks_of(&self, node: &str) -> impl Iterator<Item = &(String, IpNetwork)> {
        self.by_node.get(node).into_iter().flatten()
    }

    /// The networks carried by `vni` (normally one name).
    pub fn networks_of(&self, vni: u32) -> Vec<&str> {
        self.networks
            .iter()
            .filter(|(_, n)| n.vni == vni)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// Is any network of `vni` internal?
    pub fn is_internal(&self, vni: u32) -> bool {
        self.networks.values().any(|n| n.vni == vni && n.internal)
    }
}

/// One remote host of a network, as the local VXLAN device needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub node: String,
    pub vtep: IpAddr,
    /// Its VXLAN device's MAC: the FDB entry's key and the neighbour's lladdr.
    pub mac: [u8; 6],
    /// The next hop of its routes (the neighbour's address).
    pub next_hop: Ipv6Addr,
    /// Its blocks of the network, merged ([`aggregate`]).
    pub routes: Vec<IpNetwork>,
}

/// Every remote host that holds blocks in a network of `vni`, for the device of the host named
/// `me` whose VTEP is `my_vtep`. Hosts without a `hosts/` key (no VTEP known: dead, or not
/// registered yet) and hosts whose VTEP is of the other family (a VXLAN device tunnels over
/// one family) are left out.
pub fn peers(view: &View, me: &str, my_vtep: IpAddr, vni: u32) -> Vec<Peer> {
    view.by_node
        .keys()
        .filter(|n| n.as_str() != me)
        .filter_map(|n| view.peer(n, my_vtep, vni))
        .collect()
}

fn base(n: &IpNetwork) -> u128 {
    match n.network() {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn make(like: &IpNetwork, base: u128, prefix: u8) -> Option<IpNetwork> {
    let ip = if like.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(base).ok()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(base))
    };
    IpNetwork::new(ip, prefix).ok()
}

/// `blocks` merged into the fewest prefixes that cover exactly them: two aligned halves (a
/// block and its buddy) become their parent, repeatedly. Exactly, not a cover: a wider prefix
/// would also send another host's (or this host's own) blocks to this host. etcd-ipam claims
/// the buddy of a block its node holds first, so a host's blocks usually merge into one prefix
/// per family.
pub fn aggregate(blocks: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut set: BTreeSet<(bool, u8, u128)> = BTreeSet::new();
    let mut like: BTreeMap<bool, IpNetwork> = BTreeMap::new();
    for b in blocks {
        let v6 = b.is_ipv6();
        like.entry(v6).or_insert(*b);
        set.insert((v6, b.prefix(), base(b)));
    }
    loop {
        let mut merged = None;
        for &(v6, p, b) in &set {
            if p == 0 {
                continue;
            }
            let w = if v6 { 128 } else { 32 };
            let bit = 1u128 << (w - u32::from(p));
            let buddy = b ^ bit;
            if set.contains(&(v6, p, buddy)) {
                merged = Some(((v6, p, b), (v6, p, buddy), (v6, p - 1, b & !bit)));
                break;
            }
        }
        let Some((a, b, parent)) = merged else { break };
        set.remove(&a);
        set.remove(&b);
        set.insert(parent);
    }
    // Drop prefixes inside another one (a block listed twice under two sizes).
    let all: Vec<(bool, u8, u128)> = set.iter().copied().collect();
    let mut out = Vec::new();
    for &(v6, p, b) in &all {
        let inside = all.iter().any(|&(v, q, c)| {
            v == v6 && q < p && {
                let w: u32 = if v6 { 128 } else { 32 };
                let mask = if q == 0 {
                    0
                } else {
                    !((1u128 << (w - u32::from(q))) - 1)
                };
                (b & mask) == c
            }
        });
        if inside {
            continue;
        }
        if let Some(n) = like.get(&v6).and_then(|l| make(l, b, p)) {
            out.push(n);
        }
    }
    out.sort_by_key(|n| (n.is_ipv6(), base(n), n.prefix()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn agg(v: &[&str]) -> Vec<String> {
        aggregate(&v.iter().map(|s| n(s)).collect::<Vec<_>>())
            .iter()
            .map(|x| x.to_string())
            .collect()
    }

    #[test]
    fn buddies_merge_exactly_and_nothing_else_does() {
        assert_eq!(agg(&["10.64.1.0/26", "10.64.1.64/26"]), ["10.64.1.0/25"]);
        assert_eq!(
            agg(&[
                "10.64.1.0/26",
                "10.64.1.64/26",
                "10.64.1.128/26",
                "10.64.1.192/26"
            ]),
            ["10.64.1.0/24"]
        );
        // Three of four: a /25 and a /26, never the /24 (the fourth is someone else's).
        assert_eq!(
            agg(&["10.64.1.0/26", "10.64.1.64/26", "10.64.1.128/26"]),
            ["10.64.1.0/25", "10.64.1.128/26"]
        );
        // Neighbours that are not buddies stay apart.
        assert_eq!(
            agg(&["10.64.1.64/26", "10.64.1.128/26"]),
            ["10.64.1.64/26", "10.64.1.128/26"]
        );
        assert_eq!(
            agg(&["fd64::40/122", "fd64::/122", "10.9.0.0/26"]),
            ["10.9.0.0/26", "fd64::/121"]
        );
        assert_eq!(agg(&["10.1.0.0/26", "10.1.0.0/26"]), ["10.1.0.0/26"]);
        assert_eq!(agg(&[]), Vec::<String>::new());
    }

    fn view() -> View {
        let p = "/cnirs";
        let mut v = View::default();
        v.apply(p, "/cnirs/hosts/h1", Some(br#"{"vtep":"10.240.0.1"}"#));
        v.apply(p, "/cnirs/hosts/h2", Some(br#"{"vtep":"10.240.0.2"}"#));
        v.apply(p, "/cnirs/hosts/h3", Some(br#"{"vtep":"10.240.0.3"}"#));
        v.apply(
            p,
            "/cnirs/networks/a",
            Some(br#"{"vni":7,"internal":true}"#),
        );
        v.apply(p, "/cnirs/networks/b", Some(br#"{"vni":8}"#));
        for (net, cidr, node) in [
            ("a", "10.64.0.0_26", "h1"),
            ("a", "10.64.0.64_26", "h2"),
            ("a", "10.64.0.128_26", "h2"),
            ("a", "10.64.0.192_26", "h2"),
            ("a", "fd64::40_122", "h2"),
            ("a", "10.64.1.0_26", "h4"),
            ("b", "10.65.0.0_26", "h3"),
        ] {
            let key = format!("/cnirs/blocks/{net}/{cidr}");
            let val = format!(r#"{{"node":"{node}"}}"#);
            assert_eq!(
                v.apply(p, &key, Some(val.as_bytes())),
                Change::Node(node.into())
            );
        }
        v
    }

    #[test]
    fn peers_are_the_other_hosts_with_blocks_in_the_vni_with_derived_mac_and_next_hop() {
        let v = view();
        let me: IpAddr = "10.240.0.1".parse().unwrap();
        let got = peers(&v, "h1", me, 7);
        assert_eq!(got.len(), 1, "h4 has no VTEP, h3 is in another network");
        let p = &got[0];
        assert_eq!(p.node, "h2");
        let vtep: IpAddr = "10.240.0.2".parse().unwrap();
        assert_eq!(p.mac, crate::vxlan_mac(7, vtep));
        assert_eq!(p.next_hop, crate::link_local(p.mac));
        let r: Vec<String> = p.routes.iter().map(|x| x.to_string()).collect();
        assert_eq!(r, ["10.64.0.64/26", "10.64.0.128/25", "fd64::40/122"]);
        assert!(v.is_internal(7));
        assert!(!v.is_internal(8));
        // h3 sees h2 in network a... and nothing in b but itself.
        assert!(peers(&v, "h3", "10.240.0.3".parse().unwrap(), 8).is_empty());
        // An IPv6 VTEP does not tunnel to IPv4 ones.
        assert!(peers(&v, "h1", "fd40::1".parse().unwrap(), 7).is_empty());
    }

    #[test]
    fn the_view_follows_puts_and_deletes_and_ignores_other_keys() {
        let p = "/cnirs";
        let mut v = view();
        let h2 = Change::Node("h2".into());
        assert_eq!(v.apply(p, "/cnirs/blocks/a/10.64.0.64_26", None), h2);
        assert_eq!(
            v.apply(p, "/cnirs/blocks/a/10.64.0.64_26", None),
            Change::None
        );
        assert_eq!(
            v.apply(p, "/cnirs/ipam/a/ips/10.64.0.0_26/10.64.0.5", Some(b"{}")),
            Change::None
        );
        assert_eq!(
            v.apply(p, "/cnirs/hosts/h2", Some(br#"{"vtep":"10.240.0.2"}"#)),
            Change::None
        );
        // A block that moves between nodes, and a network's record: everything.
        assert_eq!(
            v.apply(
                p,
                "/cnirs/blocks/a/10.64.0.128_26",
                Some(br#"{"node":"h3"}"#)
            ),
            Change::All
        );
        assert_eq!(
            v.apply(p, "/cnirs/networks/c", Some(br#"{"vni":9}"#)),
            Change::All
        );
        assert_eq!(v.apply(p, "/cnirs/hosts/h2", None), h2);
        assert!(peers(&v, "h1", "10.240.0.1".parse().unwrap(), 7)
            .iter()
            .all(|p| p.node != "h2"));
    }
}
