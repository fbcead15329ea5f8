//! `overlay`: a network that spans hosts, routed per node block over VXLAN (docs/overlay.md).
//!
//! ADD: parse ([`config`]) -> underlay, VTEP and pod MTU -> node identity, the network's VNI
//! and this node's blocks: from the agent's file when it vouches for them, else one etcd read
//! ([`cluster`]) -> the network's lock and the host's view -> `networks/<net>` when this host's
//! device is about to be created -> IPAM (etcd-ipam: an address of one of this node's blocks,
//! on this host's leases; etcd only to claim a block) -> the plan ([`plan`]: the bridge
//! plugin's plan shaped for a routed overlay, plus the network's device, table and rules) -> apply (undone on failure, the
//! address released) -> result. The node agent (crates/agent) programs the other hosts'
//! blocks on the device.
//!
//! DEL: the pod's side (veth, firewall elements), the address, and, when no pod of the network
//! is left on the host, the network's device, table and rules. Goes on past failures.
//!
//! Every verb takes a [`Ctx`] (node name, host side, IPAM, optional etcd client): the plugin
//! builds the real one, tests and the scale harness build fakes.

pub mod cluster;
pub mod config;
pub mod ctx;
pub mod error;
pub mod kernel;
pub mod plan;

/// The record types and keys, shared with etcd-ipam and the agent (crates/cluster).
pub use ::cluster::schema;

use bridge_plugin::plan::{preflight, Ids};
use cni_core::{CniError, CniResult, Command, IfName, Plugin, Request};

use crate::{
    cluster::Cluster,
    config::{OverlaySpec, VXLAN6_OVERHEAD, VXLAN_OVERHEAD},
    error::{combine, OverlayError},
    plan::Underlay,
};
pub use crate::{
    ctx::{Ctx, DelegateIpam, HostSide, Ipam, NetLock, SharedEtcdIpam},
    kernel::KernelHost,
};

pub struct Overlay;

impl Plugin for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["MAC"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        // One etcd client for the overlay's reads and etcd-ipam's (run in this process): one
        // connection, one TLS handshake per ADD (docs/overlay.md, "What an ADD costs").
        let spec = config::parse(req)?;
        let client = Cluster::client(&spec)?;
        let host = KernelHost::new(&req.detach);
        let ipam = SharedEtcdIpam::new(&client, etcd_ipam::EtcdIpam::from_env());
        let ctx = Ctx {
            etcd: Some(&client),
            ..Ctx::real(&host, &ipam)
        };
        Ok(add_parsed(&ctx, req, spec)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (host, ipam) = (KernelHost::new(&req.detach), DelegateIpam);
        del(&Ctx::real(&host, &ipam), req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (host, ipam) = (KernelHost::new(&req.detach), DelegateIpam);
        check(&Ctx::real(&host, &ipam), req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        config::parse(req)?;
        DelegateIpam.run(req, Command::Status).map(drop)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let (host, ipam) = (KernelHost::new(&req.detach), DelegateIpam);
        gc(&Ctx::real(&host, &ipam), req)
    }
}

/// The context's etcd client, or one from the config.
fn cluster<'a>(ctx: &Ctx<'a>, spec: &OverlaySpec) -> Result<Cluster<'a>, OverlayError> {
    match ctx.etcd {
        Some(s) => Ok(Cluster::with_store(s, &spec.etcd_prefix)),
        None => Cluster::connect(spec),
    }
}

/// The pod MTU: `mtu`, or the underlay's minus the VXLAN overhead of its family.
pub fn pod_mtu(spec: &OverlaySpec, ul: &Underlay) -> Result<u32, CniError> {
    let overhead = if ul.vtep.is_ipv6() {
        VXLAN6_OVERHEAD
    } else {
        VXLAN_OVERHEAD
    };
    match spec.mtu {
        Some(m) => Ok(m),
        None => ul
            .link
            .mtu
            .checked_sub(overhead)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                CniError::config(
                    "mtu",
                    format!("underlay {} MTU {} is too small", ul.link.name, ul.link.mtu),
                )
            }),
    }
}

fn ids(req: &Request) -> Result<Ids, OverlayError> {
    Ok(Ids {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: IfName::new(&req.ifname).map_err(netops::NetopsError::from)?,
        netns: req.netns()?.clone(),
    })
}

/// The network's record and this node's blocks from the agent's file, when it can stand for
/// the preflight read ([`cluster::node_state`]): this node, this VTEP, the lease renewed in the
/// last 15 s (so no other host can take this node's blocks now), the network listed with this
/// VNI. The node's identity was checked by the agent, which holds `hosts/<node>` for this VTEP.
fn agent_view(
    ctx: &Ctx<'_>,
    spec: &OverlaySpec,
    vtep: std::net::IpAddr,
) -> Option<(
    schema::NetworkRecord,
    std::collections::BTreeSet<ipnetwork::IpNetwork>,
)> {
    use ::cluster::node_state;
    let dir = node_state::node_dir(ctx.agent.as_deref()?, &spec.etcd_prefix, &ctx.node.name)?;
    let mut st = node_state::load(&node_state::state_file(&dir))?;
    let now = node_state::boottime_ms();
    if !st.usable(&ctx.node.name, vtep, &spec.network, spec.vni, now) {
        log::debug!("the agent's file does not vouch for this ADD: reading etcd");
        return None;
    }
    let net = st.networks.remove(&spec.network)?;
    Some((net, st.blocks.remove(&spec.network).unwrap_or_default()))
}

/// ADD (see the module doc).
pub fn add(ctx: &Ctx<'_>, req: &Request) -> Result<CniResult, CniError> {
    let spec = config::parse(req)?;
    Ok(add_parsed(ctx, req, spec)?)
}

/// ADD of a config parsed once (its TLS files read and checked once per ADD).
fn add_parsed(ctx: &Ctx<'_>, req: &Request, spec: OverlaySpec) -> Result<CniResult, OverlayError> {
    let ul = ctx.host.underlay(&spec)?;
    let mtu = pod_mtu(&spec, &ul)?;
    let bspec = config::bridge_spec(req, &spec, mtu)?;
    let ids = ids(req)?;
    let cluster = cluster(ctx, &spec)?;
    // Node identity and the network's VNI, before the first side effect: from the agent's
    // file when it vouches for them (no etcd call), else in one read with the IPAM's (this
    // node's blocks): one round trip for both.
    let (known, ahead) = match agent_view(ctx, &spec, ul.vtep) {
        Some((net, blocks)) => (Some(net), Some(etcd_ipam::Ahead::Agent(blocks))),
        None => {
            let reads = ctx.ipam.add_reads(req)?;
            let (known, answers) = cluster.preflight(&spec, &ctx.node, ul.vtep, &reads)?;
            let ahead = (!reads.is_empty()).then_some(etcd_ipam::Ahead::Etcd(answers));
            (known, ahead)
        }
    };
    // The network's device is created by the first ADD on the host, under the exclusive lock;
    // later ADDs share the lock, so the last DEL cannot remove the device under them.
    let mut lock = ctx.host.lock(&spec, false)?;
    let mut view = ctx.host.read(&spec, &bspec, &ids)?;
    if view.vxlan.is_none() {
        drop(lock);
        lock = ctx.host.lock(&spec, true)?;
        view = ctx.host.read(&spec, &bspec, &ids)?;
    }
    preflight(&bspec, &ids, &view.bridge)?;
    plan::preflight(&spec, &ul, &view)?;
    if view.vxlan.is_none() || known.is_none() {
        // Before the device exists: an agent that sees the device finds its network.
        cluster.register_network(&spec)?;
    }
    let ipam = ctx.ipam.add(req, ahead)?.unwrap_or_default();
    let outcome = plan::build(&spec, &bspec, &ids, &ipam, &view, &ul, mtu).and_then(|plan| {
        log::debug!("{}: plan:\n{}", req.tag(), plan.text());
        let obs = ctx.host.apply(&plan)?;
        Ok(plan.result(&obs, &ipam, req.conf.dns.as_ref()))
    });
    drop(lock);
    if outcome.is_err() {
        if let Err(e) = ctx.ipam.run(req, Command::Del) {
            log::warn!(
                "{}: releasing the address after a failed ADD: {e}",
                req.tag()
            );
        }
    }
    outcome
}

/// The network's device, table and rules go when no pod of the network is left on the host
/// (checked again under the exclusive lock: an ADD in flight holds the shared one).
fn teardown_if_unused(ctx: &Ctx<'_>, spec: &OverlaySpec) -> Vec<OverlayError> {
    match ctx.host.in_use(spec) {
        Ok(true) => return Vec::new(),
        Ok(false) => {}
        Err(e) => return vec![e],
    }
    let _lock = match ctx.host.lock(spec, true) {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    match ctx.host.in_use(spec) {
        Ok(true) => Vec::new(),
        Ok(false) => ctx.host.teardown(&plan::teardown_ops(spec)),
        Err(e) => vec![e],
    }
}

/// DEL (see the module doc).
pub fn del(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse_for_del(req)?;
    let mut errors = ctx.host.detach(req, &spec);
    if let Err(e) = ctx.ipam.run(req, Command::Del) {
        errors.push(e.into());
    }
    errors.extend(teardown_if_unused(ctx, &spec));
    combine(errors)
}

/// CHECK: the pod, the host's bridge, device, table, rules and firewall elements, and the
/// address in etcd (etcd-ipam's CHECK).
pub fn check(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse(req)?;
    let prev = req.require_prev_result()?;
    let ul = ctx.host.underlay(&spec)?;
    let mtu = pod_mtu(&spec, &ul)?;
    let bspec = config::bridge_spec(req, &spec, mtu)?;
    ctx.host.check(req, &spec, &bspec, &prev, &ul)?;
    ctx.ipam.run(req, Command::Check)?;
    Ok(())
}

/// GC: the host side and the IPAM of attachments the runtime does not list (this node's
/// only: etcd-ipam collects only this node's addresses, never when another host holds the
/// node name), then the network's device if no pod is left. Reports every failure.
pub fn gc(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse(req)?;
    let mut errors = ctx.host.gc(req, &spec);
    let identity = ctx.host.underlay(&spec).and_then(|ul| {
        let c = cluster(ctx, &spec)?;
        c.check_node(&ctx.node, ul.vtep)
    });
    match identity {
        Ok(()) => {
            if let Err(e) = ctx.ipam.run(req, Command::Gc) {
                errors.push(e.into());
            }
        }
        Err(e) => errors.push(e),
    }
    errors.extend(teardown_if_unused(ctx, &spec));
    combine(errors)
}

#[cfg(test)]
mod tests;
