//! `ptp`: a drop-in for the reference ptp plugin (kindnet runs it). Each pod gets a veth whose
//! host end holds the gateway address (`/32`, `/128`) and a host route to the pod; the pod's
//! addresses carry no prefix route, only a link route to the gateway and the subnet through
//! it, so every packet goes through the host, routed. Keys: `mtu`, `ipMasq` (masquerade of the
//! pod's subnets leaving the host, in the suite's nftables table; `ipMasqBackend` is accepted
//! and the backend is always nftables), `dns`, `ipam`.
//!
//! parse -> IPAM -> plan (pure: [`plan`], printed as `ip` commands) -> apply with undo ->
//! firewall (with `ipMasq`) -> result (host veth, pod interface, addresses on the pod's).
//! The host veth is named from (network, container id, ifname), so DEL needs neither the netns
//! nor a previous result.

use std::net::IpAddr;

use cni_core::{error::from_lower, CniError, CniResult, Command, IfName, Request};
use ipnetwork::IpNetwork;
use netops::{Kernel, NetopsError, Ns, Op, RouteExtra, RouteSpec, SysctlKey};
use nftplan::{Attachment, Feature, Firewall};
use podif::{iface, step::ExtRoute, Effects, LinkError, Step};
use serde::Deserialize;

pub struct Ptp;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    ip_masq: Option<bool>,
    ip_masq_backend: Option<String>,
    mtu: Option<i64>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub ip_masq: bool,
    pub mtu: Option<u32>,
}

pub fn parse(req: &Request) -> Result<Spec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let mtu = match raw.mtu {
        None | Some(0) => None,
        Some(m) if (68..=65535).contains(&m) => u32::try_from(m).ok(),
        Some(m) => return Err(CniError::config("mtu", format!("{m} is outside 68..65535"))),
    };
    match raw.ip_masq_backend.as_deref() {
        None | Some("" | "iptables" | "nftables") => {}
        Some(b) => {
            return Err(CniError::config(
                "ipMasqBackend",
                format!("{b:?}: expected \"iptables\" or \"nftables\""),
            ))
        }
    }
    if req
        .conf
        .ipam
        .as_ref()
        .is_none_or(|i| i.plugin_type.is_empty())
    {
        return Err(CniError::config("ipam.type", "ptp needs an IPAM plugin"));
    }
    Ok(Spec {
        ip_masq: raw.ip_masq.unwrap_or(false),
        mtu,
    })
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, bits).unwrap_or_else(|_| IpNetwork::from(ip))
}

fn subnet_of(a: &IpNetwork) -> IpNetwork {
    netbase::subnet(*a)
}

/// The pure plan: forwarding on, the veth (peer in the pod under `ifname`), the pod's
/// addresses without prefix routes, its link route to each gateway and the subnet through it,
/// IPAM's routes, then the host end up with each gateway address and a route to the pod.
pub fn plan(
    spec: &Spec,
    veth: &IfName,
    ifname: &IfName,
    netns: &std::path::Path,
    ipam: &CniResult,
) -> Result<Vec<Step>, LinkError> {
    let mut steps = Vec::new();
    let has = |v6: bool| ipam.ips.iter().any(|i| i.address.is_ipv6() == v6);
    if has(false) {
        steps.push(Step::Net(Op::SetSysctl {
            key: SysctlKey::parse("net.ipv4.ip_forward")?,
            value: "1".into(),
        }));
    }
    if has(true) {
        steps.push(Step::Net(Op::SetSysctl {
            key: SysctlKey::parse("net.ipv6.conf.all.forwarding")?,
            value: "1".into(),
        }));
    }
    steps.push(Step::Net(Op::CreateVeth {
        host: veth.clone(),
        peer: ifname.clone(),
        netns: netns.to_path_buf(),
        mtu: spec.mtu,
        peer_mac: None,
    }));
    steps.extend(iface::ipv6_steps(ifname, ipam)?);
    let mut host_steps = vec![Step::Net(Op::SetUp {
        ns: Ns::Host,
        link: veth.clone(),
    })];
    for ip in &ipam.ips {
        let gw = ip.gateway.ok_or_else(|| {
            LinkError::Cni(CniError::new(
                cni_core::ErrorCode::Delegate,
                format!(
                    "IPAM gave {} no gateway: ptp puts the gateway on the host end",
                    ip.address
                ),
            ))
        })?;
        let pod_ip = ip.address.ip();
        steps.push(Step::AddAddrNoPrefix {
            ns: Ns::Pod,
            link: ifname.clone(),
            cidr: ip.address,
        });
        let src = RouteExtra {
            src: Some(pod_ip),
            host_scope: false,
        };
        steps.push(Step::AddRouteExt(ExtRoute {
            ns: Ns::Pod,
            link: ifname.clone(),
            route: RouteSpec {
                dst: host_prefix(gw),
                gw: None,
                priority: None,
                onlink: false,
            },
            extra: src,
        }));
        steps.push(Step::AddRouteExt(ExtRoute {
            ns: Ns::Pod,
            link: ifname.clone(),
            route: RouteSpec {
                dst: subnet_of(&ip.address),
                gw: Some(gw),
                priority: None,
                onlink: false,
            },
            extra: src,
        }));
        host_steps.push(Step::Net(Op::AddAddr {
            ns: Ns::Host,
            link: veth.clone(),
            cidr: host_prefix(gw),
            dad: false,
        }));
        // The reference's `AddHostRoute`: scope host.
        host_steps.push(Step::AddRouteExt(ExtRoute {
            ns: Ns::Host,
            link: veth.clone(),
            route: RouteSpec {
                dst: host_prefix(pod_ip),
                gw: None,
                priority: None,
                onlink: false,
            },
            extra: RouteExtra {
                src: None,
                host_scope: true,
            },
        }));
    }
    steps.extend(iface::route_steps(ifname, ipam));
    steps.extend(host_steps);
    Ok(steps)
}

fn ifname(req: &Request) -> Result<IfName, LinkError> {
    Ok(IfName::new(&req.ifname).map_err(NetopsError::from)?)
}

fn veth_name(req: &Request) -> Result<IfName, LinkError> {
    podif::host_veth_name(&req.conf.name, &req.container_id, &req.ifname)
}

fn attachment(req: &Request) -> Result<Attachment, LinkError> {
    Attachment::of(req).map_err(|e| LinkError::Config(e.to_string()))
}

fn add(req: &Request) -> Result<CniResult, LinkError> {
    let spec = parse(req)?;
    let ifname = ifname(req)?;
    let veth = veth_name(req)?;
    let k = podif::PodKernel::open(req)?;
    let (host, pod) = (k.host(), k.pod()?);
    podif::refuse_taken(&pod, &ifname, &k.netns)?;
    let fw = if spec.ip_masq {
        Some(Firewall::open_with(&req.detach).map_err(|e| LinkError::Config(e.to_string()))?)
    } else {
        None
    };
    let ipam = iface::ipam_add(req)?;
    let steps = match plan(&spec, &veth, &ifname, &k.netns, &ipam) {
        Ok(s) => s,
        Err(e) => {
            podif::release_ipam(req);
            return Err(e);
        }
    };
    let mut fx = Effects::new(&host, &pod, &k.ns);
    let undo = podif::run(req, &steps, &mut fx, true)?;
    let finish = (|| -> Result<CniResult, LinkError> {
        if let Some(fw) = &fw {
            let masq: Vec<IpNetwork> = ipam.ips.iter().map(|i| subnet_of(&i.address)).collect();
            fw.attach_routed(&attachment(req)?, &veth, &masq)
                .map_err(|e| LinkError::Cni(from_lower(&e)))?;
        }
        let h = host.require_link(&veth)?;
        let p = pod.require_link(&ifname)?;
        let interfaces = vec![
            cni_core::Interface {
                name: h.name.clone(),
                mac: h.mac.map(|m| m.to_string()).unwrap_or_default(),
                ..Default::default()
            },
            iface::pod_interface(&p, &k.netns.display().to_string()),
        ];
        // The plugin's dns only when set: else IPAM's passes on.
        let dns = match &req.conf.dns {
            Some(d) if !d.is_empty() => d.clone(),
            _ => ipam.dns.clone(),
        };
        Ok(iface::result(interfaces, 1, &ipam, dns))
    })();
    if finish.is_err() {
        podif::rollback(req, undo, &mut fx, true);
    }
    finish
}

fn del(req: &Request) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    if let Err(e) = req.delegate_ipam(Command::Del) {
        errors.push(e);
    }
    let links = (|| -> Result<(), LinkError> {
        let kernel = Kernel::new()?;
        let host = kernel.host();
        // The veth by its derived name (both ends go); else CNI_IFNAME in the pod.
        if host.delete_link(&veth_name(req)?)? {
            return Ok(());
        }
        if let Some(ns) = iface::del_netns(req)? {
            kernel.pod(&ns)?.delete_link(&req.ifname)?;
        }
        Ok(())
    })();
    if let Err(e) = links {
        errors.push(e.into());
    }
    let fw = Firewall::open_with(&req.detach).and_then(|fw| {
        let a = Attachment::new(&req.conf.name, &req.container_id, &req.ifname)?;
        fw.detach_network(&a).map(drop)
    });
    if let Err(e) = fw {
        errors.push(from_lower(&e));
    }
    cni_core::error::combine(errors)
}

fn check(req: &Request) -> Result<(), LinkError> {
    let spec = parse(req)?;
    let (prev, k) = podif::check_start(req, true)?;
    let (host, pod) = (k.host(), k.pod()?);
    let link = iface::check_pod_iface(req, &prev, &pod, |l| {
        if l.kind.as_deref() == Some("veth") {
            Ok(())
        } else {
            Err(format!("interface {} is not a veth", l.name))
        }
    })?;
    // Its peer is the host end the result names.
    let peer = link
        .parent
        .and_then(|i| host.link_by_index(i).ok().flatten());
    let named = prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_empty() && Some(&i.name) == peer.as_ref().map(|p| &p.name));
    if !named {
        return Err(LinkError::Check(format!(
            "the veth peer of {} is not the host interface of the result",
            req.ifname
        )));
    }
    if spec.ip_masq {
        let fw = Firewall::open_with(&req.detach).map_err(|e| LinkError::Cni(from_lower(&e)))?;
        let a = attachment(req)?;
        let missing = fw
            .check_network(&a)
            .map_err(|e| LinkError::Cni(from_lower(&e)))?;
        nftplan::missing_error("masquerade elements", &a, &missing)
            .map_err(|e| LinkError::Cni(from_lower(&e)))?;
    }
    Ok(())
}

fn gc(req: &Request) -> Result<(), CniError> {
    let mut errors = Vec::new();
    if let Err(e) = Firewall::open_with(&req.detach)
        .and_then(|fw| fw.gc(Feature::Network, &req.conf.name, &req.valid_pairs()))
    {
        errors.push(from_lower(&e));
    }
    if let Err(e) = req.delegate_ipam(Command::Gc) {
        errors.push(e);
    }
    cni_core::error::combine(errors)
}

podif::link_plugin!(
    Ptp,
    "ptp",
    any_args = true,
    del = del,
    gc = gc,
    status = |r| r.delegate_ipam(Command::Status).map(drop)
);

#[cfg(test)]
mod tests;
