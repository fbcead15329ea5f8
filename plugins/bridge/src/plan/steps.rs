//! The parts of [`super::build_shaped`]: the pod's addresses and routes, the bridge's ops, the
//! pod's ops and the firewall's needs. Pure.

use std::net::IpAddr;

use cni_core::{CniResult, IfName, IpConfig, Route};
use ipnetwork::IpNetwork;
use netops::{Ns, Op, RouteSpec, SysctlKey};
use nftplan::Attachment;

use super::{gateway_for, subnet_of, FirewallNeeds, Ids, KernelView, Shape};
use crate::{
    config::{BridgeSpec, Mode},
    error::BridgeError,
};

/// The pod's prefix for an IPAM address under `shape`.
fn pod_address(addr: IpNetwork, shape: &Shape) -> IpNetwork {
    let Some((p4, p6)) = shape.pod_prefix else {
        return addr;
    };
    let p = if addr.is_ipv4() { p4 } else { p6 };
    IpNetwork::new(addr.ip(), addr.prefix().max(p)).unwrap_or(addr)
}

/// `0.0.0.0/0` or `::/0`.
fn default_dst(v4: bool) -> Option<IpNetwork> {
    let ip = if v4 {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    IpNetwork::new(ip, 0).ok()
}

fn is_link_local_v6(a: &IpNetwork) -> bool {
    matches!(a.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The pod's addresses (for the result) and the bridge's gateway addresses.
pub(super) fn addresses(
    spec: &BridgeSpec,
    ipam: &CniResult,
    shape: &Shape,
) -> Result<(Vec<IpConfig>, Vec<IpNetwork>), BridgeError> {
    // Addresses, gateways, routes.
    let mut ips = Vec::new();
    let mut bridge_addrs: Vec<IpNetwork> = Vec::new();
    for ip in &ipam.ips {
        let gw = if spec.is_gateway {
            Some(gateway_for(ip))
        } else {
            ip.gateway
        };
        if gw == Some(ip.address.ip()) {
            return Err(BridgeError::PodAddressIsGateway(ip.address));
        }
        if let (true, Some(g)) = (spec.is_gateway, gw) {
            let a =
                IpNetwork::new(g, ip.address.prefix()).map_err(|_| BridgeError::BadGateway {
                    gw: g,
                    prefix: ip.address.prefix(),
                })?;
            if !bridge_addrs.contains(&a) {
                bridge_addrs.push(a);
            }
        }
        ips.push(IpConfig {
            address: pod_address(ip.address, shape),
            gateway: gw,
            interface: Some(2),
        });
    }
    Ok((ips, bridge_addrs))
}

/// The pod's routes: IPAM's (a default route dropped on an internal network), the subnets
/// through the gateway when shaped so, the default routes of `isDefaultGateway`; a default
/// route the pod already has through another network is kept instead.
pub(super) fn routes(
    spec: &BridgeSpec,
    ipam: &CniResult,
    view: &KernelView,
    shape: &Shape,
    ips: &[IpConfig],
) -> Vec<Route> {
    let gw_of = |v4: bool| {
        ips.iter()
            .find(|i| i.address.is_ipv4() == v4)
            .and_then(|i| i.gateway)
    };
    let mut routes: Vec<Route> = Vec::new();
    // IPAM routes; a route without a gateway goes via the gateway of its family (reference
    // ipam.ConfigureIface).
    for r in &ipam.routes {
        if spec.mode == Mode::Internal && r.dst.prefix() == 0 {
            log::info!(
                "internal network: dropping default route {} from IPAM",
                r.dst
            );
            continue;
        }
        let mut route = r.clone();
        if route.gw.is_none() {
            route.gw = gw_of(r.dst.is_ipv4());
        }
        routes.push(route);
    }
    if shape.route_subnets {
        for ip in &ipam.ips {
            let dst = subnet_of(&ip.address);
            let Some(gw) = gw_of(dst.is_ipv4()) else {
                continue;
            };
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    if spec.is_default_gateway {
        for v4 in [true, false] {
            let Some(gw) = gw_of(v4) else { continue };
            let Some(dst) = default_dst(v4) else { continue };
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    // A pod on two networks: the first network's default gateway wins, as in Docker (the
    // reference fails the second ADD here).
    routes.retain(|r| {
        let taken = r.dst.prefix() == 0
            && if r.dst.is_ipv4() {
                view.pod_default_v4
            } else {
                view.pod_default_v6
            };
        if taken {
            log::info!(
                "pod already has a default route; keeping it instead of {}",
                r.dst
            );
        }
        !taken
    });

    routes
}

/// The bridge: created or brought up, its MAC, its seal, promisc, its gateway addresses.
pub(super) fn bridge(
    spec: &BridgeSpec,
    ipam: &CniResult,
    view: &KernelView,
    shape: &Shape,
    bridge_addrs: &[IpNetwork],
    ops: &mut Vec<Op>,
) -> Result<(), BridgeError> {
    let br = &spec.bridge;
    let mut net = |op| ops.push(op);
    // The bridge.
    match &view.bridge {
        None => {
            net(Op::CreateBridge {
                name: br.clone(),
                mtu: spec.mtu,
                mcast_snooping: spec.mcast_snooping,
            });
            if shape.bridge_mac.is_none() {
                net(Op::PinMac { link: br.clone() });
            }
        }
        Some(b) if !b.up => net(Op::SetUp {
            ns: Ns::Host,
            link: br.clone(),
        }),
        Some(_) => {}
    }
    if let Some(mac) = shape.bridge_mac {
        net(Op::SetMac {
            link: br.clone(),
            mac,
        });
    }
    // The kernel-level seal of an internal network (policy rules, independent of nftables),
    // before any pod is plugged in; a new non-internal bridge drops a stale one.
    // The seal covers the pod's subnets too: nothing is routed into them but from the host.
    let mut subnets: Vec<IpNetwork> = Vec::new();
    for ip in &ipam.ips {
        let a = ip.address;
        let n = netbase::subnet(a);
        if !subnets.contains(&n) {
            subnets.push(n);
        }
    }
    if spec.mode == Mode::Internal {
        net(Op::SealBridge {
            name: br.clone(),
            subnets,
        });
    } else if view.bridge.is_none() {
        // Only the bridge's own rules: subnet rules of the same subnet may belong to a live
        // internal network elsewhere, and a stale one fails closed.
        net(Op::UnsealBridge {
            name: br.clone(),
            subnets: Vec::new(),
        });
    }
    if spec.promisc && !view.bridge.as_ref().is_some_and(|b| b.promisc) {
        net(Op::SetPromisc {
            link: br.clone(),
            on: true,
        });
    }
    // Gateway addresses, with the reference's `forceAddress` semantics: one IPv4 address per
    // bridge; IPv6 addresses may coexist unless their subnets overlap.
    let have_all: &[IpNetwork] = view.bridge.as_ref().map_or(&[], |b| &b.addrs);
    for want in bridge_addrs {
        if have_all.contains(want) {
            continue;
        }
        for a in have_all.iter().filter(|a| a.is_ipv4() == want.is_ipv4()) {
            if is_link_local_v6(a) {
                continue;
            }
            let clash = want.is_ipv4() || a.contains(want.ip()) || want.contains(a.ip());
            if !clash {
                continue;
            }
            if !spec.force_address {
                return Err(BridgeError::BridgeAddressTaken {
                    bridge: br.clone(),
                    have: *a,
                    want: *want,
                });
            }
            net(Op::DelAddr {
                ns: Ns::Host,
                link: br.clone(),
                cidr: *a,
            });
        }
        net(Op::AddAddr {
            ns: Ns::Host,
            link: br.clone(),
            cidr: *want,
            dad: false,
        });
    }

    Ok(())
}

/// The pod's veth and what goes on it: addresses, routes, forwarding.
#[allow(clippy::too_many_arguments)]
pub(super) fn pod(
    spec: &BridgeSpec,
    ids: &Ids,
    view: &KernelView,
    shape: &Shape,
    host_veth: &IfName,
    ips: &[IpConfig],
    routes: &[Route],
    ops: &mut Vec<Op>,
) -> Result<(), BridgeError> {
    let br = &spec.bridge;
    let pod_if = &ids.ifname;
    let mut net = |op| ops.push(op);
    // The veth, its peer created in the pod under its final name.
    net(Op::CreateVeth {
        host: host_veth.clone(),
        peer: pod_if.clone(),
        netns: ids.netns.clone(),
        mtu: spec.mtu,
        peer_mac: spec.mac,
    });
    net(Op::NoIpv6 {
        ns: Ns::Host,
        link: host_veth.clone(),
    });
    // Before the host end comes up (the carrier): IPAM gave the pod only IPv4 addresses, so
    // its interface gets no IPv6 address of its own either, as Docker does on an IPv4-only
    // network (netops `Op::NoIpv6`). Without IPAM (a plain L2 network) IPv6 stays, for an
    // outside router's advertisements. A tuning plugin after this one can turn it back on
    // (`net.ipv6.conf.IFNAME.disable_ipv6: "0"`).
    if !ips.is_empty() && !ips.iter().any(|i| i.address.is_ipv6()) {
        net(Op::NoIpv6 {
            ns: Ns::Pod,
            link: pod_if.clone(),
        });
    }
    net(Op::SetMaster {
        link: host_veth.clone(),
        bridge: br.clone(),
    });
    if spec.hairpin || spec.port_isolation {
        net(Op::SetBridgePort {
            link: host_veth.clone(),
            hairpin: spec.hairpin.then_some(true),
            isolated: spec.port_isolation.then_some(true),
        });
    }
    if !view.pod_lo_up {
        net(Op::SetUp {
            ns: Ns::Pod,
            link: IfName::new("lo").map_err(netops::NetopsError::from)?,
        });
    }
    for ip in ips {
        net(Op::AddAddr {
            ns: Ns::Pod,
            link: pod_if.clone(),
            cidr: ip.address,
            dad: spec.enable_dad,
        });
    }
    for r in routes {
        // A gateway outside every prefix of the pod (the overlay's: the pod has its block,
        // the gateway is the range's) is reached on the link.
        let onlink = shape.pod_prefix.is_some()
            && r.gw
                .is_some_and(|g| !ips.iter().any(|i| i.address.contains(g)));
        net(Op::AddRoute {
            ns: Ns::Pod,
            link: pod_if.clone(),
            route: RouteSpec {
                dst: r.dst,
                gw: r.gw,
                priority: r.priority,
                onlink,
            },
        });
    }
    let has = |v4: bool| ips.iter().any(|i| i.address.is_ipv4() == v4);
    for (v4, key, already) in [
        (true, "net.ipv4.ip_forward", view.forward_v4),
        (false, "net.ipv6.conf.all.forwarding", view.forward_v6),
    ] {
        if spec.is_gateway && has(v4) && !already {
            net(Op::SetSysctl {
                key: SysctlKey::parse(key)?,
                value: "1".into(),
            });
        }
    }

    Ok(())
}

/// What the network needs from the firewall table for this attachment.
pub(super) fn firewall_needs(
    spec: &BridgeSpec,
    ids: &Ids,
    ipam: &CniResult,
    shape: &Shape,
    host_veth: &IfName,
    ips: &[IpConfig],
) -> Result<FirewallNeeds, BridgeError> {
    let br = &spec.bridge;
    let mut subnets: Vec<IpNetwork> = ipam.ips.iter().map(|i| subnet_of(&i.address)).collect();
    subnets.dedup();
    let attachment = Attachment::new(&ids.network, &ids.container_id, ids.ifname.as_str())?;
    Ok(FirewallNeeds {
        attachment,
        bridge: br.clone(),
        masq: if spec.ip_masq {
            subnets.clone()
        } else {
            Vec::new()
        },
        subnets,
        internal: spec.mode == Mode::Internal,
        spoof_port: spec.macspoofchk.then(|| host_veth.clone()),
        pod_ips: ips.iter().map(|i| i.address).collect(),
        host_veth: host_veth.clone(),
        peers: shape.peers.clone(),
    })
}
