//! `macvlan`: a drop-in for the reference macvlan plugin (podman's macvlan networks). The pod
//! gets a macvlan of `master` (default: the link of the host's default route), created in the
//! pod's netns directly under `CNI_IFNAME`, in mode `bridge` (default), `private`, `vepa` or
//! `passthru`; `mtu` (at most the master's), `mac` (also `CNI_ARGS MAC` and
//! `runtimeConfig.mac`), `bcqueuelen`, `linkInContainer` (the master is in the pod's netns).
//! With `ipam` the interface gets IPAM's addresses and routes; without, it is only brought up
//! (L2).
//!
//! parse and validate (master, MTU, MAC) -> IPAM -> plan (pure) -> apply with undo -> result.

use cni_core::{CniError, CniResult, IfName, Request};
use netops::{MacAddr, MacvlanMode, Netlink, NetopsError, SysctlKey};
use podif::{iface, step::MacvlanLink, LinkCtx, LinkError, PodLink, Step};
use serde::Deserialize;

pub struct Macvlan;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    master: Option<String>,
    mode: Option<String>,
    mtu: Option<i64>,
    mac: Option<String>,
    link_in_container: Option<bool>,
    bcqueuelen: Option<u32>,
    runtime_config: Option<podif::MacRuntimeConfig>,
}

/// The validated config (the master resolved later, against the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `None`: the link of the default route.
    pub master: Option<IfName>,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub link_in_container: bool,
    pub bcqueuelen: Option<u32>,
    pub l3: bool,
}

pub fn parse(req: &Request) -> Result<Spec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let mode_s = raw.mode.unwrap_or_default();
    let mode = MacvlanMode::parse(&mode_s)
        .ok_or_else(|| CniError::config("mode", format!("unknown macvlan mode: {mode_s:?}")))?;
    let master = match raw.master.as_deref() {
        None | Some("") => None,
        Some(m) => Some(IfName::new(m).map_err(|e| CniError::config("master", e))?),
    };
    let mtu = match raw.mtu {
        None | Some(0) => None,
        Some(m) if m < 0 => {
            return Err(CniError::config(
                "mtu",
                format!("invalid MTU {m}, must be >= 0"),
            ))
        }
        Some(m) => Some(u32::try_from(m).map_err(|_| CniError::config("mtu", "too large"))?),
    };
    let mac = podif::requested_mac(req, raw.mac.as_deref(), raw.runtime_config.as_ref())?;
    Ok(Spec {
        master,
        mode,
        mtu,
        mac,
        link_in_container: raw.link_in_container.unwrap_or(false),
        bcqueuelen: raw.bcqueuelen.filter(|q| *q != 0),
        l3: podif::has_ipam(req),
    })
}

/// The master as the kernel has it: named, or the default route's link, in the host's netns or
/// (`linkInContainer`) the pod's; its MTU bounds ours.
fn resolve_master(spec: &Spec, host: &Netlink<'_>, pod: &Netlink<'_>) -> Result<IfName, LinkError> {
    let nl = if spec.link_in_container { pod } else { host };
    let link = match &spec.master {
        Some(m) => nl.link(m)?.ok_or_else(|| {
            LinkError::Config(format!(
                "failed to lookup master {m:?} in {}: no such link",
                nl.netns_label()
            ))
        })?,
        None => nl.default_route_link_any()?.ok_or_else(|| {
            LinkError::Config(format!(
                "no master given and no default route interface found in {}",
                nl.netns_label()
            ))
        })?,
    };
    iface::check_mtu(spec.mtu, &link)?;
    Ok(IfName::new(&link.name).map_err(NetopsError::from)?)
}

/// The pure plan, first half: the macvlan in the pod (and, L3, its notify sysctls). Applied
/// before IPAM, as the reference does: the dhcp daemon needs the interface.
pub fn plan_link(spec: &Spec, master: &IfName, ifname: &IfName) -> Result<Vec<Step>, LinkError> {
    let mut steps = vec![Step::CreateMacvlan(MacvlanLink {
        name: ifname.clone(),
        master: master.clone(),
        master_in_pod: spec.link_in_container,
        mode: spec.mode,
        mtu: spec.mtu,
        mac: spec.mac,
        bcqueuelen: spec.bcqueuelen,
    })];
    if spec.l3 {
        for (fam, leaf) in [("ipv4", "arp_notify"), ("ipv6", "ndisc_notify")] {
            steps.push(Step::PodSysctl {
                key: SysctlKey::conf(fam, ifname.as_str(), leaf)?,
                value: "1".into(),
                required: false,
            });
        }
    }
    Ok(steps)
}

impl PodLink for Spec {
    /// The master resolved, then the macvlan's steps.
    fn plan_in(&self, cx: &LinkCtx<'_, '_>) -> Result<Vec<Step>, LinkError> {
        let master = resolve_master(self, cx.host, cx.pod)?;
        cx.refuse_taken()?;
        plan_link(self, &master, cx.ifname)
    }
}

fn add(req: &Request) -> Result<CniResult, LinkError> {
    podif::add_pod_link(req, &parse(req)?)
}

fn check(req: &Request) -> Result<(), LinkError> {
    let spec = parse(req)?;
    let (prev, k) = podif::check_start(req, spec.l3)?;
    let (host, pod) = (k.host(), k.pod()?);
    resolve_master(&spec, &host, &pod)?;
    iface::check_pod_iface(req, &prev, &pod, |l| {
        if l.kind.as_deref() != Some("macvlan") {
            return Err(format!("interface {} is not a macvlan", l.name));
        }
        if l.macvlan_mode != Some(spec.mode) {
            return Err(format!(
                "interface {} is a macvlan in mode {}, the config says {}",
                l.name,
                l.macvlan_mode.map(|m| m.to_string()).unwrap_or_default(),
                spec.mode
            ));
        }
        Ok(())
    })?;
    Ok(())
}

podif::link_plugin!(
    Macvlan,
    "macvlan",
    known_args = &["MAC"],
    del = iface::del_pod_link
);

#[cfg(test)]
mod tests;
