//! Plain values exchanged with the plugins.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

pub use netbase::{InvalidMac, MacAddr};

/// Bridge port flags read back from `IFLA_LINKINFO`/`IFLA_INFO_SLAVE_DATA`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePortFlags {
    /// `IFLA_BRPORT_MODE` (hairpin).
    pub hairpin: bool,
    /// `IFLA_BRPORT_ISOLATED`.
    pub isolated: bool,
}

/// How [`crate::Netlink::ensure_bridge`] makes a bridge it creates (an existing one is left as
/// it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewBridge {
    pub mtu: Option<u32>,
    pub vlan_filtering: bool,
    /// IGMP/MLD snooping (`mcast_snooping`). Off by default, as Kata's and Incus's container
    /// bridges have it: with no querier on the segment (the usual case) the bridge floods
    /// multicast to every port either way, while snooping re-arms two timers on every port
    /// whenever any port joins or leaves (a cost per join that grows with the ports), and is known
    /// to delay IPv6 neighbour discovery.
    pub mcast_snooping: bool,
}

/// Bridge port flags to set; `None` leaves a flag as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePortOpts {
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
}

/// What `ip -d link show NAME` tells about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; `None` for lo / physical.
    pub kind: Option<String>,
    /// ifindex of the master (bridge) if enslaved.
    pub master: Option<u32>,
    /// IFF_UP (administrative state).
    pub admin_up: bool,
    /// IFF_PROMISC.
    pub promisc: bool,
    /// IFF_ALLMULTI.
    pub allmulti: bool,
    /// IFLA_TXQLEN.
    pub txqlen: u32,
    /// IFLA_OPERSTATE as `ip` prints it: "UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN"...
    pub oper_state: String,
    /// Bridge port flags when this link is a bridge port.
    pub bridge_port: Option<BridgePortFlags>,
    /// `mcast_snooping` when this link is a bridge.
    pub mcast_snooping: Option<bool>,
    /// `IFLA_IFALIAS` (`ip link set NAME alias TEXT`), when set.
    pub alias: Option<String>,
    /// `IFLA_LINK`: the ifindex of the lower device (a macvlan's master, a veth's peer), in
    /// this netns or, with `link_netnsid`, another one.
    pub parent: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the parent lives in another netns (its id as seen from here).
    pub link_netnsid: Option<i32>,
    /// The macvlan mode when this link is a macvlan.
    pub macvlan_mode: Option<MacvlanMode>,
}

/// A macvlan's mode (`ip link add ... type macvlan mode MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    /// Any other kernel value (source mode, or a future one).
    Other(u32),
}

impl MacvlanMode {
    /// The name `ip` and the reference plugin use (`bridge`, `private`, `vepa`, `passthru`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Vepa => "vepa",
            Self::Bridge => "bridge",
            Self::Passthru => "passthru",
            Self::Other(_) => "other",
        }
    }

    /// The mode named `s`, as the reference accepts them ("" is bridge).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "bridge" => Self::Bridge,
            "private" => Self::Private,
            "vepa" => Self::Vepa,
            "passthru" => Self::Passthru,
            _ => return None,
        })
    }
}

impl std::fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(v) => write!(f, "mode {v}"),
            m => f.write_str(m.as_str()),
        }
    }
}

/// A macvlan to create ([`crate::Netlink::create_macvlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanSpec {
    /// Its final name in the netns it is created in.
    pub name: String,
    /// The master's ifindex in the netns of the handle that creates it.
    pub master: u32,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// `bcqueuelen`: the broadcast queue length (kernel default when `None`).
    pub bcqueuelen: Option<u32>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// Result of [`crate::Netlink::ensure_bridge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    pub link: Link,
    /// True when this call created it (undo: delete it, if the plugin wants).
    pub created: bool,
}

/// A veth pair to create, peer directly in the pod netns under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host_name: String,
    pub peer_name: String,
    pub mtu: Option<u32>,
    pub peer_mac: Option<MacAddr>,
    /// Bring the peer administratively up.
    pub up: bool,
    /// Bring the host end up in the same request (else it stays down until set up).
    pub host_up: bool,
}

/// Result of [`crate::Netlink::create_veth`]; `host` is read from the host
/// handle, `peer` from the pod handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub host: Link,
    pub peer: Link,
}

/// IP family filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
}

/// A route to add through one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination; host bits are masked off. `0.0.0.0/0` / `::/0` = default.
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// Metric (`RTA_PRIORITY`).
    pub priority: Option<u32>,
    /// `onlink`: the gateway is reached on the link even though no prefix of the link holds
    /// it (the overlay's pods: their prefix is their block, the gateway the range's).
    pub onlink: bool,
}

impl RouteSpec {
    /// `dst [via gw]`, no metric, not onlink.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            priority: None,
            onlink: false,
        }
    }
}

/// A route read back from the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: Option<u32>,
    pub table: u32,
}

/// A VXLAN device to create ([`crate::Netlink::ensure_vxlan`], [`crate::Op::CreateVxlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    /// VNI, 1..=16777215.
    pub vni: u32,
    /// This host's VTEP address (`local`), IPv4 or IPv6.
    pub local: IpAddr,
    /// ifindex of the underlay interface (`dev`), so the tunnel follows it.
    pub underlay: Option<u32>,
    /// UDP destination port, normally [`crate::VXLAN_PORT`].
    pub port: u16,
    /// Source-MAC learning on the device; `false` = `nolearning` (the FDB is programmed).
    pub learning: bool,
    pub mtu: Option<u32>,
    /// The device's MAC (`address`); `None` = a random one.
    pub mac: Option<MacAddr>,
}

/// What a policy rule does ([`RuleSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    /// `lookup TABLE`.
    Lookup(u32),
    /// `unreachable`.
    Unreachable,
}

/// One policy routing rule: `ip [-6] rule add priority P [iif IIF] [to DST] lookup T | unreachable`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    /// IPv6 (`-6`) or IPv4; a rule with `dst` takes the family of `dst`.
    pub v6: bool,
    pub priority: u32,
    pub iif: Option<String>,
    /// Destination prefix (its network address).
    pub dst: Option<IpNetwork>,
    pub action: RuleAction,
}

impl RuleSpec {
    /// `ip rule` text, for plans and reports.
    pub fn text(&self) -> String {
        let mut s = format!(
            "ip {} rule priority {}",
            if self.v6 { "-6" } else { "-4" },
            self.priority
        );
        if let Some(d) = self.dst {
            let n = IpNetwork::new(d.network(), d.prefix()).unwrap_or(d);
            s += &format!(" to {n}");
        }
        if let Some(i) = &self.iif {
            s += &format!(" iif {i}");
        }
        match self.action {
            RuleAction::Lookup(t) => s += &format!(" lookup {t}"),
            RuleAction::Unreachable => s += " unreachable",
        }
        s
    }
}

/// Where a [`TableRoute`] leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableTarget {
    /// `dev DEV` (scope link): the destination is on that link.
    Dev(String),
    /// `unreachable`: refused with ICMP unreachable.
    Unreachable,
}

/// A route of a routing table of ours: `ip route add [unreachable] DST [dev DEV] table T`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    pub table: u32,
    pub dst: IpNetwork,
    pub target: TableTarget,
}

impl TableRoute {
    /// `ip route` text, for plans and reports.
    pub fn text(&self) -> String {
        let fam = if self.dst.is_ipv6() { "-6" } else { "-4" };
        let dst = if self.dst.prefix() == 0 {
            "default".to_string()
        } else {
            IpNetwork::new(self.dst.network(), self.dst.prefix())
                .unwrap_or(self.dst)
                .to_string()
        };
        match &self.target {
            TableTarget::Dev(d) => format!("ip {fam} route add {dst} dev {d} table {}", self.table),
            TableTarget::Unreachable => {
                format!("ip {fam} route add unreachable {dst} table {}", self.table)
            }
        }
    }
}

/// A route of a remote overlay host's block: `ip route add DST via inet6 VIA dev VX onlink
/// table T` (an IPv4 destination through an IPv6 link-local next hop: Linux >= 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRoute {
    pub dst: IpNetwork,
    pub via: std::net::Ipv6Addr,
}

/// A neighbour entry as read back (`ip neigh show dev DEV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// NUD_PERMANENT (entries someone added, not resolved by the kernel).
    pub permanent: bool,
}
