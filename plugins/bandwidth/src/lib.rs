//! `bandwidth`: a drop-in for the reference bandwidth plugin, chained after an
//! interface-creating plugin (bridge, ptp, ...). Traffic towards the pod is shaped by a TBF on
//! the pod's host-side veth; traffic from the pod is redirected from the veth's ingress to an
//! IFB device and shaped by a TBF there, as the reference does; the runtimes' huge bursts are
//! capped ([`plan`]). All over netlink: no `tc` process.
//!
//! parse ([`config`]) -> find the host veth (the pod interface's veth peer, listed in
//! prevResult) -> plan ([`plan`]: pure, printed as `tc` commands) -> apply with an undo of
//! every completed step -> result (prevResult plus the IFB). DEL removes the IFBs (named from
//! network + container id alone) and the qdiscs when the veth is still there. CHECK compares
//! the qdiscs, filters and IFBs with the plan. GC removes IFBs of this network (ours carry an
//! alias naming network and container) whose container is not in the valid list.

pub mod config;
pub mod plan;

use cni_core::{CniError, CniResult, ErrorCode, Interface, Plugin, Request};
use netops::{tc, Executor, Kernel, Link, NetNs, Netlink, NetopsError};

use crate::plan::{Step, Target};

pub struct Bandwidth;

cni_core::plugin_error! {
    /// The plugin's errors, mapped to CNI codes once ([`From<BandwidthError> for CniError`]).
    pub enum BandwidthError {
        Kernel(NetopsError),
    }
}

/// The error of a failed step (the steps before it undone): its own, with the step's command
/// added to `details`.
fn at_step(e: CniError, command: &str) -> CniError {
    let at = format!("at: {command}");
    let details = if e.details.is_empty() {
        at
    } else {
        format!("{}; {at}", e.details)
    };
    CniError::new(e.code, e.msg).with_details(details)
}

type Result<T> = std::result::Result<T, BandwidthError>;

/// The host side of the pod interface `ifname`: its veth peer, which the previous result must
/// list as a host interface (the reference's `getHostInterface`).
fn host_veth(
    req: &Request,
    prev: &CniResult,
    host: &Netlink<'_>,
    pod: &Netlink<'_>,
) -> Result<Link> {
    let no_peer = |why: &str| {
        BandwidthError::Cni(CniError::new(
            ErrorCode::InvalidConfig,
            format!("container interface {} has no veth peer: {why}", req.ifname),
        ))
    };
    let inside = pod
        .link(&req.ifname)?
        .ok_or_else(|| no_peer("it does not exist"))?;
    if inside.kind.as_deref() != Some("veth") {
        return Err(no_peer(&format!(
            "it is a {}",
            inside.kind.as_deref().unwrap_or("device of no kind")
        )));
    }
    let peer = inside
        .parent
        .ok_or_else(|| no_peer("the kernel names no peer"))?;
    let link = host
        .link_by_index(peer)?
        .filter(|l| l.kind.as_deref() == Some("veth") && l.parent == Some(inside.index))
        .ok_or_else(|| no_peer("the peer is not in this plugin's netns"))?;
    if !prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_empty() && i.name == link.name)
    {
        return Err(BandwidthError::Cni(CniError::config(
            "prevResult.interfaces",
            format!(
                "the veth peer {} of {} is not a host interface of the previous result",
                link.name, req.ifname
            ),
        )));
    }
    Ok(link)
}

fn target(req: &Request, veth: &Link) -> Result<Target> {
    Ok(Target {
        veth: cni_core::IfName::new(&veth.name).map_err(NetopsError::from)?,
        mtu: veth.mtu,
        egress_ifb: plan::ifb_name(plan::EGRESS_IFB_PREFIX, &req.conf.name, &req.container_id)?,
        ingress_ifb: plan::ifb_name(plan::INGRESS_IFB_PREFIX, &req.conf.name, &req.container_id)?,
        alias: plan::ifb_alias(&req.conf.name, &req.container_id),
    })
}

/// Runs [`Step`]s on the host netns.
struct Effects<'a, 'k> {
    host: &'a Netlink<'k>,
}

impl Effects<'_, '_> {
    fn link(&self, name: &str) -> Result<Link> {
        Ok(self.host.require_link(name)?)
    }
}

impl Executor<Step> for Effects<'_, '_> {
    type Error = BandwidthError;

    fn exec(&mut self, step: &Step) -> Result<bool> {
        match step {
            Step::CreateIfb { name, mtu, alias } => {
                if let Some(old) = self.host.link(name)? {
                    // Ours, for this very attachment: a DEL that never came. Anything else
                    // with that name is not ours to take.
                    if old.alias.as_deref() != Some(alias.as_str())
                        || old.kind.as_deref() != Some("ifb")
                    {
                        return Err(BandwidthError::Cni(CniError::new(
                            ErrorCode::Conflict,
                            format!("a link named {name} already exists and is not this pod's IFB"),
                        )));
                    }
                    log::info!("replacing the stale IFB {name}");
                    self.host.delete_link(name)?;
                }
                let l = self.host.create_ifb(name, Some(*mtu))?;
                if let Err(e) = self.host.set_alias(&l, alias) {
                    let _ = self.host.delete_link(name);
                    return Err(e.into());
                }
                Ok(true)
            }
            Step::AddTbf { link, shaping } => {
                let l = self.link(link)?;
                self.host.add_tbf(&l, &shaping.tbf)?;
                Ok(true)
            }
            Step::AddIngress { link } => {
                let l = self.link(link)?;
                self.host.add_ingress_qdisc(&l)?;
                Ok(true)
            }
            Step::AddClsact { link } => {
                let l = self.link(link)?;
                self.host.add_clsact(&l)?;
                Ok(true)
            }
            Step::AddFilter { link, filter } => {
                let l = self.link(link)?;
                let target = match &filter.redirect {
                    Some(t) => Some(self.link(t)?.index),
                    None => None,
                };
                self.host.add_u32_filter(&l, &filter.resolve(target))?;
                Ok(true)
            }
            Step::DeleteLink { link } => Ok(self.host.delete_link(link)?),
            Step::DeleteQdisc { link, parent } => match self.host.link(link)? {
                Some(l) => Ok(self.host.delete_qdisc(&l, *parent)?),
                None => Ok(false),
            },
        }
    }

    fn is_gone(e: &BandwidthError) -> bool {
        matches!(e, BandwidthError::Kernel(k) if k.is_not_found())
    }
}

/// The plan of ADD and CHECK: for the host veth of the pod's interface, on this kernel.
fn plan_for(
    req: &Request,
    spec: &config::Spec,
    prev: &CniResult,
    host: &Netlink<'_>,
    pod: &Netlink<'_>,
) -> Result<Vec<Step>> {
    let veth = host_veth(req, prev, host, pod)?;
    let t = target(req, &veth)?;
    Ok(plan::build(spec, &t, tc::psched_ticks_per_usec())?)
}

fn add(req: &Request) -> Result<CniResult> {
    let Some(spec) = config::parse(req)? else {
        // Nothing to shape: the previous result passes on untouched.
        return Ok(req.prev_result()?.unwrap_or_default());
    };
    let mut prev = req.prev_result()?.ok_or_else(|| {
        CniError::config(
            "prevResult",
            "missing: bandwidth must be called as a chained plugin",
        )
    })?;
    let ns = NetNs::open(req.netns()?)?;
    let kernel = Kernel::new()?;
    let host = kernel.host();
    let steps = plan_for(req, &spec, &prev, &host, &kernel.pod(&ns)?)?;
    log::debug!("{}: plan:\n{}", req.tag(), plan::text(&steps));
    for s in &steps {
        if let Step::AddTbf { link, shaping } = s {
            if shaping.burst_bytes != shaping.asked_bytes {
                log::info!(
                    "{}: {link}: burst {} bytes asked, {} used (at most 100 ms of the rate, at least one frame)",
                    req.tag(),
                    shaping.asked_bytes,
                    shaping.burst_bytes
                );
            }
        }
    }
    let mut fx = Effects { host: &host };
    netops::apply(&steps, &mut fx).map_err(|f| {
        for u in &f.undo_errors {
            log::warn!("{}: rollback: {u}", req.tag());
        }
        BandwidthError::Cni(at_step(f.error.into(), &f.op.to_string()))
    })?;
    for s in &steps {
        if let Step::CreateIfb { name, .. } = s {
            let l = host.require_link(name)?;
            prev.interfaces.push(Interface {
                name: l.name.clone(),
                mac: l.mac.map(|m| m.to_string()).unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    Ok(prev)
}

/// DEL: the IFBs by name (they hold no state elsewhere), then our qdiscs on the host veth when
/// the pod and its veth are still there. Goes on past failures; the config is not required to
/// be valid (a DEL after an ADD that refused it must succeed).
fn del(req: &Request) -> std::result::Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    let kernel = Kernel::new().map_err(BandwidthError::from)?;
    let host = kernel.host();
    for prefix in [plan::EGRESS_IFB_PREFIX, plan::INGRESS_IFB_PREFIX] {
        let name = plan::ifb_name(prefix, &req.conf.name, &req.container_id)?;
        if let Err(e) = host.delete_link(&name) {
            errors.push(BandwidthError::from(e).into());
        }
    }
    if let Err(e) = del_qdiscs(req, &kernel, &host) {
        errors.push(e.into());
    }
    cni_core::error::combine(errors)
}

fn del_qdiscs(req: &Request, kernel: &Kernel, host: &Netlink<'_>) -> Result<()> {
    let (Some(netns), Ok(Some(prev))) = (req.netns.as_ref(), req.prev_result()) else {
        return Ok(());
    };
    let ns = match NetNs::open(netns) {
        Ok(ns) => ns,
        Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let pod = kernel.pod(&ns)?;
    let Ok(veth) = host_veth(req, &prev, host, &pod) else {
        return Ok(());
    };
    for q in host.qdiscs(&veth)? {
        let ours = (q.kind == "tbf" && q.handle == tc::ROOT_HANDLE)
            || ((q.kind == "ingress" || q.kind == "clsact") && q.handle == tc::INGRESS_HANDLE);
        if ours {
            host.delete_qdisc(&veth, q.parent)?;
        }
    }
    Ok(())
}

fn check(req: &Request) -> Result<()> {
    let Some(spec) = config::parse(req)? else {
        return Ok(());
    };
    let prev = req.require_prev_result()?;
    let ns = NetNs::open(req.netns()?)?;
    let kernel = Kernel::new()?;
    let host = kernel.host();
    let steps = plan_for(req, &spec, &prev, &host, &kernel.pod(&ns)?)?;
    let failed = |s: &Step, why: String| {
        BandwidthError::Cni(CniError::new(
            ErrorCode::CheckFailed,
            format!("{why} (expected: {s})"),
        ))
    };
    for s in &steps {
        match s {
            Step::CreateIfb { name, .. } => {
                let l = host.link(name)?;
                if l.as_ref().and_then(|l| l.kind.as_deref()) != Some("ifb") {
                    return Err(failed(s, format!("IFB {name} missing")));
                }
            }
            Step::AddTbf { link, shaping } => {
                let l = host.require_link(link)?;
                let qd = host.qdiscs(&l)?;
                let tbf = qd.iter().find(|q| q.kind == "tbf").and_then(|q| q.tbf);
                if tbf != Some(shaping.tbf) {
                    return Err(failed(s, format!("{link}: tbf is {tbf:?}")));
                }
            }
            Step::AddIngress { link } | Step::AddClsact { link } => {
                let kind = if matches!(s, Step::AddIngress { .. }) {
                    "ingress"
                } else {
                    "clsact"
                };
                let l = host.require_link(link)?;
                if !host.qdiscs(&l)?.iter().any(|q| q.kind == kind) {
                    return Err(failed(s, format!("{link}: no {kind} qdisc")));
                }
            }
            Step::AddFilter { link, filter } => {
                let l = host.require_link(link)?;
                let target = match &filter.redirect {
                    Some(t) => Some(host.require_link(t)?.index),
                    None => None,
                };
                let want = filter.resolve(target);
                if !host.u32_filters(&l, filter.parent)?.contains(&want) {
                    return Err(failed(s, format!("{link}: filter missing")));
                }
            }
            Step::DeleteLink { .. } | Step::DeleteQdisc { .. } => {}
        }
    }
    Ok(())
}

/// GC: our IFBs of this network (alias `cnirs-bandwidth NETWORK CONTAINERID`) whose container
/// is not in the valid list.
fn gc(req: &Request) -> Result<()> {
    let kernel = Kernel::new()?;
    let host = kernel.host();
    let prefix = format!("{} {} ", plan::ALIAS_PREFIX, req.conf.name);
    let valid: Vec<String> = req.valid_pairs().into_iter().map(|(c, _)| c).collect();
    let mut errors = Vec::new();
    for l in host.links()? {
        let Some(id) = l.alias.as_deref().and_then(|a| a.strip_prefix(&prefix)) else {
            continue;
        };
        if l.kind.as_deref() == Some("ifb") && !valid.iter().any(|v| v == id) {
            log::info!("gc: {} (container {id})", l.name);
            if let Err(e) = host.delete_link(&l.name) {
                errors.push(CniError::from(BandwidthError::from(e)));
            }
        }
    }
    Ok(cni_core::error::combine(errors)?)
}

impl Plugin for Bandwidth {
    fn name(&self) -> &'static str {
        "bandwidth"
    }

    fn any_args(&self) -> bool {
        true
    }

    fn add(&self, req: &Request) -> std::result::Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> std::result::Result<(), CniError> {
        del(req)
    }

    fn check(&self, req: &Request) -> std::result::Result<(), CniError> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> std::result::Result<(), CniError> {
        Ok(gc(req)?)
    }
}
