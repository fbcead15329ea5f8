//! `portmap`: publish hostIP:hostPort -> pod:port as nftables map elements.
//!
//! parse ([`config`]) -> bind mappings to the pod's addresses (pure) -> one element batch.
//! Ownership is tracked per (network, container id, ifname): a port held by another pod is
//! refused (code 103), DEL removes exactly this pod's elements, GC drops stale owners.
//!
//! The verbs reach the firewall and the host's kernel (a `route_localnet` sysctl, conntrack
//! flushes) only through their [`Ctx`].

pub mod config;
#[cfg(test)]
#[path = "tests/orchestration.rs"]
mod orchestration;

use cni_core::{CniError, CniResult, Plugin, Request};
use config::{Dnat, Protocol};
use netbase::Detacher;
use netops::{
    conntrack::{self, CtMatch},
    NetopsError,
};
use nftplan::{Attachment, Feature, FirewallCell, NftError, PortMapping};

pub struct Portmap;

cni_core::plugin_error! {
    /// The plugin's errors, each with its cause; CNI codes are chosen once, by the macro's
    /// `From<PortmapError> for CniError`.
    pub enum PortmapError {
        Kernel(NetopsError),
        Firewall(NftError),
    }
}

/// What portmap asks of the host's kernel besides the firewall.
pub trait HostKernel {
    /// `net.ipv4.conf.BRIDGE.route_localnet = 1` ([`enable_route_localnet`]).
    fn route_localnet(&self, bridge: &str) -> Result<(), NetopsError>;
    /// Delete the conntrack entries matching `flows` ([`conntrack::delete`]).
    fn flush_conntrack(&self, flows: &[CtMatch]) -> Result<usize, NetopsError>;
}

/// The real kernel; the conntrack socket's close is parked with the call's detacher.
pub struct RealKernel(pub Detacher);

impl HostKernel for RealKernel {
    fn route_localnet(&self, bridge: &str) -> Result<(), NetopsError> {
        enable_route_localnet(bridge)
    }

    fn flush_conntrack(&self, flows: &[CtMatch]) -> Result<usize, NetopsError> {
        conntrack::delete(flows, &self.0)
    }
}

/// The side effects of one call, handed to the verbs.
pub struct Ctx<'a> {
    pub fw: &'a FirewallCell,
    pub kernel: &'a dyn HostKernel,
}

impl Ctx<'_> {
    /// Run `verb` with the real firewall and kernel, parking with the request's detacher.
    pub fn real<T>(req: &Request, verb: impl FnOnce(&Ctx<'_>) -> T) -> T {
        let fw = FirewallCell::lazy(&req.detach);
        let kernel = RealKernel(req.detach.clone());
        verb(&Ctx {
            fw: &fw,
            kernel: &kernel,
        })
    }
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

fn add(ctx: &Ctx<'_>, req: &Request) -> Result<CniResult, PortmapError> {
    let spec = config::parse(req)?;
    let prev = req.require_prev_result()?;
    let dnats = config::plan(&spec, &prev, &req.ifname);
    if dnats.is_empty() {
        return Ok(prev);
    }
    if dnats.iter().any(reaches_loopback) {
        match prev.bridge() {
            Ok(br) => ctx.kernel.route_localnet(&br)?,
            Err(_) => log::info!(
                "{}: no host interface in prevResult: 127.0.0.1 not published",
                req.tag()
            ),
        }
    }
    let mappings: Vec<PortMapping> = dnats.iter().map(to_nft).collect();
    ctx.fw.get()?.add_ports(&Attachment::of(req)?, &mappings)?;
    Ok(prev)
}

/// DEL goes on past a failure: the elements, then the conntrack entries; reports both.
fn del(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
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
    let elems = ctx
        .fw
        .get()
        .and_then(|fw| fw.del_ports(&Attachment::of(req)?, &mappings));
    if let Err(e) = elems {
        errors.push(PortmapError::from(e).into());
    }
    match ctx.kernel.flush_conntrack(&stale_flows(&dnats)) {
        Ok(n) => log::debug!("{}: {n} conntrack entries deleted", req.tag()),
        Err(e) => errors.push(PortmapError::from(e).into()),
    }
    cni_core::error::combine(errors)
}

fn check(ctx: &Ctx<'_>, req: &Request) -> Result<(), PortmapError> {
    let spec = config::parse(req)?;
    let prev = req.require_prev_result()?;
    if config::plan(&spec, &prev, &req.ifname).is_empty() {
        return Ok(());
    }
    let att = Attachment::of(req)?;
    let missing = ctx.fw.get()?.check_ports(&att)?;
    Ok(nftplan::missing_error("published ports", &att, &missing)?)
}

fn gc(ctx: &Ctx<'_>, req: &Request) -> Result<(), PortmapError> {
    let fw = ctx.fw.get()?;
    Ok(fw.gc(Feature::Portmap, &req.conf.name, &req.valid_pairs())?)
}

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ctx::real(req, |ctx| Ok(add(ctx, req)?))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ctx::real(req, |ctx| del(ctx, req))
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ctx::real(req, |ctx| Ok(check(ctx, req)?))
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Ctx::real(req, |ctx| Ok(gc(ctx, req)?))
    }
}
