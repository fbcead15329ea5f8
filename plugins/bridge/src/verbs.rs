//! ADD, DEL, CHECK, GC, STATUS: the only code that touches the kernel and the firewall, all
//! through the call's [`Ctx`] (kernel session, firewall, IPAM), built from the request for a
//! real run ([`Ctx::real`]) and over fakes by the orchestration tests.
//!
//! ADD: validate -> open the netns -> IPAM -> plan (pure) -> apply with an undo log ->
//! firewall elements (last) -> result. A failure after IPAM rolls back the links and calls
//! IPAM DEL before answering.
//!
//! DEL works from (network, container id, ifname) alone: the host veth name is derived from
//! them, the firewall elements are owned by that key, IPAM releases by it. The netns may be
//! gone and prevResult missing.

use cni_core::{
    delegate::{ExecIpam, Ipam},
    CniError, CniResult, Command, IfName, Request,
};
use ipnetwork::IpNetwork;
use netops::{KernelSession, Link, NetopsError, Ns, Op, RouteFilter, Session};
use nftplan::{Attachment, Feature, FirewallCell};

use crate::{
    apply::{self, Effects},
    config::{self, BridgeSpec, Mode},
    error::{combine, BridgeError},
    plan::{self, Ids},
};

/// The side effects of one call, handed to the verbs.
pub struct Ctx<'a> {
    /// The kernel: host netns, and the pod's once opened.
    pub net: &'a mut dyn Session,
    /// The firewall table and its state (opened at first use).
    pub fw: &'a FirewallCell,
    /// The IPAM plugin of the config (`ipam.type`).
    pub ipam: &'a dyn Ipam,
}

impl Ctx<'_> {
    /// Run `verb` with the real kernel, firewall and IPAM binary; work only the kernel can
    /// observe is parked with the request's detacher.
    pub fn real<T>(req: &Request, verb: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        let mut net = KernelSession::new(req.detach.clone());
        let fw = FirewallCell::lazy(&req.detach);
        verb(&mut Ctx {
            net: &mut net,
            fw: &fw,
            ipam: &ExecIpam,
        })
    }
}

fn check_failed(msg: String) -> BridgeError {
    BridgeError::Check(msg)
}

fn ifname_of(req: &Request) -> Result<IfName, BridgeError> {
    Ok(IfName::new(&req.ifname).map_err(NetopsError::from)?)
}

pub fn add(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<CniResult, CniError> {
    Ok(add_inner(ctx, req, mode)?)
}

/// parse -> read the kernel -> IPAM -> plan (pure) -> apply (undo on failure) -> result.
fn add_inner(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<CniResult, BridgeError> {
    let spec = config::parse(req, mode)?;
    let ids = Ids {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: ifname_of(req)?,
        netns: req.netns()?.clone(),
    };
    ctx.net.open_pod(&ids.netns)?;
    let view = apply::read_view(ctx.net, &spec, &ids.ifname)?;
    plan::preflight(&spec, &ids, &view)?;
    let fw = ctx.fw.get()?;
    let ipam = if spec.has_ipam {
        ctx.ipam.run(req, Command::Add)?.unwrap_or_default()
    } else {
        CniResult::default()
    };
    let outcome = plan::build(&spec, &ids, &ipam, &view).and_then(|plan| {
        log::debug!("{}: plan:\n{}", req.tag(), plan.text());
        let mut fx = Effects {
            net: &mut *ctx.net,
            fw,
            plan_mac: plan.requested_mac,
            pod_ifname: ids.ifname.clone(),
        };
        let ns_label = ids.netns.display().to_string();
        netops::apply(&plan.steps, &mut fx).map_err(|f| {
            for u in &f.undo_errors {
                log::warn!("{}: rollback: {u}", req.tag());
            }
            BridgeError::Step {
                step: f.step + 1,
                command: f.op.command(&ns_label),
                source: Box::new(f.error),
            }
        })?;
        let obs = apply::observe(fx.net, &plan)?;
        Ok(plan.result(&obs, &ipam, req.conf.dns.as_ref()))
    });
    if outcome.is_err() && spec.has_ipam {
        if let Err(e) = ctx.ipam.run(req, Command::Del) {
            log::warn!(
                "{}: releasing the address after a failed ADD: {e}",
                req.tag()
            );
        }
    }
    outcome
}

/// DEL goes on past every failure and reports them all: links, firewall elements, IPAM.
pub fn del(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let mut errors: Vec<BridgeError> = Vec::new();
    if let Err(e) = delete_links(ctx.net, req) {
        errors.push(e);
    }
    match ctx
        .fw
        .get()
        .and_then(|fw| fw.detach_network(&Attachment::of(req)?))
    {
        // The internal network's last attachment: its kernel-level seal goes too.
        Ok(Some(last)) => {
            let mut unseal = || {
                let mut subnets = seal_subnets(ctx.net, req, last.bridge.as_str())?;
                for s in &last.subnets {
                    if !subnets.contains(s) {
                        subnets.push(*s);
                    }
                }
                ctx.net.exec(&Op::UnsealBridge {
                    name: last.bridge.clone(),
                    subnets,
                })
            };
            if let Err(e) = unseal() {
                errors.push(e.into());
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
    }
    if spec.has_ipam {
        if let Err(e) = ctx.ipam.run(req, Command::Del) {
            errors.push(e.into());
        }
    }
    combine(errors)
}

/// The subnets an internal network's seal covers, as DEL and CHECK know them: those of the
/// pod's addresses in the previous result and of the bridge's own addresses.
fn seal_subnets(
    net: &mut dyn Session,
    req: &Request,
    bridge: &str,
) -> Result<Vec<IpNetwork>, NetopsError> {
    let mut out: Vec<IpNetwork> = Vec::new();
    let mut push = |a: IpNetwork| {
        if let std::net::IpAddr::V6(v6) = a.ip() {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return; // link-local: never routed
            }
        }
        let n = netbase::subnet(a);
        if !out.contains(&n) {
            out.push(n);
        }
    };
    if let Ok(Some(prev)) = req.prev_result() {
        for ip in prev.container_ips(&req.ifname) {
            push(ip.address);
        }
    }
    if let Some(br) = net.link(Ns::Host, bridge)?.filter(|l| l.is_bridge()) {
        for a in net.addresses(Ns::Host, &br)? {
            push(a);
        }
    }
    Ok(out)
}

/// Retire the host veth by its derived name (down, off the bridge, renamed, with its pod end;
/// the kernel's slow delete runs detached, see [`netops::Netlink::retire_veth`]); when it is
/// not there (created by another implementation, or already gone) delete `CNI_IFNAME` in the
/// netns if the netns still exists, as the reference does.
pub fn delete_links(net: &mut dyn Session, req: &Request) -> Result<(), BridgeError> {
    let name = plan::host_veth_name(&req.conf.name, &req.container_id, &req.ifname)
        .map_err(NetopsError::from)?;
    let pod_open = match req.netns.as_deref().map(|p| net.open_pod(p)) {
        None | Some(Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. })) => {
            false
        }
        Some(Ok(())) => true,
        Some(Err(e)) => return Err(e.into()),
    };
    let pod_ifname = pod_open.then_some(req.ifname.as_str());
    if net.retire_veth(&name, pod_ifname)? {
        return Ok(());
    }
    if pod_open {
        net.exec(&Op::DeleteLink {
            ns: Ns::Pod,
            link: ifname_of(req)?,
        })?;
    }
    Ok(())
}

pub fn check(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<(), CniError> {
    Ok(check_inner(ctx, req, mode)?)
}

fn check_inner(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<(), BridgeError> {
    let spec = config::parse(req, mode)?;
    let prev = req.require_prev_result()?;
    let netns = req.netns()?;
    ctx.net.open_pod(netns)?;
    let link = ctx.net.link(Ns::Pod, &req.ifname)?.ok_or_else(|| {
        check_failed(format!(
            "interface {} not found in {}",
            req.ifname,
            netns.display()
        ))
    })?;
    check_pod_link(ctx.net, req, &prev, &link)?;
    check_host_side(ctx.net, req, &spec, &prev)?;
    if spec.mode == Mode::Internal {
        let subnets = seal_subnets(ctx.net, req, spec.bridge.as_str())?;
        let missing = ctx.net.missing_seal(spec.bridge.as_str(), &subnets)?;
        if !missing.is_empty() {
            return Err(check_failed(format!(
                "kernel-level seal of {} incomplete, missing: {}",
                spec.bridge,
                missing.join("; ")
            )));
        }
    }
    if spec.has_ipam {
        ctx.ipam.run(req, Command::Check)?;
    }
    let att = Attachment::of(req)?;
    let missing = ctx.fw.get()?.check_network(&att)?;
    Ok(nftplan::missing_error("firewall elements", &att, &missing)?)
}

/// Stable properties of the pod side: the MAC we reported, every address and route.
pub fn check_pod_link(
    net: &mut dyn Session,
    req: &Request,
    prev: &CniResult,
    link: &Link,
) -> Result<(), BridgeError> {
    if let Some(i) = prev.sandbox_interface(&req.ifname) {
        let want = &prev.interfaces[i].mac;
        let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
        if !want.is_empty() && !want.eq_ignore_ascii_case(&have) {
            return Err(check_failed(format!(
                "interface {} has MAC {have}, the result says {want}",
                req.ifname
            )));
        }
    }
    let addrs = net.addresses(Ns::Pod, link)?;
    for ip in prev.container_ips(&req.ifname) {
        if !addrs.contains(&ip.address) {
            return Err(check_failed(format!(
                "address {} missing on {} (has {})",
                ip.address,
                req.ifname,
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let routes = net.routes(Ns::Pod, RouteFilter::link(link))?;
    for r in &prev.routes {
        if !routes.iter().any(|x| r.is_met_by(&x.dst, x.gw)) {
            return Err(check_failed(format!(
                "route to {} missing on {}",
                r.describe(),
                req.ifname
            )));
        }
    }
    Ok(())
}

/// The host end exists and is a port of the configured bridge. Its MAC is not compared: it
/// may legitimately change after ADD.
pub fn check_host_side(
    net: &mut dyn Session,
    req: &Request,
    spec: &BridgeSpec,
    prev: &CniResult,
) -> Result<(), BridgeError> {
    let br = net
        .link(Ns::Host, &spec.bridge)?
        .filter(|l| l.is_bridge())
        .ok_or_else(|| check_failed(format!("bridge {} not found", spec.bridge)))?;
    let veth = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != spec.bridge.as_str())
        .map(|i| i.name.clone());
    let veth = match veth {
        Some(v) => v,
        None => plan::host_veth_name(&req.conf.name, &req.container_id, &req.ifname)
            .map_err(NetopsError::from)?
            .to_string(),
    };
    let hv = net
        .link(Ns::Host, &veth)?
        .ok_or_else(|| check_failed(format!("host interface {veth} not found")))?;
    if hv.master != Some(br.index) {
        return Err(check_failed(format!(
            "host interface {veth} is not a port of bridge {}",
            spec.bridge
        )));
    }
    Ok(())
}

pub fn gc(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let mut errors: Vec<BridgeError> = Vec::new();
    // Links a DEL retired but whose detached deleter was killed.
    if let Err(e) = ctx.net.delete_retired() {
        errors.push(e.into());
    }
    if let Err(e) = ctx
        .fw
        .get()
        .and_then(|fw| fw.gc(Feature::Network, &req.conf.name, &req.valid_pairs()))
    {
        errors.push(e.into());
    }
    if spec.has_ipam {
        if let Err(e) = ctx.ipam.run(req, Command::Gc) {
            errors.push(e.into());
        }
    }
    combine(errors)
}

pub fn status(ctx: &mut Ctx<'_>, req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    if spec.has_ipam {
        ctx.ipam.run(req, Command::Status)?;
    }
    Ok(())
}
