//! The cluster state in etcd that the node agents watch (docs/overlay.md). Keys under
//! `<prefix>`; values are JSON.
//!
//! ```text
//! <prefix>/hosts/<node>             {"vtep":"10.240.0.1"}                       agent, with a lease
//! <prefix>/networks/<network>       {"vni":N,"subnets":[...],"internal":bool}   overlay ADD that creates a host's device (if absent)
//! <prefix>/blocks/<network>/<cidr>  {"node":"h1"}                               etcd-ipam, when a node claims a block
//! ```
//!
//! `<cidr>` is written with `_` for `/` (`10.64.1.0_26`, `fd64::40_122`). Nothing per pod is
//! here: a pod's ADD changes these keys only when it claims a block for its node.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's VTEP: its underlay address, IPv4 or (on an IPv6-only underlay) IPv6.
    pub vtep: IpAddr,
}

/// Value of `blocks/<network>/<cidr>`: which node holds the block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub node: String,
}

/// A block as a key component: `10.64.1.0_26`.
pub fn cidr_key(block: IpNetwork) -> String {
    format!("{}_{}", block.network(), block.prefix())
}

/// The inverse of [`cidr_key`] (the network address, checked).
pub fn parse_cidr_key(s: &str) -> Option<IpNetwork> {
    let (ip, len) = s.rsplit_once('_')?;
    let n = IpNetwork::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (n.network() == n.ip()).then_some(n)
}

/// `<prefix>/blocks/`: every network's blocks (the agent's watch).
pub fn blocks_prefix(prefix: &str) -> String {
    format!("{prefix}/blocks/")
}

/// `<prefix>/blocks/<network>/`.
pub fn network_blocks_prefix(prefix: &str, network: &str) -> String {
    format!("{prefix}/blocks/{network}/")
}

/// `<prefix>/blocks/<network>/<cidr>`.
pub fn block_key(prefix: &str, network: &str, block: IpNetwork) -> String {
    format!("{prefix}/blocks/{network}/{}", cidr_key(block))
}

/// `<prefix>/networks/`.
pub fn networks_prefix(prefix: &str) -> String {
    format!("{prefix}/networks/")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub vni: u32,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub internal: bool,
}

pub fn host_key(prefix: &str, node: &str) -> String {
    format!("{prefix}/hosts/{node}")
}

pub fn hosts_prefix(prefix: &str) -> String {
    format!("{prefix}/hosts/")
}

pub fn network_key(prefix: &str, network: &str) -> String {
    format!("{prefix}/networks/{network}")
}

/// What a key under `<prefix>/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Host { node: &'a str },
    Network { network: &'a str },
    Block { network: &'a str, block: IpNetwork },
    Other,
}

/// Classify `key` (`<prefix>/...`).
pub fn classify<'a>(prefix: &str, key: &'a str) -> Key<'a> {
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return Key::Other;
    };
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("hosts"), Some(node), None) if !node.is_empty() => Key::Host { node },
        (Some("networks"), Some(network), None) if !network.is_empty() => Key::Network { network },
        (Some("blocks"), Some(network), Some(b)) if !network.is_empty() => {
            match parse_cidr_key(b) {
                Some(block) => Key::Block { network, block },
                None => Key::Other,
            }
        }
        _ => Key::Other,
    }
}

/// This node's name: `$CNIRS_NODE_NAME` if set, else the hostname.
pub fn node_name() -> String {
    node().name
}

/// A node name and where it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    pub name: String,
    /// `CNIRS_NODE_NAME`, `the hostname`, or `--node-name`.
    pub source: &'static str,
}

/// This node's name with its source: `$CNIRS_NODE_NAME` if set, else the hostname.
pub fn node() -> NodeName {
    if let Some(n) = std::env::var("CNIRS_NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
    {
        return NodeName {
            name: n,
            source: "CNIRS_NODE_NAME",
        };
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    NodeName {
        name,
        source: "the hostname",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_classify() {
        let p = "/cnirs";
        assert_eq!(classify(p, &host_key(p, "h1")), Key::Host { node: "h1" });
        assert_eq!(classify(p, "/cnirs/pods/ov/10.1.0.5"), Key::Other);
        assert_eq!(
            classify(p, &network_key(p, "ov")),
            Key::Network { network: "ov" }
        );
        assert_eq!(classify(p, "/cnirs/ipam/ov/ips/10.1.0.5"), Key::Other);
        let b: IpNetwork = "fd64::40/122".parse().unwrap();
        assert_eq!(block_key(p, "ov", b), "/cnirs/blocks/ov/fd64::40_122");
        assert_eq!(
            classify(p, &block_key(p, "ov", b)),
            Key::Block {
                network: "ov",
                block: b
            }
        );
        assert_eq!(classify(p, "/cnirs/blocks/ov/10.1.0.5_24"), Key::Other);
        assert_eq!(classify(p, "/cnirs/blocks/ov/junk"), Key::Other);
        assert_eq!(classify(p, "/cnirsx/hosts/h1"), Key::Other);
        assert_eq!(classify(p, "/cnirs/hosts/"), Key::Other);
    }

    #[test]
    fn records_use_the_shared_field_names() {
        let b = serde_json::to_value(BlockRecord { node: "h1".into() }).unwrap();
        assert_eq!(b, serde_json::json!({"node": "h1"}));
        let n: NetworkRecord = serde_json::from_str(r#"{"vni":7}"#).unwrap();
        assert_eq!(n.vni, 7);
        let h: HostRecord = serde_json::from_str(r#"{"vtep":"10.240.0.3"}"#).unwrap();
        assert_eq!(h.vtep.to_string(), "10.240.0.3");
        let h: HostRecord = serde_json::from_str(r#"{"vtep":"fd40::3"}"#).unwrap();
        assert!(h.vtep.is_ipv6());
    }
}
