//! ADD, DEL, CHECK, GC, STATUS: the only code that touches the kernel and the firewall.
//!
//! ADD: validate -> open the netns -> IPAM -> plan (pure) -> apply with an undo log ->
//! firewall elements (last) -> result. A failure after IPAM rolls back the links and calls
//! IPAM DEL before answering.
//!
//! DEL works from (network, container id, ifname) alone: the host veth name is derived from
//! them, the firewall elements are owned by that key, IPAM releases by it. The netns may be
//! gone and prevResult missing.

use cni_core::{CniError, CniResult, Command, IfName, Request};
use ipnetwork::IpNetwork;
use netops::{Kernel, Link, NetNs, Netlink, NetopsError};
use nftplan::{Attachment, Feature, Firewall, NftError};

use crate::{
    apply::{self, Effects},
    config::{self, BridgeSpec, Mode},
    error::{combine, BridgeError},
    plan::{self, Ids},
};

fn check_failed(msg: String) -> BridgeError {
    BridgeError::Check(msg)
}

/// The key of everything this attachment owns in the firewall state.
pub fn attachment(req: &Request) -> Result<Attachment, NftError> {
    Attachment::new(&req.conf.name, &req.container_id, &req.ifname)
}

fn ifname_of(req: &Request) -> Result<IfName, BridgeError> {
    Ok(IfName::new(&req.ifname).map_err(NetopsError::from)?)
}

pub fn add(req: &Request, mode: Mode) -> Result<CniResult, CniError> {
    Ok(add_inner(req, mode)?)
}

/// parse -> read the kernel -> IPAM -> plan (pure) -> apply (undo on failure) -> result.
fn add_inner(req: &Request, mode: Mode) -> Result<CniResult, BridgeError> {
    let spec = config::parse(req, mode)?;
    let ids = Ids {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: ifname_of(req)?,
        netns: req.netns()?.clone(),
    };
    let ns = NetNs::open(&ids.netns)?;
    let kernel = Kernel::with_detacher(req.detach.clone())?;
    let host = kernel.host();
    let pod = kernel.pod(&ns)?;
    let view = apply::read_view(&host, &pod, &spec, &ids.ifname)?;
    plan::preflight(&spec, &ids, &view)?;
    let fw = Firewall::open_with(&req.detach)?;
    let ipam = if spec.has_ipam {
        req.delegate_ipam(Command::Add)?.unwrap_or_default()
    } else {
        CniResult::default()
    };
    let outcome = plan::build(&spec, &ids, &ipam, &view).and_then(|plan| {
        log::debug!("{}: plan:\n{}", req.tag(), plan.text());
        let mut fx = Effects {
            kernel: netops::KernelExec::new(&host, &pod),
            fw: &fw,
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
        let obs = apply::observe(&mut fx, &plan)?;
        Ok(plan.result(&obs, &ipam, req.conf.dns.as_ref()))
    });
    if outcome.is_err() && spec.has_ipam {
        if let Err(e) = req.delegate_ipam(Command::Del) {
            log::warn!(
                "{}: releasing the address after a failed ADD: {e}",
                req.tag()
            );
        }
    }
    outcome
}

/// DEL goes on past every failure and reports them all: links, firewall elements, IPAM.
pub fn del(req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let mut errors: Vec<BridgeError> = Vec::new();
    if let Err(e) = delete_links(req) {
        errors.push(e);
    }
    match Firewall::open_with(&req.detach).and_then(|fw| fw.detach_network(&attachment(req)?)) {
        // The internal network's last attachment: its kernel-level seal goes too.
        Ok(Some(last)) => {
            let unseal = Kernel::with_detacher(req.detach.clone()).and_then(|k| {
                let host = k.host();
                let mut subnets = seal_subnets(req, &host, last.bridge.as_str())?;
                for s in last.subnets {
                    if !subnets.contains(&s) {
                        subnets.push(s);
                    }
                }
                host.unseal_bridge(last.bridge.as_str(), &subnets)
            });
            if let Err(e) = unseal {
                errors.push(e.into());
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
    }
    if spec.has_ipam {
        if let Err(e) = req.delegate_ipam(Command::Del) {
            errors.push(e.into());
        }
    }
    combine(errors)
}

/// The subnets an internal network's seal covers, as DEL and CHECK know them: those of the
/// pod's addresses in the previous result and of the bridge's own addresses.
fn seal_subnets(
    req: &Request,
    host: &Netlink<'_>,
    bridge: &str,
) -> Result<Vec<IpNetwork>, NetopsError> {
    let mut out: Vec<IpNetwork> = Vec::new();
    let mut push = |a: IpNetwork| {
        if let std::net::IpAddr::V6(v6) = a.ip() {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return; // link-local: never routed
            }
        }
        let n = IpNetwork::new(a.network(), a.prefix()).unwrap_or(a);
        if !out.contains(&n) {
            out.push(n);
        }
    };
    if let Ok(Some(prev)) = req.prev_result() {
        for ip in prev.container_ips(&req.ifname) {
            push(ip.address);
        }
    }
    if let Some(br) = host.link(bridge)?.filter(|l| l.is_bridge()) {
        for a in host.addresses(&br, None)? {
            push(a);
        }
    }
    Ok(out)
}

/// Retire the host veth by its derived name (down, off the bridge, renamed, with its pod end;
/// the kernel's slow delete runs detached, see [`netops::Netlink::retire_veth`]); when it is
/// not there (created by another implementation, or already gone) delete `CNI_IFNAME` in the
/// netns if the netns still exists, as the reference does.
fn delete_links(req: &Request) -> Result<(), BridgeError> {
    let kernel = Kernel::with_detacher(req.detach.clone())?;
    let host = kernel.host();
    let name = plan::host_veth_name(&req.conf.name, &req.container_id, &req.ifname)
        .map_err(NetopsError::from)?;
    let ns = match req.netns.as_ref().map(NetNs::open) {
        None | Some(Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. })) => None,
        Some(Ok(ns)) => Some(ns),
        Some(Err(e)) => return Err(e.into()),
    };
    let pod = ns.as_ref().map(|ns| kernel.pod(ns)).transpose()?;
    if host.retire_veth(&name, pod.as_ref().map(|p| (p, req.ifname.as_str())))? {
        return Ok(());
    }
    if let Some(pod) = &pod {
        pod.delete_link(&req.ifname)?;
    }
    Ok(())
}

pub fn check(req: &Request, mode: Mode) -> Result<(), CniError> {
    Ok(check_inner(req, mode)?)
}

fn check_inner(req: &Request, mode: Mode) -> Result<(), BridgeError> {
    let spec = config::parse(req, mode)?;
    let prev = req.require_prev_result()?;
    let netns = req.netns()?;
    let ns = NetNs::open(netns)?;
    let kernel = Kernel::with_detacher(req.detach.clone())?;
    let host = kernel.host();
    let pod = kernel.pod(&ns)?;
    let link = pod.link(&req.ifname)?.ok_or_else(|| {
        check_failed(format!(
            "interface {} not found in {}",
            req.ifname,
            netns.display()
        ))
    })?;
    check_pod_link(req, &prev, &pod, &link)?;
    check_host_side(req, &spec, &prev, &host)?;
    if spec.mode == Mode::Internal {
        let subnets = seal_subnets(req, &host, spec.bridge.as_str())?;
        let missing = host.missing_seal(spec.bridge.as_str(), &subnets)?;
        if !missing.is_empty() {
            return Err(check_failed(format!(
                "kernel-level seal of {} incomplete, missing: {}",
                spec.bridge,
                missing.join("; ")
            )));
        }
    }
    if spec.has_ipam {
        req.delegate_ipam(Command::Check)?;
    }
    let att = attachment(req)?;
    let missing = Firewall::open_with(&req.detach)?.check_network(&att)?;
    Ok(nftplan::missing_error("firewall elements", &att, &missing)?)
}

/// Stable properties of the pod side: the MAC we reported, every address and route.
fn check_pod_link(
    req: &Request,
    prev: &CniResult,
    pod: &Netlink<'_>,
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
    let addrs = pod.addresses(link, None)?;
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
    let routes = pod.routes(Some(link), None)?;
    for r in &prev.routes {
        let found = routes.iter().any(|x| {
            x.dst.network() == r.dst.network()
                && x.dst.prefix() == r.dst.prefix()
                && (r.gw.is_none() || x.gw == r.gw)
        });
        if !found {
            return Err(check_failed(format!(
                "route to {}{} missing on {}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                req.ifname
            )));
        }
    }
    Ok(())
}

/// The host end exists and is a port of the configured bridge. Its MAC is not compared: it
/// may legitimately change after ADD.
fn check_host_side(
    req: &Request,
    spec: &BridgeSpec,
    prev: &CniResult,
    host: &Netlink<'_>,
) -> Result<(), BridgeError> {
    let br = host
        .link(&spec.bridge)?
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
    let hv = host
        .link(&veth)?
        .ok_or_else(|| check_failed(format!("host interface {veth} not found")))?;
    if hv.master != Some(br.index) {
        return Err(check_failed(format!(
            "host interface {veth} is not a port of bridge {}",
            spec.bridge
        )));
    }
    Ok(())
}

pub fn gc(req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let mut errors: Vec<BridgeError> = Vec::new();
    // Links a DEL retired but whose detached deleter was killed.
    if let Err(e) =
        Kernel::with_detacher(req.detach.clone()).and_then(|k| k.host().delete_retired())
    {
        errors.push(e.into());
    }
    if let Err(e) = Firewall::open_with(&req.detach)
        .and_then(|fw| fw.gc(Feature::Network, &req.conf.name, &req.valid_pairs()))
    {
        errors.push(e.into());
    }
    if spec.has_ipam {
        if let Err(e) = req.delegate_ipam(Command::Gc) {
            errors.push(e.into());
        }
    }
    combine(errors)
}

pub fn status(req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    if spec.has_ipam {
        req.delegate_ipam(Command::Status)?;
    }
    Ok(())
}
