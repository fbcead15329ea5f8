//! `tap`: a drop-in for the reference tap plugin. The pod gets a persistent TAP device named
//! `CNI_IFNAME` (for a VM monitor running in the pod to attach to), made in the pod's netns
//! through `/dev/net/tun`: no packet-information header, a virtio-net header (`vnet_hdr`),
//! `multiQueue`, `owner`/`group` allowed to attach without privileges, `mtu`, `mac` (also
//! `CNI_ARGS MAC` and `runtimeConfig.mac`), `bridge` (a bridge in the pod to enslave it to).
//! With `ipam` it gets IPAM's addresses and routes; without, it is only brought up.
//! `selinuxContext` is accepted where SELinux is off (nothing to label) and refused where it
//! is on (this plugin does not label).
//!
//! parse -> IPAM -> plan (pure) -> apply with undo -> result.

use cni_core::{CniError, CniResult, IfName, Request};
use netops::{MacAddr, Ns, SysctlKey, TapSpec};
use podif::{iface, LinkCtx, LinkError, PodLink, Step};
use serde::Deserialize;

pub struct Tap;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    multi_queue: Option<bool>,
    mtu: Option<i64>,
    mac: Option<String>,
    owner: Option<u32>,
    group: Option<u32>,
    selinux_context: Option<String>,
    bridge: Option<String>,
    runtime_config: Option<podif::MacRuntimeConfig>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub multi_queue: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub bridge: Option<IfName>,
    pub l3: bool,
}

fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

pub fn parse(req: &Request) -> Result<Spec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let mtu = match raw.mtu {
        None | Some(0) => None,
        Some(m) if (68..=65521).contains(&m) => u32::try_from(m).ok(),
        Some(m) => return Err(CniError::config("mtu", format!("{m} is outside 68..65521"))),
    };
    if raw
        .selinux_context
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        && selinux_enabled()
    {
        return Err(CniError::config(
            "selinuxContext",
            "SELinux is enabled and this plugin does not label the device: remove the key or use \
             the reference tap plugin",
        ));
    }
    let bridge = match raw.bridge.as_deref() {
        None | Some("") => None,
        Some(b) => Some(IfName::new(b).map_err(|e| CniError::config("bridge", e))?),
    };
    Ok(Spec {
        multi_queue: raw.multi_queue.unwrap_or(false),
        mtu,
        mac: podif::requested_mac(req, raw.mac.as_deref(), raw.runtime_config.as_ref())?,
        owner: raw.owner,
        group: raw.group,
        bridge,
        l3: podif::has_ipam(req),
    })
}

/// The pure plan, first half: the TAP, its MTU and MAC, its bridge (and, L3, its notify
/// sysctl). Applied before IPAM, as the reference does: the dhcp daemon needs the interface.
pub fn plan_link(spec: &Spec, ifname: &IfName) -> Result<Vec<Step>, LinkError> {
    let mut steps = vec![Step::CreateTap(TapSpec {
        name: ifname.to_string(),
        multi_queue: spec.multi_queue,
        vnet_hdr: true,
        owner: spec.owner,
        group: spec.group,
    })];
    if spec.mtu.is_some() || spec.mac.is_some() {
        steps.push(Step::SetLinkAttrs {
            ns: Ns::Pod,
            link: ifname.clone(),
            mtu: spec.mtu,
            mac: spec.mac,
        });
    }
    if let Some(b) = &spec.bridge {
        steps.push(Step::SetPodMaster {
            link: ifname.clone(),
            bridge: b.clone(),
        });
    }
    if spec.l3 {
        steps.push(Step::PodSysctl {
            key: SysctlKey::conf("ipv4", ifname.as_str(), "arp_notify")?,
            value: "1".into(),
            required: false,
        });
    }
    Ok(steps)
}

impl PodLink for Spec {
    /// The bridge checked, then the TAP's steps.
    fn plan_in(&self, cx: &LinkCtx<'_, '_>) -> Result<Vec<Step>, LinkError> {
        cx.refuse_taken()?;
        if let Some(b) = &self.bridge {
            if cx.pod.link(b)?.is_none_or(|l| !l.is_bridge()) {
                return Err(LinkError::Config(format!(
                    "bridge {b} not found in {} (the tap plugin enslaves to a bridge in the pod)",
                    cx.netns.display()
                )));
            }
        }
        plan_link(self, cx.ifname)
    }
}

fn add(req: &Request) -> Result<CniResult, LinkError> {
    podif::add_pod_link(req, &parse(req)?)
}

fn check(req: &Request) -> Result<(), LinkError> {
    let spec = parse(req)?;
    let (prev, k) = podif::check_start(req, spec.l3)?;
    let pod = k.pod()?;
    let link = iface::check_pod_iface(req, &prev, &pod, |l| {
        if l.kind.as_deref() == Some("tun") {
            Ok(())
        } else {
            Err(format!("interface {} is not a tap", l.name))
        }
    })?;
    if let Some(b) = &spec.bridge {
        let br = pod.link(b)?;
        if br.is_none() || link.master != br.map(|b| b.index) {
            return Err(LinkError::Check(format!(
                "{} is not a port of {b}",
                link.name
            )));
        }
    }
    Ok(())
}

podif::link_plugin!(Tap, "tap", known_args = &["MAC"], del = iface::del_pod_link);

#[cfg(test)]
mod tests;
