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
use netops::{Op, Reversible};
use nftplan::Attachment;

mod steps;

use crate::{config::BridgeSpec, error::BridgeError};

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
    let (ips, bridge_addrs) = steps::addresses(spec, ipam, shape)?;
    let routes = steps::routes(spec, ipam, view, shape, &ips);
    let mut net = Vec::new();
    steps::bridge(spec, ipam, view, shape, &bridge_addrs, &mut net)?;
    net.extend(shape.host_ops.iter().cloned());
    steps::pod(spec, ids, view, shape, &host_veth, &ips, &routes, &mut net)?;
    let mut steps: Vec<Step> = net.into_iter().map(Step::Net).collect();
    steps.push(Step::AttachFirewall(steps::firewall_needs(
        spec, ids, ipam, shape, &host_veth, &ips,
    )?));
    Ok(Plan {
        ids: ids.clone(),
        bridge: spec.bridge.clone(),
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
mod tests;
