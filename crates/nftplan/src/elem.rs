//! The elements of our sets and maps, as typed values: what the state files record and what
//! batches add, delete and ask for. [`Elem::parts`] maps each to its set in the schema and
//! the values of its key and data; text and netlink encoding are derived from those.

use std::{fmt, net::IpAddr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::{
    schema::{self, concat_text, MacAddr, SetDef, Value},
    types::{IfName, NetworkElems, PortMapping, Protocol},
};

/// Family and name of our main table.
pub const TABLE: &str = schema::Family::Inet.table();

/// The bridge-family table: frames from a pod port whose source MAC is not the pod's are
/// dropped (`macspoofchk`), one `spoof_ports` and one `spoof_ok` element per pod.
pub const BRIDGE_TABLE: &str = schema::Family::Bridge.table();

/// Number of rules the skeleton installs in `inet cnirs` (tests count them after concurrent
/// loads); `bridge cnirs` holds one more, the MAC spoof check.
pub const SKELETON_RULES: usize = crate::skeleton::rule_count(schema::Family::Inet);

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
        /// the pod interface's MAC (recorded as `aa:bb:cc:dd:ee:ff`)
        mac: MacAddr,
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
    /// `np_iiso4 / np_eiso4 / .. { pod }`: NetworkPolicy isolates this pod address for
    /// ingress (`np_iiso*`) or egress (`np_eiso*`).
    NpIsolated {
        /// ingress or egress
        dir: NpDir,
        /// the pod's address
        pod: IpAddr,
    },
    /// `np_in_any4 { pod . peer-range }` / `np_in4 { pod . peer-range . proto . port-range }`
    /// (and `np_out*` for egress, `*6`): the isolated pod may be reached from (ingress) or
    /// reach (egress) the peer range, on any protocol or on those ports. Elements of one set
    /// never overlap (the compiler makes them disjoint).
    NpAllow {
        /// ingress or egress
        dir: NpDir,
        /// the isolated pod's address
        pod: IpAddr,
        /// first address of the peer range (same family as `pod`)
        first: IpAddr,
        /// last address of the peer range
        last: IpAddr,
        /// protocol and port range (on the destination); `None`: every protocol and port
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<NpPorts>,
    },
    /// `np_in_pp4 { pod . peer }` / `np_in_pr4 { pod . peer . proto . port-range }` (and
    /// `np_out_*`, `*6`): the isolated pod may be reached from (reach) one peer POD address.
    /// Pod peers are kept apart from the address ranges of `ipBlock`s (never merged with
    /// their neighbours), so a pod's ADD adds the elements where it is a peer and changes no
    /// other: `pod . peer` and `pod . peer . proto . port` (`np_*_one*`) are hash sets
    /// (O(1) insert); only a port range needs pipapo (`np_*_pr*`).
    NpPair {
        /// ingress or egress
        dir: NpDir,
        /// the isolated pod's address
        pod: IpAddr,
        /// the peer pod's address (same family as `pod`)
        peer: IpAddr,
        /// protocol and port range; `None`: every protocol and port
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<NpPorts>,
    },
}

/// The direction a NetworkPolicy element applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NpDir {
    /// traffic to the pod
    Ingress,
    /// traffic from the pod
    Egress,
}

/// A protocol and a destination port range of an [`Elem::NpAllow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NpPorts {
    /// tcp, udp or sctp
    pub protocol: Protocol,
    /// first port
    pub first: u16,
    /// last port (>= first)
    pub last: u16,
}

/// An element as its set and the values of its key and (maps) data, one per field of the
/// set's [`SetDef::key`] and [`SetDef::data`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The set or map holding the element.
    pub set: &'static SetDef,
    /// Key values.
    pub key: Vec<Value>,
    /// Data values (maps only).
    pub data: Vec<Value>,
}

// The sets elements go to, looked up in the schema when the crate is built (a name that is
// not in `schema::SETS` fails the build).
const MANAGED_BR: &SetDef = schema::def("managed_br");
const SAME_BR: &SetDef = schema::def("same_br");
const INTERNAL_BR: &SetDef = schema::def("internal_br");
const ISOLATED_BR: &SetDef = schema::def("isolated_br");
const MASQ4: &SetDef = schema::def("masq4");
const MASQ6: &SetDef = schema::def("masq6");
const BR_NET4: &SetDef = schema::def("br_net4");
const BR_NET6: &SetDef = schema::def("br_net6");
const SPOOF_PORTS: &SetDef = schema::def("spoof_ports");
const SPOOF_OK: &SetDef = schema::def("spoof_ok");
const PM4: &SetDef = schema::def("pm4");
const PM4_ANY: &SetDef = schema::def("pm4_any");
const PM6: &SetDef = schema::def("pm6");
const PM6_ANY: &SetDef = schema::def("pm6_any");
const VTEP_PORTS: &SetDef = schema::def("vtep_ports");
const VTEP4: &SetDef = schema::def("vtep4");
const VTEP6: &SetDef = schema::def("vtep6");
const NP_IISO4: &SetDef = schema::def("np_iiso4");
const NP_IISO6: &SetDef = schema::def("np_iiso6");
const NP_EISO4: &SetDef = schema::def("np_eiso4");
const NP_EISO6: &SetDef = schema::def("np_eiso6");
const NP_IN_ANY4: &SetDef = schema::def("np_in_any4");
const NP_IN_ANY6: &SetDef = schema::def("np_in_any6");
const NP_IN4: &SetDef = schema::def("np_in4");
const NP_IN6: &SetDef = schema::def("np_in6");
const NP_OUT_ANY4: &SetDef = schema::def("np_out_any4");
const NP_OUT_ANY6: &SetDef = schema::def("np_out_any6");
const NP_OUT4: &SetDef = schema::def("np_out4");
const NP_OUT6: &SetDef = schema::def("np_out6");
const NP_IN_ONE4: &SetDef = schema::def("np_in_one4");
const NP_IN_ONE6: &SetDef = schema::def("np_in_one6");
const NP_OUT_ONE4: &SetDef = schema::def("np_out_one4");
const NP_OUT_ONE6: &SetDef = schema::def("np_out_one6");
const NP_IN_PP4: &SetDef = schema::def("np_in_pp4");
const NP_IN_PP6: &SetDef = schema::def("np_in_pp6");
const NP_OUT_PP4: &SetDef = schema::def("np_out_pp4");
const NP_OUT_PP6: &SetDef = schema::def("np_out_pp6");
const NP_IN_PR4: &SetDef = schema::def("np_in_pr4");
const NP_IN_PR6: &SetDef = schema::def("np_in_pr6");
const NP_OUT_PR4: &SetDef = schema::def("np_out_pr4");
const NP_OUT_PR6: &SetDef = schema::def("np_out_pr6");

impl Elem {
    /// The element's set and values: the one place that says where a kind of element goes
    /// and what its key is. Everything else (text, netlink encoding, the fake) follows.
    pub fn parts(&self) -> Parts {
        let ifname = |n: &IfName| Value::Ifname(n.clone());
        let (set, key, data) = match self {
            Elem::ManagedBr { bridge } => (MANAGED_BR, vec![ifname(bridge)], vec![]),
            Elem::SameBr { bridge } => (SAME_BR, vec![ifname(bridge), ifname(bridge)], vec![]),
            Elem::SamePair { iif, oif } => (SAME_BR, vec![ifname(iif), ifname(oif)], vec![]),
            Elem::InternalBr { bridge } => (INTERNAL_BR, vec![ifname(bridge)], vec![]),
            Elem::IsolatedBr { bridge } => (ISOLATED_BR, vec![ifname(bridge)], vec![]),
            Elem::Masq { subnet } => {
                let set = if subnet.is_ipv4() { MASQ4 } else { MASQ6 };
                (set, vec![Value::Net(*subnet)], vec![])
            }
            Elem::BrNet { bridge, subnet } => {
                let set = if subnet.is_ipv4() { BR_NET4 } else { BR_NET6 };
                (set, vec![ifname(bridge), Value::Net(*subnet)], vec![])
            }
            Elem::SpoofPort { port } => (SPOOF_PORTS, vec![ifname(port)], vec![]),
            Elem::SpoofOk { port, mac } => {
                (SPOOF_OK, vec![ifname(port), Value::Ether(*mac)], vec![])
            }
            Elem::VtepPort { port } => (VTEP_PORTS, vec![Value::Port(*port)], vec![]),
            Elem::Vtep { addr } => {
                let set = if addr.is_ipv4() { VTEP4 } else { VTEP6 };
                (set, vec![Value::Addr(*addr)], vec![])
            }
            Elem::Port { mapping: m } => {
                let set = match (m.container_ip.is_ipv6(), m.host_ip) {
                    (false, Some(_)) => PM4,
                    (false, None) => PM4_ANY,
                    (true, Some(_)) => PM6,
                    (true, None) => PM6_ANY,
                };
                let mut key: Vec<Value> = m.host_ip.map(Value::Addr).into_iter().collect();
                key.extend([Value::Proto(m.protocol), Value::Port(m.host_port)]);
                let data = vec![Value::Addr(m.container_ip), Value::Port(m.container_port)];
                (set, key, data)
            }
            Elem::NpIsolated { dir, pod } => {
                let set = match (dir, pod.is_ipv6()) {
                    (NpDir::Ingress, false) => NP_IISO4,
                    (NpDir::Ingress, true) => NP_IISO6,
                    (NpDir::Egress, false) => NP_EISO4,
                    (NpDir::Egress, true) => NP_EISO6,
                };
                (set, vec![Value::Addr(*pod)], vec![])
            }
            Elem::NpAllow {
                dir,
                pod,
                first,
                last,
                ports,
            } => {
                let v6 = pod.is_ipv6();
                let set = match (dir, ports.is_some(), v6) {
                    (NpDir::Ingress, false, false) => NP_IN_ANY4,
                    (NpDir::Ingress, false, true) => NP_IN_ANY6,
                    (NpDir::Ingress, true, false) => NP_IN4,
                    (NpDir::Ingress, true, true) => NP_IN6,
                    (NpDir::Egress, false, false) => NP_OUT_ANY4,
                    (NpDir::Egress, false, true) => NP_OUT_ANY6,
                    (NpDir::Egress, true, false) => NP_OUT4,
                    (NpDir::Egress, true, true) => NP_OUT6,
                };
                let mut key = vec![Value::Addr(*pod), Value::AddrRange(*first, *last)];
                if let Some(p) = ports {
                    key.extend([Value::Proto(p.protocol), Value::PortRange(p.first, p.last)]);
                }
                (set, key, vec![])
            }
            Elem::NpPair {
                dir,
                pod,
                peer,
                ports,
            } => {
                // One port: the hash sets `np_*_one*`.
                if let Some(p) = ports.filter(|p| p.first == p.last) {
                    let set = match (dir, pod.is_ipv6()) {
                        (NpDir::Ingress, false) => NP_IN_ONE4,
                        (NpDir::Ingress, true) => NP_IN_ONE6,
                        (NpDir::Egress, false) => NP_OUT_ONE4,
                        (NpDir::Egress, true) => NP_OUT_ONE6,
                    };
                    let key = vec![
                        Value::Addr(*pod),
                        Value::Addr(*peer),
                        Value::Proto(p.protocol),
                        Value::Port(p.first),
                    ];
                    return Parts {
                        set,
                        key,
                        data: vec![],
                    };
                }
                let set = match (dir, ports.is_some(), pod.is_ipv6()) {
                    (NpDir::Ingress, false, false) => NP_IN_PP4,
                    (NpDir::Ingress, false, true) => NP_IN_PP6,
                    (NpDir::Ingress, true, false) => NP_IN_PR4,
                    (NpDir::Ingress, true, true) => NP_IN_PR6,
                    (NpDir::Egress, false, false) => NP_OUT_PP4,
                    (NpDir::Egress, false, true) => NP_OUT_PP6,
                    (NpDir::Egress, true, false) => NP_OUT_PR4,
                    (NpDir::Egress, true, true) => NP_OUT_PR6,
                };
                let key = match ports {
                    None => vec![Value::Addr(*pod), Value::Addr(*peer)],
                    Some(p) => vec![
                        Value::Addr(*pod),
                        Value::AddrRange(*peer, *peer),
                        Value::Proto(p.protocol),
                        Value::PortRange(p.first, p.last),
                    ],
                };
                (set, key, vec![])
            }
        };
        Parts { set, key, data }
    }

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
            let e = Elem::BrNet {
                bridge: n.bridge.clone(),
                subnet: network_of(*s),
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
        Elem::Masq {
            subnet: network_of(subnet),
        }
    }

    /// A MAC spoof check for a pod port: the port's elements, or `None` for a MAC that is not
    /// six hex pairs separated by `:`.
    pub fn spoof_check(port: &IfName, mac: &str) -> Option<[Elem; 2]> {
        let parts: Vec<&str> = mac.split(':').collect();
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        let mac: MacAddr = mac.parse().ok().filter(|_| ok)?;
        Some([
            Elem::SpoofPort { port: port.clone() },
            Elem::SpoofOk {
                port: port.clone(),
                mac,
            },
        ])
    }

    /// A NetworkPolicy element (`np_*` sets).
    pub fn is_netpol(&self) -> bool {
        matches!(
            self,
            Elem::NpIsolated { .. } | Elem::NpAllow { .. } | Elem::NpPair { .. }
        )
    }

    /// The set or map holding this element.
    pub fn set_name(&self) -> &'static str {
        self.parts().set.name
    }

    /// The table holding this element's set (`inet cnirs`, `bridge cnirs`).
    pub fn table(&self) -> &'static str {
        self.parts().set.family.table()
    }

    /// The key as nft text: `"br0"`, `"br0" . "br0"`, `10.1.0.0/24`, `10.0.0.1 . tcp . 8080`.
    pub fn key_text(&self) -> String {
        concat_text(&self.parts().key, Value::to_string)
    }

    /// The key to ask `get element` with: an interval by its network address (nft 1.0.6
    /// fails `get element` of an interval that has an adjacent one beside it, while a single
    /// address finds the interval that holds it).
    pub fn query_key_text(&self) -> String {
        concat_text(&self.parts().key, Value::query_text)
    }

    /// The full element as nft text (key, and ` : value` for map elements).
    pub fn elem_text(&self) -> String {
        let p = self.parts();
        let key = concat_text(&p.key, Value::to_string);
        if p.data.is_empty() {
            return key;
        }
        format!("{key} : {}", concat_text(&p.data, Value::to_string))
    }

    /// The family of addresses in the element, if any.
    pub fn is_v6(&self) -> Option<bool> {
        let p = self.parts();
        p.key.iter().chain(&p.data).find_map(|v| match v {
            Value::Addr(a) => Some(a.is_ipv6()),
            Value::Net(n) => Some(n.is_ipv6()),
            Value::AddrRange(a, _) => Some(a.is_ipv6()),
            _ => None,
        })
    }
}

/// `10.1.2.3/24` -> `10.1.2.0/24`.
fn network_of(subnet: IpNetwork) -> IpNetwork {
    netbase::subnet(subnet)
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{ {} }}", self.set_name(), self.elem_text())
    }
}
