//! Pure builders of nft text: the skeleton and element batches. Golden-tested without root.

use std::fmt;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::types::{IfName, NetworkElems, PortMapping};

/// Family and name of our one table.
pub const TABLE: &str = "inet cnirs";

/// The fixed skeleton, as an nft script. Loading it is idempotent and race-safe without a lock:
/// `add table/set/map/chain` keep what exists (and set elements), each chain is flushed and its
/// rules re-added in the same transaction. So concurrent first calls converge to exactly one copy
/// of every rule, and a second load repairs rules somebody changed.
///
/// Text, not JSON: nft 1.0.6 turns a JSON-declared map whose value is a concatenation
/// (`ipv4_addr . inet_service`) into a plain set, and a dnat through it segfaults nft.
pub const SKELETON: &str = r#"add table inet cnirs
add set inet cnirs managed_br { type ifname; }
add set inet cnirs same_br { type ifname . ifname; }
add set inet cnirs internal_br { type ifname; }
add set inet cnirs isolated_br { type ifname; }
add set inet cnirs masq4 { type ipv4_addr; flags interval; }
add set inet cnirs masq6 { type ipv6_addr; flags interval; }
add set inet cnirs br_net4 { type ifname . ipv4_addr; flags interval; }
add set inet cnirs br_net6 { type ifname . ipv6_addr; flags interval; }
add map inet cnirs pm4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
add map inet cnirs pm4_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
add map inet cnirs pm6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
add map inet cnirs pm6_any { type inet_proto . inet_service : ipv6_addr . inet_service; }
add set inet cnirs vtep_ports { type inet_service; }
add set inet cnirs vtep4 { type ipv4_addr; }
add set inet cnirs vtep6 { type ipv6_addr; }
add chain inet cnirs portmap
add chain inet cnirs forward { type filter hook forward priority filter; policy accept; }
add chain inet cnirs prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain inet cnirs output { type nat hook output priority -100; policy accept; }
add chain inet cnirs postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain inet cnirs raw_pre { type filter hook prerouting priority raw; policy accept; }
add chain inet cnirs input { type filter hook input priority filter; policy accept; }
flush chain inet cnirs portmap
flush chain inet cnirs forward
flush chain inet cnirs prerouting
flush chain inet cnirs output
flush chain inet cnirs postrouting
flush chain inet cnirs raw_pre
flush chain inet cnirs input
add rule inet cnirs forward iifname . oifname @same_br accept
add rule inet cnirs forward ct state established,related accept
add rule inet cnirs forward oifname @internal_br drop
add rule inet cnirs forward iifname @internal_br drop
add rule inet cnirs forward ct status dnat oifname @managed_br accept
add rule inet cnirs forward iifname @isolated_br oifname @isolated_br drop
add rule inet cnirs prerouting fib daddr type local jump portmap
add rule inet cnirs output fib daddr type local jump portmap
add rule inet cnirs portmap meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @pm4
add rule inet cnirs portmap meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pm4_any
add rule inet cnirs portmap meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6
add rule inet cnirs portmap meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pm6_any
add rule inet cnirs postrouting ct status dnat oifname . ip saddr @br_net4 masquerade
add rule inet cnirs postrouting ct status dnat oifname . ip6 saddr @br_net6 masquerade
add rule inet cnirs postrouting ct status dnat ip saddr 127.0.0.0/8 oifname @managed_br masquerade
add rule inet cnirs postrouting ip saddr @masq4 ip daddr != 224.0.0.0/4 oifname != @managed_br masquerade
add rule inet cnirs postrouting ip6 saddr @masq6 ip6 daddr != ff00::/8 oifname != @managed_br masquerade
add rule inet cnirs raw_pre iifname != "lo" ip daddr 127.0.0.0/8 fib daddr type local drop
add rule inet cnirs input iifname @internal_br fib daddr . iif type != { local, broadcast, multicast } drop
add rule inet cnirs input udp dport @vtep_ports ip saddr != @vtep4 drop
add rule inet cnirs input udp dport @vtep_ports ip6 saddr != @vtep6 drop
add table bridge cnirs
add set bridge cnirs spoof_ports { type ifname; }
add set bridge cnirs spoof_ok { type ifname . ether_addr; }
add chain bridge cnirs prerouting { type filter hook prerouting priority -300; policy accept; }
flush chain bridge cnirs prerouting
add rule bridge cnirs prerouting iifname @spoof_ports iifname . ether saddr != @spoof_ok drop
"#;

/// Number of rules the skeleton installs in `inet cnirs` (tests count them after concurrent
/// loads); `bridge cnirs` holds one more, the MAC spoof check.
pub const SKELETON_RULES: usize = 21;

/// The bridge-family table: frames from a pod port whose source MAC is not the pod's are
/// dropped (`macspoofchk`), one `spoof_ports` and one `spoof_ok` element per pod.
pub const BRIDGE_TABLE: &str = "bridge cnirs";

/// One element of one of our sets or maps. This is what the state files record and what the
/// batches add, delete and query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "set", rename_all = "snake_case")]
pub enum Elem {
    /// `managed_br { "br" }`
    ManagedBr {
        /// bridge
        bridge: IfName,
    },
    /// `same_br { "br" . "br" }`
    SameBr {
        /// bridge
        bridge: IfName,
    },
    /// `same_br { "iif" . "oif" }`: traffic between two devices of one network (the overlay's
    /// bridge and its VXLAN device) is the network's own.
    SamePair {
        /// input interface
        iif: IfName,
        /// output interface
        oif: IfName,
    },
    /// `internal_br { "br" }`
    InternalBr {
        /// bridge
        bridge: IfName,
    },
    /// `isolated_br { "br" }`
    IsolatedBr {
        /// bridge
        bridge: IfName,
    },
    /// `masq4 { subnet }` / `masq6 { subnet }` (always the network address).
    Masq {
        /// subnet
        subnet: IpNetwork,
    },
    /// `br_net4 { "br" . subnet }` / `br_net6`: the subnets living on a bridge. Hairpin
    /// (a pod reaching a published port of a pod on its own bridge, itself included) is
    /// masqueraded by `ct status dnat oifname . ip saddr @br_net4`: with br_netfilter that
    /// packet is bridged back at layer 2 and postrouting sees no input interface, so the
    /// test must rest on the source address and the output bridge.
    BrNet {
        /// bridge
        bridge: IfName,
        /// subnet (network address)
        subnet: IpNetwork,
    },
    /// `spoof_ports { "vethX" }` (bridge table): this port's source MACs are checked.
    SpoofPort {
        /// host end of the pod's veth
        port: IfName,
    },
    /// `spoof_ok { "vethX" . MAC }` (bridge table): the one MAC allowed from that port.
    SpoofOk {
        /// host end of the pod's veth
        port: IfName,
        /// the pod interface's MAC, `aa:bb:cc:dd:ee:ff`
        mac: String,
    },
    /// `vtep_ports { 4789 }`: a UDP port of our overlays, gated by `vtep4`/`vtep6`.
    VtepPort {
        /// the VXLAN UDP port
        port: u16,
    },
    /// `vtep4 { 10.240.0.1 }` / `vtep6 { .. }`: a member VTEP of the overlay cluster.
    Vtep {
        /// the member's underlay address
        addr: std::net::IpAddr,
    },
    /// `pm4 / pm4_any / pm6 / pm6_any { ... }`
    Port {
        /// the validated mapping
        mapping: PortMapping,
    },
}

impl Elem {
    /// The elements a bridge attachment needs.
    pub fn for_network(n: &NetworkElems) -> Vec<Elem> {
        let mut v = vec![
            Elem::ManagedBr {
                bridge: n.bridge.clone(),
            },
            Elem::SameBr {
                bridge: n.bridge.clone(),
            },
        ];
        if n.internal {
            v.push(Elem::InternalBr {
                bridge: n.bridge.clone(),
            });
        }
        for s in &n.masq {
            v.push(Elem::masq(*s));
        }
        for s in &n.subnets {
            let subnet = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
            let e = Elem::BrNet {
                bridge: n.bridge.clone(),
                subnet,
            };
            if !v.contains(&e) {
                v.push(e);
            }
        }
        v
    }

    /// The elements of a network whose bridge routes to `peers`, other devices of the same
    /// network (the overlay's VXLAN device): each peer is managed and sealed like the bridge,
    /// and traffic between the bridge and a peer, both ways, is the network's own.
    pub fn for_network_peers(n: &NetworkElems, peers: &[IfName]) -> Vec<Elem> {
        let mut v = Self::for_network(n);
        for p in peers {
            v.push(Elem::ManagedBr { bridge: p.clone() });
            v.push(Elem::SamePair {
                iif: n.bridge.clone(),
                oif: p.clone(),
            });
            v.push(Elem::SamePair {
                iif: p.clone(),
                oif: n.bridge.clone(),
            });
            if n.internal {
                v.push(Elem::InternalBr { bridge: p.clone() });
            }
        }
        v
    }

    /// A masquerade element, normalised to the network address (`10.1.2.3/24` -> `10.1.2.0/24`).
    pub fn masq(subnet: IpNetwork) -> Elem {
        // UNWRAP-free: the prefix comes from a valid network, so re-building cannot fail; fall
        // back to the input if it ever did.
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
        Elem::Masq { subnet }
    }

    /// The set or map holding this element.
    pub fn set_name(&self) -> &'static str {
        match self {
            Elem::ManagedBr { .. } => "managed_br",
            Elem::SameBr { .. } | Elem::SamePair { .. } => "same_br",
            Elem::InternalBr { .. } => "internal_br",
            Elem::IsolatedBr { .. } => "isolated_br",
            Elem::Masq {
                subnet: IpNetwork::V4(_),
            } => "masq4",
            Elem::Masq {
                subnet: IpNetwork::V6(_),
            } => "masq6",
            Elem::BrNet {
                subnet: IpNetwork::V4(_),
                ..
            } => "br_net4",
            Elem::BrNet {
                subnet: IpNetwork::V6(_),
                ..
            } => "br_net6",
            Elem::SpoofPort { .. } => "spoof_ports",
            Elem::SpoofOk { .. } => "spoof_ok",
            Elem::VtepPort { .. } => "vtep_ports",
            Elem::Vtep {
                addr: std::net::IpAddr::V4(_),
            } => "vtep4",
            Elem::Vtep {
                addr: std::net::IpAddr::V6(_),
            } => "vtep6",
            Elem::Port { mapping } => match (mapping.container_ip.is_ipv6(), mapping.host_ip) {
                (false, Some(_)) => "pm4",
                (false, None) => "pm4_any",
                (true, Some(_)) => "pm6",
                (true, None) => "pm6_any",
            },
        }
    }

    /// The table holding this element's set.
    pub fn table(&self) -> &'static str {
        match self {
            Elem::SpoofPort { .. } | Elem::SpoofOk { .. } => BRIDGE_TABLE,
            _ => TABLE,
        }
    }

    /// A MAC spoof check for a pod port: the port's elements, or `None` for a MAC that is not
    /// six hex pairs (it never reaches nft text).
    pub fn spoof_check(port: &IfName, mac: &str) -> Option<[Elem; 2]> {
        let parts: Vec<&str> = mac.split(':').collect();
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        ok.then(|| {
            [
                Elem::SpoofPort { port: port.clone() },
                Elem::SpoofOk {
                    port: port.clone(),
                    mac: mac.to_ascii_lowercase(),
                },
            ]
        })
    }

    /// The key as nft text: `"br0"`, `"br0" . "br0"`, `10.1.0.0/24`, `10.0.0.1 . tcp . 8080`.
    pub fn key_text(&self) -> String {
        match self {
            Elem::ManagedBr { bridge }
            | Elem::InternalBr { bridge }
            | Elem::IsolatedBr { bridge } => format!("\"{bridge}\""),
            Elem::SameBr { bridge } => format!("\"{bridge}\" . \"{bridge}\""),
            Elem::SamePair { iif, oif } => format!("\"{iif}\" . \"{oif}\""),
            Elem::Masq { subnet } => subnet.to_string(),
            Elem::BrNet { bridge, subnet } => format!("\"{bridge}\" . {subnet}"),
            Elem::SpoofPort { port } => format!("\"{port}\""),
            Elem::SpoofOk { port, mac } => format!("\"{port}\" . {mac}"),
            Elem::VtepPort { port } => port.to_string(),
            Elem::Vtep { addr } => addr.to_string(),
            Elem::Port { mapping } => match mapping.host_ip {
                Some(ip) => format!(
                    "{ip} . {} . {}",
                    mapping.protocol.as_str(),
                    mapping.host_port
                ),
                None => format!("{} . {}", mapping.protocol.as_str(), mapping.host_port),
            },
        }
    }

    /// The key to ask `get element` with. For an interval (a subnet) that is its network
    /// address: nft 1.0.6 fails `get element` of an interval that has an adjacent one beside
    /// it (10.4.0.0/24 next to 10.4.1.0/24, as nerdctl numbers its networks), while a single
    /// address finds the interval that holds it.
    pub fn query_key_text(&self) -> String {
        match self {
            Elem::Masq { subnet } => subnet.network().to_string(),
            Elem::BrNet { bridge, subnet } => format!("\"{bridge}\" . {}", subnet.network()),
            _ => self.key_text(),
        }
    }

    /// The full element as nft text (key, and ` : value` for map elements).
    pub fn elem_text(&self) -> String {
        match self {
            Elem::Port { mapping } => format!(
                "{} : {} . {}",
                self.key_text(),
                mapping.container_ip,
                mapping.container_port
            ),
            _ => self.key_text(),
        }
    }

    /// The family of addresses in the element, if any.
    pub fn is_v6(&self) -> Option<bool> {
        match self {
            Elem::Masq { subnet } | Elem::BrNet { subnet, .. } => Some(subnet.is_ipv6()),
            Elem::Port { mapping } => Some(mapping.container_ip.is_ipv6()),
            Elem::Vtep { addr } => Some(addr.is_ipv6()),
            _ => None,
        }
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{ {} }}", self.set_name(), self.elem_text())
    }
}

/// One nft transaction as text, built line by line. Pure: nothing runs until a backend takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    text: String,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// `nft add element inet cnirs SET { ELEM }` for each element (a no-op for an element that
    /// is already there with the same value).
    pub fn add(&mut self, elems: &[Elem]) -> &mut Self {
        for e in elems {
            self.line(&format!("add element {} {e}", e.table()));
        }
        self
    }

    /// Delete `elems`, tolerating elements that are not there, in the same transaction:
    /// nft 1.0.6 has no `destroy`, and `delete element` of a missing element fails the whole
    /// batch; `add` then `delete` of the same element always succeeds (the add is a no-op if the
    /// element exists, else it creates what the delete removes) and is atomic.
    pub fn remove(&mut self, elems: &[Elem]) -> &mut Self {
        for e in elems {
            let one = std::slice::from_ref(e);
            self.add(one).delete(one);
        }
        self
    }

    /// Strict delete (fails if an element is missing): `nft delete element inet cnirs SET { KEY }`.
    pub fn delete(&mut self, elems: &[Elem]) -> &mut Self {
        for e in elems {
            self.line(&format!(
                "delete element {} {} {{ {} }}",
                e.table(),
                e.set_name(),
                e.key_text()
            ));
        }
        self
    }

    /// `nft get element inet cnirs SET { KEY }`: fails if the element is missing. An interval
    /// is asked by its network address (see [`Elem::query_key_text`]) and named in a trailing
    /// comment (`# interval 10.1.0.0/24`), which nft skips and the in-process reader
    /// (`nlbatch`) uses to demand that exact subnet.
    pub fn get(&mut self, elems: &[Elem]) -> &mut Self {
        for e in elems {
            let comment = match e {
                Elem::Masq { .. } | Elem::BrNet { .. } => {
                    format!("{}{}", crate::nlbatch::INTERVAL_COMMENT, e.key_text())
                }
                _ => String::new(),
            };
            self.line(&format!(
                "get element {} {} {{ {} }}{comment}",
                e.table(),
                e.set_name(),
                e.query_key_text()
            ));
        }
        self
    }

    /// Prepend-able skeleton: the whole [`SKELETON`].
    pub fn skeleton(&mut self) -> &mut Self {
        self.text.push_str(SKELETON);
        self
    }

    fn line(&mut self, l: &str) {
        self.text.push_str(l);
        self.text.push('\n');
    }

    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The script for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }
}
