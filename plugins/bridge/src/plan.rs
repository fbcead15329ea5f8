//! The pure step of ADD: from the validated spec, IPAM's answer and what the kernel reported
//! (read before planning, [`KernelView`]) to a list of [`Step`]s as values, printed as the `ip`
//! commands they match ([`Plan::text`], golden-tested), and the CNI result once the kernel
//! told us the MACs ([`Plan::result`]).
//!
//! An overlay network is this plan shaped by its caller ([`Shape`]: the bridge's MAC, the pod's
//! narrower on-link prefix, routes through the gateway, the network's own host ops and the
//! devices the bridge routes to): [`build_shaped`] gives it, [`build`] is the bridge's own.

use std::{net::IpAddr, path::PathBuf};

use cni_core::{CniResult, IfName, Interface, IpConfig, MacAddr, Route};
use ipnetwork::IpNetwork;
use netops::{Ns, Op, Reversible, RouteSpec, SysctlKey};
use nftplan::Attachment;

use crate::{
    config::{BridgeSpec, Mode},
    error::BridgeError,
};

/// Who is attaching: the key DEL needs (network, container id, ifname) and the pod netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub network: String,
    pub container_id: String,
    pub ifname: IfName,
    pub netns: PathBuf,
}

/// The bridge as the kernel reported it before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeView {
    /// `IFLA_INFO_KIND`; anything but "bridge" is refused.
    pub kind: Option<String>,
    pub up: bool,
    pub promisc: bool,
    /// Every address on it (link-local IPv6 included).
    pub addrs: Vec<IpNetwork>,
}

/// What the plan depends on in the kernel, read before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// `None`: no link of that name on the host.
    pub bridge: Option<BridgeView>,
    /// A link named `CNI_IFNAME` already exists in the pod.
    pub pod_has_ifname: bool,
    pub pod_lo_up: bool,
    /// The pod already has a default route of that family (through another network).
    pub pod_default_v4: bool,
    pub pod_default_v6: bool,
    /// `net.ipv4.ip_forward` / `net.ipv6.conf.all.forwarding` are already 1.
    pub forward_v4: bool,
    pub forward_v6: bool,
}

/// What the network needs from the firewall table, per network (never per pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallNeeds {
    pub attachment: Attachment,
    pub bridge: IfName,
    /// Subnets to masquerade when leaving the host (`ipMasq`).
    pub masq: Vec<IpNetwork>,
    /// Every subnet of the attachment (hairpin masquerade on this bridge).
    pub subnets: Vec<IpNetwork>,
    pub internal: bool,
    /// `macspoofchk`: the host port whose frames must carry the pod interface's MAC (read
    /// from the kernel when the step runs, unless the runtime asked for one).
    pub spoof_port: Option<IfName>,
    /// Recorded with the attachment for `cnirs inspect`: the pod's addresses and host veth.
    pub pod_ips: Vec<IpNetwork>,
    pub host_veth: IfName,
    /// Other devices of the network the bridge routes to (the overlay's VXLAN device): the
    /// firewall treats them as part of the network.
    pub peers: Vec<IfName>,
}

/// What a caller that builds on this plan (the overlay) changes in it; the default is the
/// bridge plugin's own plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// The bridge's MAC (the overlay's anycast gateway MAC) instead of pinning its own.
    pub bridge_mac: Option<MacAddr>,
    /// The longest on-link prefix a pod address gets, (IPv4, IPv6): a pod's prefix is the
    /// longer of this and the IPAM's (the overlay: its node's block). The bridge keeps the
    /// IPAM's prefix for its gateway address, and the pod's routes reach the gateway `onlink`.
    pub pod_prefix: Option<(u8, u8)>,
    /// Route each IPAM subnet via the gateway in the pod (an overlay pod without
    /// isDefaultGateway reaches the rest of its range through its host).
    pub route_subnets: bool,
    /// The caller's host ops for the network, after the bridge is set up and before the pod's
    /// veth.
    pub host_ops: Vec<Op>,
    /// Devices of the network the bridge routes to ([`FirewallNeeds::peers`]).
    pub peers: Vec<IfName>,
}

/// One step of an attachment: kernel work, or the firewall elements (always last, so nothing
/// after it can fail and leave elements behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Net(Op),
    AttachFirewall(FirewallNeeds),
    DetachFirewall(Attachment),
}

impl Reversible for Step {
    fn inverse(&self) -> Option<Step> {
        match self {
            Step::Net(op) => op.inverse().map(Step::Net),
            Step::AttachFirewall(n) => Some(Step::DetachFirewall(n.attachment.clone())),
            Step::DetachFirewall(_) => None,
        }
    }
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Step {
    /// The command this step matches (`ip ...`, `sysctl ...`, or our nft elements).
    pub fn command(&self, pod_netns: &str) -> String {
        match self {
            Step::Net(op) => op.command(pod_netns),
            Step::AttachFirewall(n) => {
                let mut s = format!("nft: attach {} to bridge {}", n.attachment, n.bridge);
                if n.internal {
                    s += " internal";
                }
                if !n.subnets.is_empty() {
                    s += &format!(" subnets {{ {} }}", join(&n.subnets));
                }
                if !n.masq.is_empty() {
                    s += &format!(" masq {{ {} }}", join(&n.masq));
                }
                if let Some(p) = &n.spoof_port {
                    s += &format!(" macspoofchk {p}");
                }
                s
            }
            Step::DetachFirewall(a) => format!("nft: detach {a}"),
        }
    }
}

/// The attachment as values: the steps to run and what the result will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ids: Ids,
    pub bridge: IfName,
    /// Host end of the veth: derived from (network, container, ifname), so DEL finds it with
    /// nothing else (no netns, no prevResult, no state).
    pub host_veth: IfName,
    pub steps: Vec<Step>,
    /// Addresses for the result (interface 2 = the pod interface).
    pub ips: Vec<IpConfig>,
    /// Routes for the result: the ones installed (a default route the pod already had through
    /// another network is not).
    pub routes: Vec<Route>,
    pub requested_mac: Option<MacAddr>,
}

impl Plan {
    /// The plan as the commands it matches, one per line.
    pub fn text(&self) -> String {
        let ns = self.ids.netns.display().to_string();
        self.steps.iter().map(|s| s.command(&ns) + "\n").collect()
    }
}

/// `veth` + 11 hex digits of FNV-1a over (network, container id, ifname): 15 bytes, stable.
pub fn host_veth_name(
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<IfName, netops::InvalidIfName> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Always valid (15 ASCII bytes); the Result keeps the one rule in one place.
    IfName::new(&format!("veth{:011x}", h & 0xfff_ffff_ffff))
}

fn subnet_of(addr: &IpNetwork) -> IpNetwork {
    netbase::subnet(*addr)
}

/// The gateway address IPAM gave for `ip`, or the first address of its subnet (reference:
/// `calcGateways` picks `ip.NextIP(subnet.IP)` when IPAM gave none).
fn gateway_for(ip: &IpConfig) -> IpAddr {
    if let Some(gw) = ip.gateway {
        return gw;
    }
    match subnet_of(&ip.address).network() {
        IpAddr::V4(n) => IpAddr::V4((u32::from(n).wrapping_add(1)).into()),
        IpAddr::V6(n) => IpAddr::V6((u128::from(n).wrapping_add(1)).into()),
    }
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

/// Refusals that need only the kernel view: checked before IPAM, so a refused ADD allocates
/// nothing.
pub fn preflight(spec: &BridgeSpec, ids: &Ids, view: &KernelView) -> Result<(), BridgeError> {
    if view.pod_has_ifname {
        return Err(BridgeError::IfnameTaken {
            ifname: ids.ifname.clone(),
            netns: ids.netns.display().to_string(),
        });
    }
    if let Some(b) = &view.bridge {
        if b.kind.as_deref() != Some("bridge") {
            return Err(BridgeError::NotABridge {
                name: spec.bridge.clone(),
                kind: b.kind.clone().unwrap_or_else(|| "device".into()),
            });
        }
    }
    Ok(())
}

/// Build the plan. Pure: everything it needs is in its arguments.
pub fn build(
    spec: &BridgeSpec,
    ids: &Ids,
    ipam: &CniResult,
    view: &KernelView,
) -> Result<Plan, BridgeError> {
    build_shaped(spec, ids, ipam, view, &Shape::default())
}

/// The pod's prefix for an IPAM address under `shape`.
fn pod_address(addr: IpNetwork, shape: &Shape) -> IpNetwork {
    let Some((p4, p6)) = shape.pod_prefix else {
        return addr;
    };
    let p = if addr.is_ipv4() { p4 } else { p6 };
    IpNetwork::new(addr.ip(), addr.prefix().max(p)).unwrap_or(addr)
}

/// [`build`] shaped by a caller ([`Shape`]). Pure.
pub fn build_shaped(
    spec: &BridgeSpec,
    ids: &Ids,
    ipam: &CniResult,
    view: &KernelView,
    shape: &Shape,
) -> Result<Plan, BridgeError> {
    preflight(spec, ids, view)?;
    if ipam.ips.is_empty() && spec.has_ipam {
        return Err(BridgeError::NoAddresses);
    }
    let host_veth = host_veth_name(&ids.network, &ids.container_id, &ids.ifname)
        .map_err(netops::NetopsError::from)?;
    let br = &spec.bridge;
    let pod_if = &ids.ifname;

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

    let mut steps = Vec::new();
    let mut net = |op| steps.push(Step::Net(op));

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
    for want in &bridge_addrs {
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

    for op in &shape.host_ops {
        net(op.clone());
    }
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
    for ip in &ips {
        net(Op::AddAddr {
            ns: Ns::Pod,
            link: pod_if.clone(),
            cidr: ip.address,
            dad: spec.enable_dad,
        });
    }
    for r in &routes {
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

    let mut subnets: Vec<IpNetwork> = ipam.ips.iter().map(|i| subnet_of(&i.address)).collect();
    subnets.dedup();
    let attachment = Attachment::new(&ids.network, &ids.container_id, ids.ifname.as_str())?;
    steps.push(Step::AttachFirewall(FirewallNeeds {
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
    }));

    Ok(Plan {
        ids: ids.clone(),
        bridge: br.clone(),
        host_veth,
        steps,
        ips,
        routes,
        requested_mac: spec.mac,
    })
}

/// What the kernel reported once the plan ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub bridge_mac: Option<MacAddr>,
    pub host_mac: Option<MacAddr>,
    pub pod_mac: Option<MacAddr>,
    pub pod_mtu: Option<u32>,
}

impl Plan {
    /// The ADD result: bridge, host veth, pod interface; addresses on the pod interface.
    pub fn result(
        &self,
        obs: &Observed,
        ipam: &CniResult,
        conf_dns: Option<&cni_core::Dns>,
    ) -> CniResult {
        let mac = |m: Option<MacAddr>| m.map(|m| m.to_string()).unwrap_or_default();
        CniResult {
            interfaces: vec![
                Interface {
                    name: self.bridge.to_string(),
                    mac: mac(obs.bridge_mac),
                    ..Default::default()
                },
                Interface {
                    name: self.host_veth.to_string(),
                    mac: mac(obs.host_mac),
                    ..Default::default()
                },
                Interface {
                    name: self.ids.ifname.to_string(),
                    mac: mac(obs.pod_mac),
                    mtu: obs.pod_mtu,
                    sandbox: self.ids.netns.display().to_string(),
                    ..Default::default()
                },
            ],
            ips: self.ips.clone(),
            routes: self.routes.clone(),
            dns: if ipam.dns.is_empty() {
                conf_dns.cloned().unwrap_or_default()
            } else {
                ipam.dns.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let v = |n, c, i| host_veth_name(n, c, i).unwrap();
        let a = v("net", "ctr", "eth0");
        assert_eq!(a, v("net", "ctr", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, v("net", "ctr", "eth1"));
        assert_ne!(a, v("net2", "ctr", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(v("ab", "c", "x"), v("a", "bc", "x"));
    }

    #[test]
    fn gateway_defaults_to_first_address() {
        let ip = IpConfig {
            address: "10.4.0.7/24".parse().unwrap(),
            gateway: None,
            interface: None,
        };
        assert_eq!(gateway_for(&ip), "10.4.0.1".parse::<IpAddr>().unwrap());
        let ip6 = IpConfig {
            address: "fd00:4::7/64".parse().unwrap(),
            gateway: None,
            interface: None,
        };
        assert_eq!(gateway_for(&ip6), "fd00:4::1".parse::<IpAddr>().unwrap());
    }
}
