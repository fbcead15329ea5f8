//! ADD, DEL, CHECK, GC, STATUS: the only code that touches the kernel and the firewall.
//!
//! ADD: validate -> open the netns -> IPAM -> plan (pure) -> apply with an undo log ->
//! firewall elements (last) -> result. A failure after IPAM rolls back the links and calls
//! IPAM DEL before answering.
//!
//! DEL works from (network, container id, ifname) alone: the host veth name is derived from
//! them, the firewall elements are owned by that key, IPAM releases by it. The netns may be
//! gone and prevResult missing.

use cni_core::{CniError, CniResult, Command, ErrorCode, Request};
use netops::{
    BridgePortOpts, Family, Kernel, Link, NetNs, Netlink, NetopsError, RouteSpec, Side, SysctlKey,
    UndoLog, UndoOp, VethSpec,
};
use nftplan::{Attachment, Feature, Firewall, IfName, NetworkElems, PodIface};

use crate::{
    config::{self, BridgeSpec, Mode},
    plan::{self, mac_string, Observed, Plan},
};

fn check_failed(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, msg)
}

pub fn add(req: &Request, mode: Mode) -> Result<CniResult, CniError> {
    let spec = config::parse(req, mode)?;
    let netns = req.netns()?.clone();
    let ns = NetNs::open(&netns)?;
    let kernel = Kernel::new()?;
    let pod = kernel.pod(&ns)?;
    if pod.link(&req.ifname)?.is_some() {
        return Err(CniError::new(
            ErrorCode::Conflict,
            format!(
                "interface {} already exists in {}",
                req.ifname,
                netns.display()
            ),
        ));
    }
    let fw = Firewall::open()?;
    let att = Attachment::of(req)?;
    let ipam = if spec.has_ipam {
        req.delegate_ipam(Command::Add)?.unwrap_or_default()
    } else {
        CniResult::default()
    };
    let outcome = plan::build(&spec, req, &ipam).and_then(|plan| {
        let host = kernel.host();
        let mut undo = UndoLog::new();
        match apply(&plan, &host, &pod, &fw, &att, &mut undo) {
            Ok(obs) => {
                undo.commit();
                Ok(plan.result(&obs, &netns.to_string_lossy(), &ipam, req))
            }
            Err(e) => {
                for u in undo.rollback(&host, Some(&pod)) {
                    log::warn!("{}: rollback: {u}", req.tag());
                }
                Err(e)
            }
        }
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

fn apply(
    plan: &Plan,
    host: &Netlink<'_>,
    pod: &Netlink<'_>,
    fw: &Firewall,
    att: &Attachment,
    undo: &mut UndoLog,
) -> Result<Observed, CniError> {
    let br = host.ensure_bridge(&plan.bridge, plan.bridge_mtu, false)?;
    // The kernel-level seal of an internal network (policy rules, independent of nftables),
    // before any pod is plugged in; a new non-internal bridge drops a stale one.
    if plan.firewall.internal {
        host.seal_bridge(&plan.bridge)?;
    } else if br.created {
        host.unseal_bridge(&plan.bridge)?;
    }
    if br.created {
        // Pin the bridge MAC, or it follows the lowest port MAC as pods come and go.
        if let Some(mac) = br.link.mac {
            host.set_mac(&br.link, mac)?;
        }
    }
    if plan.promisc && !br.link.promisc {
        host.set_promisc(&br.link, true)?;
    }
    ensure_bridge_addrs(host, &br.link, plan)?;
    let pair = host.create_veth(
        &VethSpec {
            host_name: plan.host_veth.clone(),
            peer_name: plan.pod_ifname.clone(),
            mtu: plan.mtu,
            peer_mac: plan.mac.map(netops::MacAddr),
            up: true,
        },
        pod,
    )?;
    undo.push(UndoOp::DeleteLink {
        side: Side::Host,
        name: plan.host_veth.clone(),
    });
    host.attach_to_bridge(&pair.host, &br.link)?;
    if plan.hairpin || plan.port_isolation {
        host.set_bridge_port(
            &pair.host,
            BridgePortOpts {
                hairpin: plan.hairpin.then_some(true),
                isolated: plan.port_isolation.then_some(true),
            },
        )?;
    }
    pod.loopback_up()?;
    for a in &plan.pod_addrs {
        pod.add_address(&pair.peer, *a, !plan.nodad)?;
    }
    let mut skipped_routes = Vec::new();
    for r in &plan.pod_routes {
        match pod.add_route(
            &pair.peer,
            &RouteSpec {
                dst: r.dst,
                gw: r.gw,
                priority: r.priority,
            },
        ) {
            // A pod on two networks: the first network's default gateway wins, as in Docker
            // (the reference fails the second ADD here).
            Err(e) if e.is_exists() && r.dst.prefix() == 0 => {
                log::info!("{}: pod already has a default route; keeping it", att);
                skipped_routes.push(r.dst);
            }
            Err(e) => return Err(e.into()),
            Ok(()) => {}
        }
    }
    if plan.forward_v4 {
        ensure_sysctl("net.ipv4.ip_forward")?;
    }
    if plan.forward_v6 {
        ensure_sysctl("net.ipv6.conf.all.forwarding")?;
    }
    // Last step, so nothing after it can fail and leave elements behind.
    fw.attach_network_pod(
        att,
        &NetworkElems {
            bridge: IfName::new(&plan.firewall.bridge)?,
            masq: plan.firewall.masq.clone(),
            subnets: plan.firewall.subnets.clone(),
            internal: plan.firewall.internal,
            spoof_check: match (plan.macspoofchk, pair.peer.mac) {
                (true, Some(mac)) => Some((IfName::new(&plan.host_veth)?, mac_string(&mac.0))),
                _ => None,
            },
        },
        Some(PodIface {
            ips: plan.pod_addrs.clone(),
            mac: pair.peer.mac.map(|m| mac_string(&m.0)),
            host_ifname: IfName::new(&plan.host_veth).ok(),
        }),
    )?;
    Ok(Observed {
        bridge_mac: br.link.mac.map(|m| mac_string(&m.0)).unwrap_or_default(),
        host_mac: pair.host.mac.map(|m| mac_string(&m.0)).unwrap_or_default(),
        pod_mac: pair.peer.mac.map(|m| mac_string(&m.0)).unwrap_or_default(),
        pod_mtu: Some(pair.peer.mtu),
        skipped_routes,
    })
}

/// Set a host sysctl to 1 unless it already is (a read is cheaper than a write that may
/// trigger work in the kernel, and most calls find it set).
fn ensure_sysctl(key: &str) -> Result<(), CniError> {
    let k = SysctlKey::parse(key)?;
    if netops::sysctl::read(&k)?.trim() != "1" {
        netops::sysctl::write(&k, "1")?;
    }
    Ok(())
}

/// The gateway addresses on the bridge, with the reference's `forceAddress` semantics: one
/// IPv4 address per bridge; IPv6 addresses may coexist unless their subnets overlap.
fn ensure_bridge_addrs(host: &Netlink<'_>, br: &Link, plan: &Plan) -> Result<(), CniError> {
    for want in &plan.bridge_addrs {
        let have = host.addresses(br, Some(Family::of(&want.ip())))?;
        if have.contains(want) {
            continue;
        }
        for a in have {
            if let std::net::IpAddr::V6(v6) = a.ip() {
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    continue; // link-local
                }
            }
            let clash = want.is_ipv4() || a.contains(want.ip()) || want.contains(a.ip());
            if !clash {
                continue;
            }
            if plan.force_address {
                host.delete_address(br, a)?;
            } else {
                return Err(CniError::new(
                    ErrorCode::Conflict,
                    format!(
                        "bridge {} already has address {a}, different from {want}: \
                         another network uses this bridge (set forceAddress to replace it)",
                        plan.bridge
                    ),
                ));
            }
        }
        match host.add_address(br, *want, false) {
            Err(e) if !e.is_exists() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

pub fn del(req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let mut errors: Vec<CniError> = Vec::new();
    if let Err(e) = delete_links(req) {
        errors.push(e);
    }
    match Firewall::open().and_then(|fw| fw.detach_network(&Attachment::of(req)?)) {
        // The internal network's last attachment: its kernel-level seal goes too.
        Ok(Some(bridge)) => {
            if let Err(e) = Kernel::new().and_then(|k| k.host().unseal_bridge(bridge.as_str())) {
                errors.push(e.into());
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
    }
    if spec.has_ipam {
        if let Err(e) = req.delegate_ipam(Command::Del) {
            errors.push(e);
        }
    }
    combine(errors)
}

/// Delete the host veth by its derived name (which removes the pod end too); when it is not
/// there (created by another implementation, or already gone) delete `CNI_IFNAME` in the
/// netns if the netns still exists, as the reference does.
fn delete_links(req: &Request) -> Result<(), CniError> {
    let kernel = Kernel::new()?;
    let host = kernel.host();
    let name = plan::host_veth_name(&req.conf.name, &req.container_id, &req.ifname);
    if host.delete_link(&name)? {
        return Ok(());
    }
    let Some(path) = &req.netns else {
        return Ok(());
    };
    match NetNs::open(path) {
        Ok(ns) => {
            kernel.pod(&ns)?.delete_link(&req.ifname)?;
            Ok(())
        }
        Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// DEL keeps going after an error and reports them all.
fn combine(mut errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let first = errors.remove(0);
            let rest: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            Err(CniError::new(first.code, first.msg).with_details(rest.join("; ")))
        }
    }
}

pub fn check(req: &Request, mode: Mode) -> Result<(), CniError> {
    let spec = config::parse(req, mode)?;
    let prev = req.require_prev_result()?;
    let netns = req.netns()?;
    let ns = NetNs::open(netns)?;
    let kernel = Kernel::new()?;
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
    if spec.has_ipam {
        req.delegate_ipam(Command::Check)?;
    }
    let att = Attachment::of(req)?;
    let missing = Firewall::open()?.check_network(&att)?;
    nftplan::missing_error("firewall elements", &att, &missing)
}

/// Stable properties of the pod side: the MAC we reported, every address and route.
fn check_pod_link(
    req: &Request,
    prev: &CniResult,
    pod: &Netlink<'_>,
    link: &Link,
) -> Result<(), CniError> {
    if let Some(i) = prev.sandbox_interface(&req.ifname) {
        let want = &prev.interfaces[i].mac;
        let have = link.mac.map(|m| mac_string(&m.0)).unwrap_or_default();
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
) -> Result<(), CniError> {
    let br = host
        .link(&spec.bridge)?
        .filter(|l| l.is_bridge())
        .ok_or_else(|| check_failed(format!("bridge {} not found", spec.bridge)))?;
    let veth = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != spec.bridge)
        .map(|i| i.name.clone())
        .unwrap_or_else(|| plan::host_veth_name(&req.conf.name, &req.container_id, &req.ifname));
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
    let mut errors = Vec::new();
    if let Err(e) = Firewall::open().and_then(|fw| fw.gc_request(Feature::Network, req)) {
        errors.push(e.into());
    }
    if spec.has_ipam {
        if let Err(e) = req.delegate_ipam(Command::Gc) {
            errors.push(e);
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
