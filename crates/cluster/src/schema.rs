//! The cluster state in etcd shared by the overlay plugin, etcd-ipam and the node agent
//! (notes: ETCD-SCHEMA). Keys under `<prefix>`; values are JSON.
//!
//! ```text
//! <prefix>/hosts/<node>            {"vtep":"10.240.0.1"}                          agent, with a lease
//! <prefix>/pods/<network>/<ip>     {"node","vtep","mac","containerId","ifname"}   overlay ADD/DEL
//! <prefix>/networks/<network>      {"vni":N,"subnets":[...],"internal":bool}      overlay ADD (if absent)
//! ```

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub node: String,
    pub vtep: Ipv4Addr,
    pub mac: String,
    pub container_id: String,
    pub ifname: String,
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

pub fn pod_key(prefix: &str, network: &str, ip: &IpAddr) -> String {
    format!("{prefix}/pods/{network}/{ip}")
}

pub fn pods_prefix(prefix: &str, network: &str) -> String {
    format!("{prefix}/pods/{network}/")
}

pub fn network_key(prefix: &str, network: &str) -> String {
    format!("{prefix}/networks/{network}")
}

/// What a key under `<prefix>/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Host { node: &'a str },
    Pod { network: &'a str, ip: &'a str },
    Network { network: &'a str },
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
        (Some("pods"), Some(network), Some(ip)) if !network.is_empty() && !ip.is_empty() => {
            Key::Pod { network, ip }
        }
        _ => Key::Other,
    }
}

/// This node's name: `$CNIRS_NODE_NAME` if set, else the hostname.
pub fn node_name() -> String {
    if let Some(n) = std::env::var("CNIRS_NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_classify() {
        let p = "/cnirs";
        assert_eq!(classify(p, &host_key(p, "h1")), Key::Host { node: "h1" });
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        assert_eq!(
            classify(p, &pod_key(p, "ov", &ip)),
            Key::Pod {
                network: "ov",
                ip: "10.1.0.5"
            }
        );
        assert_eq!(
            classify(p, &network_key(p, "ov")),
            Key::Network { network: "ov" }
        );
        assert_eq!(classify(p, "/cnirs/ipam/ov/ips/10.1.0.5"), Key::Other);
        assert_eq!(classify(p, "/cnirsx/hosts/h1"), Key::Other);
        assert_eq!(classify(p, "/cnirs/hosts/"), Key::Other);
    }

    #[test]
    fn records_use_the_shared_field_names() {
        let p = PodRecord {
            node: "h1".into(),
            vtep: "10.240.0.1".parse().unwrap(),
            mac: "0a:58:00:00:00:01".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["containerId"], "c1");
        assert_eq!(v["vtep"], "10.240.0.1");
        let n: NetworkRecord = serde_json::from_str(r#"{"vni":7}"#).unwrap();
        assert_eq!(n.vni, 7);
        let h: HostRecord = serde_json::from_str(r#"{"vtep":"10.240.0.3"}"#).unwrap();
        assert_eq!(h.vtep.to_string(), "10.240.0.3");
    }
}
