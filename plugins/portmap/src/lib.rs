//! `portmap`: publish hostIP:hostPort -> pod:port as nftables map elements.
//!
//! parse ([`config`]) -> bind mappings to the pod's addresses (pure) -> one element batch.
//! Ownership is tracked per (network, container id, ifname): a port held by another pod is
//! refused (code 103), DEL removes exactly this pod's elements, GC drops stale owners.

pub mod config;

use cni_core::{error::from_classified, CniError, CniResult, Plugin, Request};
use config::{Dnat, Protocol};
use netops::{
    conntrack::{self, CtMatch},
    NetopsError,
};
use nftplan::{Attachment, Feature, Firewall, NftError, PortMapping};

pub struct Portmap;

/// The plugin's errors, each with its cause; CNI codes are chosen once, in the `From` below.
#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] NetopsError),
    #[error(transparent)]
    Firewall(#[from] NftError),
}

impl From<PortmapError> for CniError {
    fn from(e: PortmapError) -> CniError {
        match e {
            PortmapError::Cni(c) => c,
            PortmapError::Kernel(k) => from_classified(k.class(), &k, k.hint()),
            PortmapError::Firewall(f) => from_classified(f.class(), &f, None),
        }
    }
}

fn attachment(req: &Request) -> Result<Attachment, NftError> {
    Attachment::new(&req.conf.name, &req.container_id, &req.ifname)
}

fn to_nft(d: &Dnat) -> PortMapping {
    PortMapping {
        host_ip: d.host_ip,
        host_port: d.host_port,
        protocol: d.protocol,
        container_ip: d.container_ip,
        container_port: d.container_port,
    }
}

/// 127.0.0.1 publishing: DNAT'd packets from the loopback address are routed out of the
/// bridge, which the kernel only allows with `route_localnet` on it. The firewall table
/// masquerades them and drops 127/8 arriving from anywhere but lo.
fn enable_route_localnet(bridge: &str) -> Result<(), NetopsError> {
    netops::sysctl::ensure_ipv4_conf_one(bridge, netops::sysctl::Ipv4Conf::RouteLocalnet)?;
    Ok(())
}

fn reaches_loopback(d: &Dnat) -> bool {
    d.container_ip.is_ipv4() && d.host_ip.is_none_or(|h| h.is_loopback())
}

/// The conntrack entries DEL removes: the flows to each removed UDP mapping's host port (a
/// UDP flow keeps its DNAT while packets keep coming, so a new pod on the port would never
/// see them) and every flow of the pod's addresses.
fn stale_flows(dnats: &[Dnat]) -> Vec<CtMatch> {
    let mut out: Vec<CtMatch> = Vec::new();
    for d in dnats {
        let m = [
            (d.protocol == Protocol::Udp).then_some(CtMatch::DstPort {
                v6: d.container_ip.is_ipv6(),
                proto: Protocol::Udp.number(),
                port: d.host_port,
            }),
            Some(CtMatch::Address(d.container_ip)),
        ];
        for x in m.into_iter().flatten() {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    out
}

fn add(req: &Request) -> Result<CniResult, PortmapError> {
    let spec = config::parse(req)?;
    let prev = req.require_prev_result()?;
    let dnats = config::plan(&spec, &prev, &req.ifname);
    if dnats.is_empty() {
        return Ok(prev);
    }
    if dnats.iter().any(reaches_loopback) {
        match prev.bridge() {
            Ok(br) => enable_route_localnet(&br)?,
            Err(_) => log::info!(
                "{}: no host interface in prevResult: 127.0.0.1 not published",
                req.tag()
            ),
        }
    }
    let mappings: Vec<PortMapping> = dnats.iter().map(to_nft).collect();
    Firewall::open_with(&req.detach)?.add_ports(&attachment(req)?, &mappings)?;
    Ok(prev)
}

/// DEL goes on past a failure: the elements, then the conntrack entries; reports both.
fn del(req: &Request) -> Result<(), CniError> {
    // Mappings from the config are a hint (they need the pod address from prevResult);
    // the firewall state knows this attachment's elements without them. A config ADD
    // refused must not fail DEL too: a runtime's DEL of the chain stops at the first
    // plugin that fails (libcni), so bridge's veth and host-local's lease would stay.
    let spec = match config::parse(req) {
        Ok(spec) => Some(spec),
        Err(e) => {
            log::info!("{}: DEL goes on without the mappings: {}", req.tag(), e.msg);
            None
        }
    };
    let dnats = match (spec, req.prev_result()) {
        (Some(spec), Ok(Some(prev))) => config::plan(&spec, &prev, &req.ifname),
        _ => Vec::new(),
    };
    let mappings: Vec<PortMapping> = dnats.iter().map(to_nft).collect();
    let mut errors: Vec<CniError> = Vec::new();
    let elems =
        Firewall::open_with(&req.detach).and_then(|fw| fw.del_ports(&attachment(req)?, &mappings));
    if let Err(e) = elems {
        errors.push(PortmapError::from(e).into());
    }
    match conntrack::delete(&stale_flows(&dnats), &req.detach) {
        Ok(n) => log::debug!("{}: {n} conntrack entries deleted", req.tag()),
        Err(e) => errors.push(PortmapError::from(e).into()),
    }
    cni_core::error::combine(errors)
}

fn check(req: &Request) -> Result<(), PortmapError> {
    let spec = config::parse(req)?;
    let prev = req.require_prev_result()?;
    if config::plan(&spec, &prev, &req.ifname).is_empty() {
        return Ok(());
    }
    let att = attachment(req)?;
    let missing = Firewall::open_with(&req.detach)?.check_ports(&att)?;
    Ok(nftplan::missing_error("published ports", &att, &missing)?)
}

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let gc = |fw: Firewall| fw.gc(Feature::Portmap, &req.conf.name, &req.valid_pairs());
        Ok(Firewall::open_with(&req.detach)
            .and_then(gc)
            .map_err(PortmapError::from)?)
    }
}
