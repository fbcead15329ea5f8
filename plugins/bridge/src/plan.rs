//! The pure step of ADD: from the validated spec and IPAM's answer to a plain value saying
//! which links, addresses, routes, sysctls and firewall elements the attachment needs, and
//! the CNI result once the kernel told us the MACs.

use std::net::IpAddr;

use cni_core::{CniError, CniResult, Interface, IpConfig, Request, Route};
use ipnetwork::IpNetwork;

use crate::config::{BridgeSpec, Mode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bridge: String,
    pub bridge_mtu: Option<u32>,
    pub promisc: bool,
    /// Host end of the veth: derived from (network, container, ifname), so DEL finds it with
    /// nothing else (no netns, no prevResult, no state).
    pub host_veth: String,
    pub pod_ifname: String,
    pub mtu: Option<u32>,
    pub mac: Option<cni_core::MacAddr>,
    pub hairpin: bool,
    pub port_isolation: bool,
    pub macspoofchk: bool,
    /// Addresses on the pod interface; `nodad` for IPv6 unless `enabledad`.
    pub pod_addrs: Vec<IpNetwork>,
    pub nodad: bool,
    pub pod_routes: Vec<Route>,
    /// Gateway addresses for the bridge (`isGateway`), with the subnet's prefix.
    pub bridge_addrs: Vec<IpNetwork>,
    pub force_address: bool,
    pub forward_v4: bool,
    pub forward_v6: bool,
    pub firewall: FirewallNeeds,
    pub ips: Vec<IpConfig>,
}

/// What the network needs from the firewall table, per network (never per pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallNeeds {
    pub bridge: String,
    /// Subnets to masquerade when leaving the host (`ipMasq`).
    pub masq: Vec<IpNetwork>,
    /// Every subnet of the attachment (hairpin masquerade on this bridge).
    pub subnets: Vec<IpNetwork>,
    pub internal: bool,
}

/// `veth` + 11 hex digits of FNV-1a over (network, container id, ifname): 15 bytes, stable.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

fn subnet_of(addr: &IpNetwork) -> IpNetwork {
    // UNWRAP-free: the prefix comes from a valid network, so it is valid for the same family.
    IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr)
}

/// The gateway address IPAM gave for `ip`, or the first address of its subnet (reference:
/// `calcGateways` picks `ip.NextIP(subnet.IP)` when IPAM gave none).
fn gateway_for(ip: &IpConfig) -> Option<IpAddr> {
    if let Some(gw) = ip.gateway {
        return Some(gw);
    }
    let net = subnet_of(&ip.address);
    match net.network() {
        IpAddr::V4(n) => Some(IpAddr::V4((u32::from(n).wrapping_add(1)).into())),
        IpAddr::V6(n) => Some(IpAddr::V6((u128::from(n).wrapping_add(1)).into())),
    }
}

pub fn build(spec: &BridgeSpec, req: &Request, ipam: &CniResult) -> Result<Plan, CniError> {
    if ipam.ips.is_empty() && spec.has_ipam {
        return Err(CniError::new(
            cni_core::ErrorCode::Delegate,
            "IPAM plugin returned no IP addresses",
        ));
    }
    let mut ips = Vec::new();
    let mut bridge_addrs = Vec::new();
    let mut pod_routes = Vec::new();
    let (mut has_v4, mut has_v6) = (false, false);
    for ip in &ipam.ips {
        let gw = if spec.is_gateway {
            gateway_for(ip)
        } else {
            ip.gateway
        };
        if let Some(g) = gw {
            if g == ip.address.ip() {
                return Err(CniError::config(
                    "ipam",
                    format!("the pod address {} is the gateway address", ip.address),
                ));
            }
        }
        if ip.address.is_ipv4() {
            has_v4 = true;
        } else {
            has_v6 = true;
        }
        if spec.is_gateway {
            if let Some(g) = gw {
                let a = IpNetwork::new(g, ip.address.prefix())
                    .map_err(|e| CniError::config("ipam", format!("gateway {g}: {e}")))?;
                if !bridge_addrs.contains(&a) {
                    bridge_addrs.push(a);
                }
            }
        }
        ips.push(IpConfig {
            address: ip.address,
            gateway: gw,
            interface: Some(2),
        });
    }
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
            route.gw = ips
                .iter()
                .find(|i| i.address.is_ipv4() == r.dst.is_ipv4())
                .and_then(|i| i.gateway);
        }
        pod_routes.push(route);
    }
    if spec.is_default_gateway {
        for ip in &ips {
            let Some(gw) = ip.gateway else { continue };
            let dst: IpNetwork = if gw.is_ipv4() {
                IpNetwork::new(IpAddr::from([0u8; 4]), 0)
            } else {
                IpNetwork::new(IpAddr::from([0u16; 8]), 0)
            }
            .map_err(|e| CniError::config("isDefaultGateway", e))?;
            if pod_routes.iter().any(|r| r.dst == dst) {
                continue; // IPAM already gave a default route of this family
            }
            pod_routes.push(Route::new(dst, Some(gw)));
        }
    }
    let mut subnets: Vec<IpNetwork> = ips.iter().map(|i| subnet_of(&i.address)).collect();
    subnets.dedup();
    let masq = if spec.ip_masq {
        subnets.clone()
    } else {
        Vec::new()
    };
    Ok(Plan {
        bridge: spec.bridge.to_string(),
        bridge_mtu: spec.mtu,
        promisc: spec.promisc,
        host_veth: host_veth_name(&req.conf.name, &req.container_id, &req.ifname),
        pod_ifname: req.ifname.clone(),
        mtu: spec.mtu,
        mac: spec.mac,
        hairpin: spec.hairpin,
        port_isolation: spec.port_isolation,
        macspoofchk: spec.macspoofchk,
        pod_addrs: ips.iter().map(|i| i.address).collect(),
        nodad: !spec.enable_dad,
        pod_routes,
        bridge_addrs,
        force_address: spec.force_address,
        forward_v4: spec.is_gateway && has_v4,
        forward_v6: spec.is_gateway && has_v6,
        firewall: FirewallNeeds {
            bridge: spec.bridge.to_string(),
            masq,
            subnets,
            internal: spec.mode == Mode::Internal,
        },
        ips,
    })
}

/// What the kernel reported while applying the plan.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub bridge_mac: String,
    pub host_mac: String,
    pub pod_mac: String,
    pub pod_mtu: Option<u32>,
    /// Routes not installed because the pod already had one to the same destination.
    pub skipped_routes: Vec<IpNetwork>,
}

impl Plan {
    /// The ADD result: bridge, host veth, pod interface; addresses on the pod interface.
    pub fn result(
        &self,
        obs: &Observed,
        netns: &str,
        ipam: &CniResult,
        req: &Request,
    ) -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: self.bridge.clone(),
                    mac: obs.bridge_mac.clone(),
                    ..Default::default()
                },
                Interface {
                    name: self.host_veth.clone(),
                    mac: obs.host_mac.clone(),
                    ..Default::default()
                },
                Interface {
                    name: self.pod_ifname.clone(),
                    mac: obs.pod_mac.clone(),
                    mtu: obs.pod_mtu,
                    sandbox: netns.to_string(),
                    ..Default::default()
                },
            ],
            ips: self.ips.clone(),
            routes: self
                .pod_routes
                .iter()
                .filter(|r| !obs.skipped_routes.contains(&r.dst))
                .cloned()
                .collect(),
            dns: if ipam.dns.is_empty() {
                req.conf.dns.clone().unwrap_or_default()
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
        let a = host_veth_name("net", "ctr", "eth0");
        assert_eq!(a, host_veth_name("net", "ctr", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("net", "ctr", "eth1"));
        assert_ne!(a, host_veth_name("net2", "ctr", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            host_veth_name("ab", "c", "x"),
            host_veth_name("a", "bc", "x")
        );
    }

    #[test]
    fn gateway_defaults_to_first_address() {
        let ip = IpConfig {
            address: "10.4.0.7/24".parse().unwrap(),
            gateway: None,
            interface: None,
        };
        assert_eq!(gateway_for(&ip), Some("10.4.0.1".parse().unwrap()));
        let ip6 = IpConfig {
            address: "fd00:4::7/64".parse().unwrap(),
            gateway: None,
            interface: None,
        };
        assert_eq!(gateway_for(&ip6), Some("fd00:4::1".parse().unwrap()));
    }
}
