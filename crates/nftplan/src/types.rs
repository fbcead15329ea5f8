//! Validated values. Everything that ends up in an nft batch is one of these types, never a raw
//! user string, so the text builders cannot be injected into.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::NftError;

pub use netbase::{IfName, Protocol};

/// One attachment of a container to a network: the key of every ownership record.
/// DEL needs nothing else (the netns may be gone, prevResult missing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// CNI network name (conflist `name`).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME` (inside the container; used only as a key, never in a rule).
    pub ifname: String,
}

impl Attachment {
    /// The attachment of a plugin call (the CNI request: network name, `CNI_CONTAINERID`,
    /// `CNI_IFNAME`).
    pub fn of(call: &impl netbase::AttachmentKey) -> Result<Self, NftError> {
        Self::new(call.network(), call.container_id(), call.ifname())
    }

    /// Build an attachment key; the strings are only used in file names (escaped) and messages.
    pub fn new(
        network: impl Into<String>,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Result<Self, NftError> {
        let a = Attachment {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        };
        for (what, v) in [
            ("network name", &a.network),
            ("container id", &a.container_id),
            ("ifname", &a.ifname),
        ] {
            if v.is_empty() {
                return Err(NftError::Invalid {
                    what,
                    value: v.clone(),
                    reason: "empty",
                });
            }
        }
        Ok(a)
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// Which plugin feature an attachment record belongs to. Each feature refcounts its own
/// network-level elements, so bridge and isolation attachments of one pod are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// bridge / internal-bridge: managed_br, same_br, masq4/6, internal_br.
    Network,
    /// isolation: isolated_br.
    Isolation,
    /// portmap: pm4 / pm4_any / pm6 / pm6_any elements.
    Portmap,
    /// firewall: accept rules for the network's bridge in the host's dropping FORWARD chains.
    Firewall,
}

impl Feature {
    /// Stable name used in file names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Network => "network",
            Feature::Isolation => "isolation",
            Feature::Portmap => "portmap",
            Feature::Firewall => "firewall",
        }
    }

    pub(crate) const ALL: [Feature; 4] = [
        Feature::Network,
        Feature::Isolation,
        Feature::Portmap,
        Feature::Firewall,
    ];
}

/// One published port: `host_ip:host_port/protocol -> container_ip:container_port`.
/// `host_ip` `None`, `0.0.0.0` and `::` all mean "every address of the host" (of the family of
/// `container_ip`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to publish on; `None` or unspecified = any.
    pub host_ip: Option<IpAddr>,
    /// Host port (1..=65535).
    pub host_port: u16,
    /// tcp / udp / sctp.
    pub protocol: Protocol,
    /// Pod address (its family decides the map family).
    pub container_ip: IpAddr,
    /// Pod port (1..=65535).
    pub container_port: u16,
}

/// A mapping validated and normalised: the host address is `None` for "any" and otherwise of
/// the same family as the container address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct PortKey {
    pub v6: bool,
    pub protocol: Protocol,
    pub host_port: u16,
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Check ports and families; normalise the unspecified host address to `None`.
    pub fn validated(&self) -> Result<PortMapping, NftError> {
        let bad = |reason| NftError::Invalid {
            what: "port mapping",
            value: self.to_string(),
            reason,
        };
        if self.host_port == 0 || self.container_port == 0 {
            return Err(bad("port 0"));
        }
        if self.container_ip.is_unspecified() {
            return Err(bad("container address is unspecified"));
        }
        let host_ip = match self.host_ip {
            Some(ip) if ip.is_unspecified() => {
                if ip.is_ipv4() != self.container_ip.is_ipv4() {
                    // "0.0.0.0" with a v6 pod address (or "::" with v4): the reference portmap
                    // skips such pairs; the caller filters them, we refuse them.
                    return Err(bad("host address family differs from container address"));
                }
                None
            }
            Some(ip) => {
                if ip.is_ipv4() != self.container_ip.is_ipv4() {
                    return Err(bad("host address family differs from container address"));
                }
                Some(ip)
            }
            None => None,
        };
        Ok(PortMapping {
            host_ip,
            ..self.clone()
        })
    }

    pub(crate) fn key(&self) -> PortKey {
        PortKey {
            v6: self.container_ip.is_ipv6(),
            protocol: self.protocol,
            host_port: self.host_port,
            host_ip: self.host_ip.filter(|ip| !ip.is_unspecified()),
        }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(IpAddr::V4(a)) => a.to_string(),
            None if self.container_ip.is_ipv6() => format!("[{}]", Ipv6Addr::UNSPECIFIED),
            None => Ipv4Addr::UNSPECIFIED.to_string(),
        };
        write!(
            f,
            "{host}:{}/{} -> {}",
            self.host_port,
            self.protocol.as_str(),
            std::net::SocketAddr::new(self.container_ip, self.container_port)
        )
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match (self.host_ip, self.v6) {
            (Some(IpAddr::V6(a)), _) => format!("[{a}]"),
            (Some(IpAddr::V4(a)), _) => a.to_string(),
            (None, true) => "[::]".to_owned(),
            (None, false) => "0.0.0.0".to_owned(),
        };
        write!(f, "{host}:{}/{}", self.host_port, self.protocol.as_str())
    }
}

/// Network-level elements a bridge attachment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkElems {
    /// The bridge (goes into managed_br and same_br).
    pub bridge: IfName,
    /// Subnets to masquerade (ipMasq); empty when off.
    pub masq: Vec<IpNetwork>,
    /// Every subnet on the bridge (for hairpin masquerade), ipMasq or not.
    pub subnets: Vec<IpNetwork>,
    /// `macspoofchk`: the pod's host port and the only MAC allowed from it (owned by the
    /// attachment, removed with it).
    pub spoof_check: Option<(IfName, String)>,
    /// An internal-bridge network: nothing in, nothing out.
    pub internal: bool,
}

/// The pod side of a bridge attachment as ADD set it up: what `cnirs inspect` shows without a
/// libcni cache or a conflist. Recorded with the attachment, dropped with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIface {
    /// The pod interface's addresses (CIDR).
    #[serde(default)]
    pub ips: Vec<IpNetwork>,
    /// The pod interface's MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host end of the veth (a port of the bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<IfName>,
}
