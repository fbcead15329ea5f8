//! etcd-ipam's own keys under `<prefix>/ipam/<network>/` (docs/DESIGN-etcd-ipam.md). No agent
//! watches them: etcd-ipam writes here only when it claims or gives back a block (then also
//! `<prefix>/blocks/<network>/<cidr>`, [`crate::schema::block_key`]); the addresses are the
//! hosts' (etcd-ipam's leases on each host).
//!
//! ```text
//! <prefix>/ipam/<network>/nodes/<node>/<cidr>        {}                         a block of the node
//! <prefix>/ipam/<network>/nodes/<node>/<cidr>/<ip>   {"containerId","ifname"}   an address, by the layout before December 2026
//! <prefix>/ipam/<network>/att/<id>/<ifname>          {"node","ips"}             its index, by that layout
//! ```
//!
//! A node reads `nodes/<node>/` (its blocks) and nothing else of other nodes. The keys of the
//! old layout are read once, by a host with no record of its blocks (taken as leases), and
//! deleted with their block.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::schema::cidr_key;

/// Value of `nodes/<node>/<cidr>/<ip>` (the layout before December 2026).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRecord {
    pub container_id: String,
    pub ifname: String,
}

/// Value of `nodes/<node>/<cidr>` (nothing yet: its key and revisions are what count).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBlock {}

/// Blocks of IPv4 ranges: /25 (128 addresses: Kubernetes' default 110 pods per node fit one
/// block, so a node claims one block, and the cluster sees one claim per node, not two).
pub const BLOCK_PREFIX_V4: u8 = 25;
/// Blocks of IPv6 ranges: /121 (128 addresses, as IPv4).
pub const BLOCK_PREFIX_V6: u8 = 121;

/// The block size of a range: /25 for IPv4, /121 for IPv6 (128 addresses), or the range's
/// subnet itself when it is smaller. Every host of a network must use the same size (blocks
/// are claimed by their CIDR key: a /25 and an overlapping /26 would be two keys), so it is a
/// constant, not a per-host config key (docs/scale.md).
pub fn block_prefix(subnet: IpNetwork) -> u8 {
    if subnet.is_ipv4() {
        subnet.prefix().max(BLOCK_PREFIX_V4)
    } else {
        subnet.prefix().max(BLOCK_PREFIX_V6)
    }
}

/// The block of `ip` in a range whose subnet has `subnet_prefix` bits.
pub fn block_of(ip: IpAddr, subnet_prefix: u8) -> Option<IpNetwork> {
    let p = if ip.is_ipv4() {
        subnet_prefix.max(BLOCK_PREFIX_V4)
    } else {
        subnet_prefix.max(BLOCK_PREFIX_V6)
    };
    let n = IpNetwork::new(ip, p).ok()?;
    IpNetwork::new(n.network(), p).ok()
}

/// `<prefix>/ipam/<network>/`.
pub fn network_prefix(prefix: &str, network: &str) -> String {
    format!("{prefix}/ipam/{network}/")
}

/// The block, and the address if any, of a key under `nodes/<node>/` (`rest` is what
/// follows that prefix: `<cidr>` or `<cidr>/<ip>`).
pub fn parse_node_key(rest: &str) -> Option<(IpNetwork, Option<IpAddr>)> {
    let (b, ip) = match rest.split_once('/') {
        Some((b, ip)) => (b, Some(ip.parse().ok()?)),
        None => (rest, None),
    };
    Some((crate::schema::parse_cidr_key(b)?, ip))
}

/// Key names under `<prefix>/ipam/<network>/`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub network_prefix: String,
}

impl Keys {
    pub fn new(network_prefix: &str) -> Self {
        Keys {
            network_prefix: network_prefix.to_string(),
        }
    }
    /// `nodes/<node>/`: one node's blocks.
    pub fn node_blocks(&self, node: &str) -> String {
        format!("{}nodes/{node}/", self.network_prefix)
    }
    /// `nodes/<node>/<cidr>`.
    pub fn node_block(&self, node: &str, block: IpNetwork) -> String {
        format!("{}nodes/{node}/{}", self.network_prefix, cidr_key(block))
    }
    /// `nodes/<node>/<cidr>/`: the addresses held in one block of a node.
    pub fn block_ips(&self, node: &str, block: IpNetwork) -> String {
        format!("{}/", self.node_block(node, block))
    }
    /// `nodes/<node>/<cidr>/<ip>`.
    pub fn ip(&self, node: &str, block: IpNetwork, ip: IpAddr) -> String {
        format!("{}/{ip}", self.node_block(node, block))
    }
    /// `att/<id>/<ifname>`.
    pub fn att(&self, container_id: &str, ifname: &str) -> String {
        format!("{}att/{container_id}/{ifname}", self.network_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spell_the_documented_layout() {
        let k = Keys::new(&network_prefix("/cnirs", "ov"));
        let b: IpNetwork = "10.1.0.64/26".parse().unwrap();
        assert_eq!(
            k.node_block("h1", b),
            "/cnirs/ipam/ov/nodes/h1/10.1.0.64_26"
        );
        assert_eq!(k.node_blocks("h1"), "/cnirs/ipam/ov/nodes/h1/");
        assert_eq!(
            k.ip("h1", b, "10.1.0.70".parse().unwrap()),
            "/cnirs/ipam/ov/nodes/h1/10.1.0.64_26/10.1.0.70"
        );
        assert_eq!(
            k.block_ips("h1", b),
            "/cnirs/ipam/ov/nodes/h1/10.1.0.64_26/"
        );
        assert_eq!(k.att("c1", "eth0"), "/cnirs/ipam/ov/att/c1/eth0");
        let r = serde_json::to_value(IpRecord {
            container_id: "c".into(),
            ifname: "eth0".into(),
        })
        .unwrap();
        assert_eq!(r["containerId"], "c");
    }

    #[test]
    fn blocks_are_128_addresses_or_the_whole_small_subnet() {
        assert_eq!(block_prefix("10.64.0.0/12".parse().unwrap()), 25);
        assert_eq!(block_prefix("10.64.0.0/28".parse().unwrap()), 28);
        assert_eq!(block_prefix("fd00::/64".parse().unwrap()), 121);
        assert_eq!(
            block_of("10.64.1.77".parse().unwrap(), 12)
                .unwrap()
                .to_string(),
            "10.64.1.0/25"
        );
        assert_eq!(
            block_of("fd00::4a".parse().unwrap(), 64)
                .unwrap()
                .to_string(),
            "fd00::/121"
        );
    }
}
