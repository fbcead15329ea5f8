//! etcd-ipam's keys under `<prefix>/ipam/<network>/` (see docs/DESIGN-etcd-ipam.md):
//!
//! ```text
//! <prefix>/ipam/<network>/blocks/<cidr with / as _>   {"node"}                      claimed once per node
//! <prefix>/ipam/<network>/ips/<ip>                    {"node","containerId","ifname"}
//! ```

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Value of `ips/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRecord {
    pub node: String,
    pub container_id: String,
    pub ifname: String,
}

impl IpRecord {
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// Value of `blocks/<cidr>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub node: String,
}

/// `<prefix>/ipam/<network>/`.
pub fn network_prefix(prefix: &str, network: &str) -> String {
    format!("{prefix}/ipam/{network}/")
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
    pub fn ip(&self, ip: IpAddr) -> String {
        format!("{}ips/{ip}", self.network_prefix)
    }
    /// `/` in the CIDR is written `_`.
    pub fn block(&self, block: IpNetwork) -> String {
        format!(
            "{}blocks/{}_{}",
            self.network_prefix,
            block.network(),
            block.prefix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spell_the_documented_layout() {
        let k = Keys::new(&network_prefix("/cnirs", "ov"));
        assert_eq!(
            k.ip("10.1.0.5".parse().unwrap()),
            "/cnirs/ipam/ov/ips/10.1.0.5"
        );
        assert_eq!(
            k.block("10.1.0.64/26".parse().unwrap()),
            "/cnirs/ipam/ov/blocks/10.1.0.64_26"
        );
        let r = serde_json::to_value(IpRecord {
            node: "h1".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        })
        .unwrap();
        assert_eq!(r["containerId"], "c");
    }
}
