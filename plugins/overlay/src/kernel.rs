//! [`KernelHost`]: the host side of the overlay on this host's kernel (rtnetlink in the host
//! and the pod netns) and firewall table, opened at the first step that needs them.

use std::{
    cell::{OnceCell, RefCell},
    path::{Path, PathBuf},
};

use bridge_plugin::{
    apply::{observe, read_view, Effects},
    config::BridgeSpec,
    plan::{Ids, Observed, Plan},
    verbs, BridgeError,
};
use cni_core::{CniResult, IfName, Request};
use ipnetwork::IpNetwork;
use netbase::Detacher;
use netops::{
    Executor, Family, KernelExec, KernelSession, Link, Netlink, NetopsError, Op, Session,
};
use nftplan::{Attachment, Feature, Firewall};

use crate::{
    config::OverlaySpec,
    ctx::{HostSide, NetLock},
    error::OverlayError,
    plan::{self, HostView, Underlay},
};

/// The host's kernel and firewall, opened on first use (DEL of a pod whose network has other
/// pods needs no netlink connection of its own beyond the veth's). One [`KernelSession`] per
/// call: the pod's side (the bridge's plan, its reads and checks) runs on it as the bridge's
/// verbs do, and the overlay's own host reads and ops on its host connection; work only the
/// kernel can observe is parked with the request's detacher.
pub struct KernelHost {
    detach: Detacher,
    fw: OnceCell<Firewall>,
    session: RefCell<KernelSession>,
    pod: RefCell<Option<PathBuf>>,
}

impl KernelHost {
    pub fn new(detach: &Detacher) -> Self {
        Self {
            detach: detach.clone(),
            fw: OnceCell::new(),
            session: RefCell::new(KernelSession::new(detach.clone())),
            pod: RefCell::new(None),
        }
    }

    /// `f` on the host netns, over the session's connection.
    fn host<T>(
        &self,
        f: impl FnOnce(&Netlink<'_>) -> Result<T, OverlayError>,
    ) -> Result<T, OverlayError> {
        self.session.borrow_mut().host(f)
    }

    fn fw(&self) -> Result<&Firewall, OverlayError> {
        if let Some(f) = self.fw.get() {
            return Ok(f);
        }
        let f = Firewall::open_with(&self.detach)?;
        Ok(self.fw.get_or_init(|| f))
    }

    /// The session with its pod side bound to `netns` (opened once per path).
    fn session_in(
        &self,
        netns: &Path,
    ) -> Result<std::cell::RefMut<'_, KernelSession>, NetopsError> {
        let mut s = self.session.borrow_mut();
        let mut pod = self.pod.borrow_mut();
        if pod.as_deref() != Some(netns) {
            s.open_pod(netns)?;
            *pod = Some(netns.to_path_buf());
        }
        Ok(s)
    }
}

/// The interface of the default route of a family (lowest metric).
fn default_link(host: &Netlink<'_>, fam: Family) -> Result<Option<Link>, NetopsError> {
    let mut routes: Vec<_> = host
        .routes(None, Some(fam))?
        .into_iter()
        .filter(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .collect();
    routes.sort_by_key(|r| r.priority.unwrap_or(0));
    match routes.first().and_then(|r| r.oif) {
        Some(oif) => host.link_by_index(oif),
        None => Ok(None),
    }
}

/// `underlay` from the config, or the interface of the default route (IPv4, else IPv6); the
/// VTEP is its first IPv4 address, else its first global IPv6 address.
pub fn underlay(host: &Netlink<'_>, spec: &OverlaySpec) -> Result<Underlay, OverlayError> {
    let link = match &spec.underlay {
        Some(name) => host.link(name)?.ok_or_else(|| {
            cni_core::CniError::config("underlay", format!("no interface {name} on this host"))
        })?,
        None => match default_link(host, Family::V4)? {
            Some(l) => l,
            None => default_link(host, Family::V6)?.ok_or_else(|| {
                cni_core::CniError::config(
                    "underlay",
                    "not set, and this host has no default route to take it from",
                )
            })?,
        },
    };
    let vtep = match host.first_ipv4(&link)? {
        Some(v4) => v4.into(),
        None => host
            .first_global_ipv6(&link)?
            .ok_or_else(|| {
                cni_core::CniError::config(
                    "underlay",
                    format!(
                        "{} has no IPv4 and no global IPv6 address to use as the VTEP",
                        link.name
                    ),
                )
            })?
            .into(),
    };
    Ok(Underlay { link, vtep })
}

fn lock_path(dir: &std::path::Path, network: &str) -> PathBuf {
    let safe: String = network
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    dir.join(format!("overlay-{safe}.lock"))
}

impl HostSide for KernelHost {
    fn underlay(&self, spec: &OverlaySpec) -> Result<Underlay, OverlayError> {
        self.host(|host| underlay(host, spec))
    }

    fn lock(&self, spec: &OverlaySpec, exclusive: bool) -> Result<NetLock, OverlayError> {
        let dir = self.fw()?.state_dir().to_path_buf();
        let path = lock_path(&dir, &spec.network);
        let err = |source| OverlayError::Lock {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let held = nftplan::lock_file(&path, exclusive).map_err(err)?;
        Ok(NetLock(Some(Box::new(held))))
    }

    fn read(
        &self,
        spec: &OverlaySpec,
        bspec: &BridgeSpec,
        ids: &Ids,
    ) -> Result<HostView, OverlayError> {
        let bridge = read_view(&mut *self.session_in(&ids.netns)?, bspec, &ids.ifname)?;
        let vxlan = self.host(|host| {
            Ok(match host.link(&spec.vxlan)? {
                None => None,
                Some(l) if l.kind.as_deref() == Some("vxlan") => {
                    let v = host.vxlan(&spec.vxlan)?;
                    v.map(|v| (v.vni, v.local, v.link.mac))
                }
                Some(l) => Some((None, None, l.mac)),
            })
        })?;
        Ok(HostView { bridge, vxlan })
    }

    fn apply(&self, plan: &Plan) -> Result<Observed, OverlayError> {
        let fw = self.fw()?;
        let mut session = self.session_in(&plan.ids.netns)?;
        let mut fx = Effects {
            net: &mut *session,
            fw,
            plan_mac: plan.requested_mac,
            pod_ifname: plan.ids.ifname.clone(),
        };
        let label = plan.ids.netns.display().to_string();
        netops::apply(&plan.steps, &mut fx).map_err(|f| {
            for u in &f.undo_errors {
                log::warn!("rollback: {u}");
            }
            BridgeError::Step {
                step: f.step + 1,
                command: f.op.command(&label),
                source: Box::new(f.error),
            }
        })?;
        Ok(observe(fx.net, plan)?)
    }

    fn detach(&self, req: &Request, spec: &OverlaySpec) -> Vec<OverlayError> {
        let mut errors: Vec<OverlayError> = Vec::new();
        if let Err(e) = verbs::delete_links(&mut *self.session.borrow_mut(), req) {
            errors.push(e.into());
        }
        let detached = self.fw().and_then(|fw| {
            let a = Attachment::new(&spec.network, &req.container_id, &req.ifname)?;
            Ok(fw.detach_network(&a)?)
        });
        match detached {
            // The internal network's last attachment: its kernel-level seal goes too.
            Ok(Some(last)) => {
                let mut subnets: Vec<IpNetwork> = spec.subnets.clone();
                for s in last.subnets {
                    if !subnets.contains(&s) {
                        subnets.push(s);
                    }
                }
                let unseal =
                    self.host(|host| Ok(host.unseal_bridge(last.bridge.as_str(), &subnets)?));
                if let Err(e) = unseal {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        errors
    }

    fn in_use(&self, spec: &OverlaySpec) -> Result<bool, OverlayError> {
        Ok(self.fw()?.network_in_use(&spec.network)?)
    }

    fn teardown(&self, ops: &[Op]) -> Vec<OverlayError> {
        let mut errors = Vec::new();
        let run = self.host(|host| {
            let mut x = KernelExec::new(host, host);
            for op in ops {
                match x.exec(op) {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => errors.push(e.into()),
                }
            }
            Ok(())
        });
        if let Err(e) = run {
            errors.push(e);
        }
        errors
    }

    fn check(
        &self,
        req: &Request,
        spec: &OverlaySpec,
        bspec: &BridgeSpec,
        prev: &CniResult,
        ul: &Underlay,
    ) -> Result<(), OverlayError> {
        let failed = |m: String| OverlayError::Check(m);
        let netns = req.netns()?;
        {
            let mut session = self.session_in(netns)?;
            let link = session.link(netops::Ns::Pod, &req.ifname)?.ok_or_else(|| {
                failed(format!(
                    "interface {} not found in {}",
                    req.ifname,
                    netns.display()
                ))
            })?;
            verbs::check_pod_link(&mut *session, req, prev, &link)?;
            verbs::check_host_side(&mut *session, req, bspec, prev)?;
        }
        let vx = self
            .host(|host| Ok(host.vxlan(&spec.vxlan)?))?
            .ok_or_else(|| failed(format!("vxlan {} not found", spec.vxlan)))?;
        plan::preflight(
            spec,
            ul,
            &HostView {
                bridge: Default::default(),
                vxlan: Some((vx.vni, vx.local, vx.link.mac)),
            },
        )
        .map_err(|e| failed(e.to_string()))?;
        if vx.link.master.is_some() {
            return Err(failed(format!("{} is a bridge port", spec.vxlan)));
        }
        if !vx.link.admin_up {
            return Err(failed(format!("{} is down", spec.vxlan)));
        }
        let missing = self.host(|host| {
            let routes = host.missing_table_routes(&plan::table_routes(spec))?;
            let rules = host.missing_rules(&plan::rules(spec))?;
            let mut missing: Vec<String> = routes.iter().map(|r| r.text()).collect();
            missing.extend(rules.iter().map(|r| r.text()));
            if spec.internal {
                missing.extend(host.missing_seal(&spec.bridge, &spec.subnets)?);
            }
            Ok(missing)
        })?;
        if !missing.is_empty() {
            return Err(failed(format!(
                "network {} on this host lacks: {}",
                spec.network,
                missing.join("; ")
            )));
        }
        let att = Attachment::new(&spec.network, &req.container_id, &req.ifname)?;
        let gone = self.fw()?.check_network(&att)?;
        nftplan::missing_error("firewall elements", &att, &gone)?;
        Ok(())
    }

    fn gc(&self, req: &Request, spec: &OverlaySpec) -> Vec<OverlayError> {
        let mut errors: Vec<OverlayError> = Vec::new();
        // Links a DEL retired but whose detached deleter was killed.
        if let Err(e) = self.host(|host| Ok(host.delete_retired()?)) {
            errors.push(e);
        }
        let gc = self
            .fw()
            .and_then(|fw| Ok(fw.gc(Feature::Network, &spec.network, &req.valid_pairs())?));
        if let Err(e) = gc {
            errors.push(e);
        }
        errors
    }
}

/// An interface name from the spec (validated at parse time).
pub fn ifname(s: &str) -> Result<IfName, OverlayError> {
    Ok(IfName::new(s).map_err(NetopsError::from)?)
}
