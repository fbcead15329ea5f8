//! The IPAM half of an interface plugin, as the reference's `ipam.ConfigureIface`: the steps
//! that put IPAM's addresses and routes on the pod interface, the result, the CHECK of a
//! result against the kernel, and the common DEL.

use std::net::IpAddr;

use cni_core::{CniResult, Command, Dns, Interface, IpConfig, Request};
use netops::{
    Family, IfName, Kernel, Link, NetNs, Netlink, NetopsError, Ns, Op, RouteSpec, SysctlKey,
};

use crate::{LinkError, Step};

/// Run IPAM ADD; at least one address is required.
pub fn ipam_add(req: &Request) -> Result<CniResult, LinkError> {
    let r = req.delegate_ipam(Command::Add)?.unwrap_or_default();
    if r.ips.is_empty() {
        crate::release_ipam(req);
        return Err(LinkError::Cni(cni_core::CniError::new(
            cni_core::ErrorCode::Delegate,
            "IPAM plugin returned missing IP config",
        )));
    }
    Ok(r)
}

fn key(family: &str, link: &str, leaf: &str) -> Result<SysctlKey, LinkError> {
    Ok(SysctlKey::conf(family, link, leaf)?)
}

/// The first gateway of each family among `ips` (the default gateway of IPAM routes
/// without one).
pub fn gateways(ips: &[IpConfig]) -> (Option<IpAddr>, Option<IpAddr>) {
    let v4 = ips.iter().filter_map(|i| i.gateway).find(IpAddr::is_ipv4);
    let v6 = ips.iter().filter_map(|i| i.gateway).find(IpAddr::is_ipv6);
    (v4, v6)
}

/// IPv6 on for `lo` and `link` and `keep_addr_on_down` (a down/up keeps the addresses), when
/// there is an IPv6 address: the reference's preamble.
pub fn ipv6_steps(link: &IfName, ipam: &CniResult) -> Result<Vec<Step>, LinkError> {
    if !ipam.ips.iter().any(|i| i.address.is_ipv6()) {
        return Ok(Vec::new());
    }
    Ok(vec![
        Step::PodSysctl {
            key: key("ipv6", "lo", "disable_ipv6")?,
            value: "0".into(),
            required: false,
        },
        Step::PodSysctl {
            key: key("ipv6", link.as_str(), "disable_ipv6")?,
            value: "0".into(),
            required: false,
        },
        Step::PodSysctl {
            key: key("ipv6", link.as_str(), "keep_addr_on_down")?,
            value: "1".into(),
            required: true,
        },
    ])
}

/// The steps after IPAM of a plugin that brings an L2-only interface up: IPAM's addresses
/// and routes ([`configure_steps`]) when `l3`, else just the link up.
pub fn configure_or_up(l3: bool, link: &IfName, ipam: &CniResult) -> Result<Vec<Step>, LinkError> {
    if l3 {
        configure_steps(link, ipam)
    } else {
        Ok(vec![Step::Net(Op::SetUp {
            ns: Ns::Pod,
            link: link.clone(),
        })])
    }
}

/// `ipam.ConfigureIface`: IPv6 enabled when needed, every address (IPv6 without DAD, as the
/// suite's bridge does), the link up, every route (a route without a gateway goes through the
/// first gateway of its family, as the reference does).
pub fn configure_steps(link: &IfName, ipam: &CniResult) -> Result<Vec<Step>, LinkError> {
    let mut steps = ipv6_steps(link, ipam)?;
    for ip in &ipam.ips {
        steps.push(Step::Net(Op::AddAddr {
            ns: Ns::Pod,
            link: link.clone(),
            cidr: ip.address,
            dad: false,
        }));
    }
    steps.push(Step::Net(Op::SetUp {
        ns: Ns::Pod,
        link: link.clone(),
    }));
    steps.extend(route_steps(link, ipam));
    Ok(steps)
}

/// IPAM's routes through `link`, with the family's gateway when a route names none.
pub fn route_steps(link: &IfName, ipam: &CniResult) -> Vec<Step> {
    let (gw4, gw6) = gateways(&ipam.ips);
    ipam.routes
        .iter()
        .map(|r| {
            let gw = r.gw.or(if r.dst.is_ipv4() { gw4 } else { gw6 });
            Step::Net(Op::AddRoute {
                ns: Ns::Pod,
                link: link.clone(),
                route: RouteSpec {
                    dst: r.dst,
                    gw,
                    priority: r.priority,
                    onlink: false,
                },
            })
        })
        .collect()
}

/// The pod interface as the result reports it.
pub fn pod_interface(link: &Link, netns: &str) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| m.to_string()).unwrap_or_default(),
        sandbox: netns.to_string(),
        ..Default::default()
    }
}

/// The result: `interfaces`, IPAM's addresses on interface `idx`, its routes, and `dns`.
pub fn result(interfaces: Vec<Interface>, idx: usize, ipam: &CniResult, dns: Dns) -> CniResult {
    CniResult {
        interfaces,
        ips: ipam
            .ips
            .iter()
            .map(|i| IpConfig {
                interface: Some(idx),
                ..i.clone()
            })
            .collect(),
        routes: ipam.routes.clone(),
        dns,
    }
}

/// CHECK of the pod interface against the previous result, as the reference's
/// `validateCniContainerInterface` + `ValidateExpectedInterfaceIPs` + `ValidateExpectedRoute`:
/// the result names `CNI_IFNAME` in this netns, the link exists (its kind checked by
/// `kind_ok`), has the reported MAC, every reported address and every reported route.
pub fn check_pod_iface(
    req: &Request,
    prev: &CniResult,
    pod: &Netlink<'_>,
    kind_ok: impl Fn(&Link) -> Result<(), String>,
) -> Result<Link, LinkError> {
    let netns = req.netns()?.display().to_string();
    let fail = |m: String| LinkError::Check(m);
    let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == req.ifname && i.sandbox == netns)
    else {
        return Err(fail(format!(
            "the previous result has no interface {} in {netns}",
            req.ifname
        )));
    };
    let link = pod
        .link(&req.ifname)?
        .ok_or_else(|| fail(format!("interface {} not found in {netns}", req.ifname)))?;
    kind_ok(&link).map_err(fail)?;
    let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
    if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&have) {
        return Err(fail(format!(
            "interface {} has MAC {have}, the result says {}",
            req.ifname, want.mac
        )));
    }
    let addrs = pod.addresses(&link, None)?;
    for ip in prev.container_ips(&req.ifname) {
        if !addrs.contains(&ip.address) {
            return Err(fail(format!(
                "address {} missing on {}",
                ip.address, req.ifname
            )));
        }
    }
    let routes = pod.routes(None, None)?;
    for r in &prev.routes {
        if !routes.iter().any(|x| r.is_met_by(&x.dst, x.gw)) {
            return Err(fail(format!("route to {} missing", r.describe())));
        }
    }
    Ok(link)
}

/// The pod netns of a DEL, `None` when there is none or it is gone (nothing to do there).
pub fn del_netns(req: &Request) -> Result<Option<NetNs>, LinkError> {
    match req.netns.as_ref().map(NetNs::open) {
        None | Some(Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. })) => {
            Ok(None)
        }
        Some(Ok(ns)) => Ok(Some(ns)),
        Some(Err(e)) => Err(e.into()),
    }
}

/// The common DEL: IPAM DEL (when configured), then `CNI_IFNAME` deleted in the pod if the
/// netns is still there; goes on past a failure and reports every one.
pub fn del_pod_link(req: &Request) -> Result<(), cni_core::CniError> {
    let mut errors: Vec<cni_core::CniError> = Vec::new();
    if crate::has_ipam(req) {
        if let Err(e) = req.delegate_ipam(Command::Del) {
            errors.push(e);
        }
    }
    let res = (|| -> Result<(), LinkError> {
        let Some(ns) = del_netns(req)? else {
            return Ok(());
        };
        let kernel = Kernel::new()?;
        let pod = kernel.pod(&ns)?;
        pod.delete_link(&req.ifname)?;
        Ok(())
    })();
    if let Err(e) = res {
        errors.push(e.into());
    }
    cni_core::error::combine(errors)
}

/// A link's MTU must not exceed its master's (`0` is "the master's").
pub fn check_mtu(mtu: Option<u32>, master: &Link) -> Result<(), LinkError> {
    match mtu {
        Some(m) if m > master.mtu => Err(LinkError::Cni(cni_core::CniError::config(
            "mtu",
            format!("invalid MTU {m}, must be [0, master MTU({})]", master.mtu),
        ))),
        _ => Ok(()),
    }
}

/// `Family` of an address.
pub fn family(ip: &IpAddr) -> Family {
    Family::of(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_core::Route;

    fn ipam() -> CniResult {
        CniResult {
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: None,
                },
                IpConfig {
                    address: "fd00:1::5/64".parse().unwrap(),
                    gateway: Some("fd00:1::1".parse().unwrap()),
                    interface: None,
                },
            ],
            routes: vec![
                Route::new("0.0.0.0/0".parse().unwrap(), None),
                Route::new("::/0".parse().unwrap(), None),
                Route::new(
                    "192.168.0.0/16".parse().unwrap(),
                    Some("10.1.0.254".parse().unwrap()),
                ),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn configure_iface_enables_ipv6_adds_addresses_up_then_routes() {
        let steps = configure_steps(&IfName::new("eth0").unwrap(), &ipam()).unwrap();
        let text: Vec<String> = steps.iter().map(|s| s.command("P")).collect();
        assert_eq!(
            text,
            [
                "nsenter --net=P sysctl -w net.ipv6.conf.lo.disable_ipv6=0  # best effort",
                "nsenter --net=P sysctl -w net.ipv6.conf.eth0.disable_ipv6=0  # best effort",
                "nsenter --net=P sysctl -w net.ipv6.conf.eth0.keep_addr_on_down=1",
                "ip -n P addr add 10.1.0.5/24 dev eth0",
                "ip -n P addr add fd00:1::5/64 dev eth0 nodad",
                "ip -n P link set eth0 up",
                "ip -n P route add default via 10.1.0.1 dev eth0",
                "ip -n P route add default via fd00:1::1 dev eth0",
                "ip -n P route add 192.168.0.0/16 via 10.1.0.254 dev eth0",
            ]
        );
    }

    #[test]
    fn the_result_puts_every_address_on_the_pod_interface() {
        let r = result(
            vec![Interface::default(), Interface::default()],
            1,
            &ipam(),
            Dns::default(),
        );
        assert!(r.ips.iter().all(|i| i.interface == Some(1)));
        assert_eq!(r.routes.len(), 3);
    }
}
