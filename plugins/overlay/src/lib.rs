//! `overlay`: a bridge attachment on a network that spans hosts over VXLAN.
//!
//! ADD: parse ([`config`]) -> underlay and VTEP -> `networks/<net>` in etcd -> the network's
//! bridge with its VXLAN port ([`dataplane`]) -> the bridge attachment ([`bridge_seam`]: IPAM
//! through etcd-ipam, veth, addresses, routes, firewall) -> `pods/<net>/<ip>` in etcd
//! ([`cluster`]); a failure there rolls the attachment back. The node agent (crates/agent)
//! programs the remote FDB entries from `hosts/` and `pods/`.
//!
//! DEL: the bridge attachment's DEL (from network, container and ifname alone), then this
//! node's `pods/` records of the attachment. Both go on past failures.
//!
//! Every verb takes a [`Ctx`] (node name, host kernel steps, bridge attachment, optional etcd
//! client): the plugin builds the real one, tests and the scale harness build fakes.

pub mod bridge_seam;
pub mod cluster;
pub mod config;
pub mod ctx;
pub mod dataplane;
pub mod error;

/// The record types and keys, shared with etcd-ipam and the agent (crates/cluster).
pub use ::cluster::schema;

use cni_core::{CniError, CniResult, Plugin, Request};

pub use crate::ctx::{Attachment, BridgeAttachment, Ctx, HostSide, KernelHost};
use crate::{cluster::Cluster, config::OverlaySpec, schema::PodRecord};

pub struct Overlay;

impl Plugin for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["MAC"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let (host, attachment) = (KernelHost::default(), BridgeAttachment);
        add(&Ctx::real(&host, &attachment), req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (host, attachment) = (KernelHost::default(), BridgeAttachment);
        del(&Ctx::real(&host, &attachment), req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (host, attachment) = (KernelHost::default(), BridgeAttachment);
        check(&Ctx::real(&host, &attachment), req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let spec = config::parse(req)?;
        let stdin = config::bridge_stdin(req, &spec, spec.mtu.unwrap_or(1450))?;
        BridgeAttachment.status(req, stdin, spec.internal)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let (host, attachment) = (KernelHost::default(), BridgeAttachment);
        gc(&Ctx::real(&host, &attachment), req)
    }
}

/// The context's etcd client, or one from the config.
fn cluster(ctx: &Ctx<'_>, spec: &OverlaySpec) -> Result<Cluster, CniError> {
    match ctx.etcd {
        Some(c) => Ok(Cluster::with_client(c.clone(), &spec.etcd_prefix)),
        None => Cluster::connect(spec),
    }
}

/// ADD (see the module doc).
pub fn add(ctx: &Ctx<'_>, req: &Request) -> Result<CniResult, CniError> {
    let spec = config::parse(req)?;
    let ul = ctx.host.underlay(&spec)?;
    let mtu = dataplane::pod_mtu(&spec, &ul)?;
    let stdin = config::bridge_stdin(req, &spec, mtu)?;
    let cluster = cluster(ctx, &spec)?;
    cluster.register_network(&spec, subnets_of(req))?;
    ctx.host
        .ensure(&spec, &ul, mtu, &mut || cluster.remote_vteps(ul.vtep))?;
    let result = ctx.attachment.add(req, stdin.clone(), spec.internal)?;
    let registered = register(&cluster, &spec, req, &ctx.node, ul.vtep, &result);
    if let Err(e) = registered {
        log::warn!(
            "{}: registering the pod failed, rolling back: {e}",
            req.tag()
        );
        if let Err(u) = ctx.attachment.del(req, stdin, spec.internal) {
            log::warn!("{}: rollback: {u}", req.tag());
        }
        return Err(e);
    }
    Ok(result)
}

fn register(
    cluster: &Cluster,
    spec: &OverlaySpec,
    req: &Request,
    node: &str,
    vtep: std::net::Ipv4Addr,
    result: &CniResult,
) -> Result<(), CniError> {
    let mac = bridge_seam::pod_mac(req, result).ok_or_else(|| {
        CniError::new(
            cni_core::ErrorCode::Kernel,
            format!("no MAC for {} in the bridge result", req.ifname),
        )
    })?;
    let ips: Vec<std::net::IpAddr> = result.ips.iter().map(|i| i.address.ip()).collect();
    cluster.register_pod(
        &spec.network,
        &ips,
        &PodRecord {
            node: node.to_string(),
            vtep,
            mac,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        },
    )
}

/// The ranges' subnets from the `ipam` section, for `networks/<net>` (informational).
fn subnets_of(req: &Request) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&req.stdin).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(sets) = v.pointer("/ipam/ranges").and_then(|r| r.as_array()) {
        for set in sets {
            for r in set.as_array().into_iter().flatten() {
                if let Some(s) = r.get("subnet").and_then(|s| s.as_str()) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

/// DEL (see the module doc).
pub fn del(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse(req)?;
    let node = &ctx.node;
    let mut errors = Vec::new();
    // The MTU only matters to ADD; the bridge code's DEL ignores it.
    let stdin = config::bridge_stdin(req, &spec, spec.mtu.unwrap_or(1450))?;
    if let Err(e) = ctx.attachment.del(req, stdin, spec.internal) {
        errors.push(e);
    }
    let removed = cluster(ctx, &spec).and_then(|c| {
        c.remove_pods(&spec.network, node, |r| {
            r.container_id == req.container_id && r.ifname == req.ifname
        })
    });
    if let Err(e) = removed {
        errors.push(e);
    }
    match errors.len() {
        0 => Ok(()),
        _ => {
            let first = errors.remove(0);
            let rest: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            if rest.is_empty() {
                Err(first)
            } else {
                Err(CniError::new(first.code, first.msg).with_details(rest.join("; ")))
            }
        }
    }
}

/// CHECK: the attachment, the network's devices, the pod's records.
pub fn check(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse(req)?;
    let stdin = config::bridge_stdin(req, &spec, spec.mtu.unwrap_or(1450))?;
    ctx.attachment.check(req, stdin, spec.internal)?;
    ctx.host.check(&spec)?;
    let prev = req.require_prev_result()?;
    let cluster = cluster(ctx, &spec)?;
    for ip in prev.container_ips(&req.ifname) {
        let ip = ip.address.ip();
        if !cluster.pod_registered(&spec.network, &ip, &req.container_id, &req.ifname)? {
            return Err(CniError::new(
                cni_core::ErrorCode::CheckFailed,
                format!("{ip} of {} is not registered in etcd", req.tag()),
            ));
        }
    }
    Ok(())
}

/// GC: the attachments' GC, then this node's pod records that `valid` does not list.
pub fn gc(ctx: &Ctx<'_>, req: &Request) -> Result<(), CniError> {
    let spec = config::parse(req)?;
    let node = &ctx.node;
    let stdin = config::bridge_stdin(req, &spec, spec.mtu.unwrap_or(1450))?;
    let mut errors = Vec::new();
    if let Err(e) = ctx.attachment.gc(req, stdin, spec.internal) {
        errors.push(e);
    }
    let valid = req.valid_attachments();
    let removed = cluster(ctx, &spec).and_then(|c| {
        c.remove_pods(&spec.network, node, |r| {
            !valid
                .iter()
                .any(|a| a.container_id == r.container_id && a.ifname == r.ifname)
        })
    });
    if let Err(e) = removed {
        errors.push(e);
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
