//! `host-device`: a drop-in for the reference host-device plugin. A link of the host moves
//! into the pod under `CNI_IFNAME`, found by `device` (name), `hwaddr` (MAC), `kernelpath`
//! (a `/sys/devices/...` path whose `net/` lists it), `pciBusID` (a PCI address whose `net/`
//! lists it) or `runtimeConfig.deviceID` (a PCI or auxiliary-bus device, as device plugins
//! pass it). On DEL it comes back to the host under its own name, with the addresses and the
//! up state it had (the kernel drops both when a link changes netns; the reference leaves it
//! down and bare). With `ipam` it gets IPAM's addresses and routes in the pod.
//!
//! The original name travels with the link as its alias (what the reference does, so either
//! implementation can DEL what the other moved); its addresses and state are kept in a state
//! file under `$CNIRS_RUN_DIR` (`/run/cni-rs`) per (network, container id, ifname).
//! DPDK (a PCI device bound to a userspace driver) is not supported: refused.

use std::path::{Path, PathBuf};

use cni_core::{CniError, CniResult, Command, ErrorCode, IfName, Request};
use ipnetwork::IpNetwork;
use netops::{Kernel, Link, MacAddr, Netlink, NetopsError, Ns, Op};
use podif::{iface, HostState, LinkCtx, LinkError, PodLink, Step};
use serde::{Deserialize, Serialize};

pub struct HostDevice;

/// The sysfs roots; PCI and auxiliary devices are looked up under them.
const SYS_BUS_PCI: &str = "/sys/bus/pci/devices";
const SYS_BUS_AUX: &str = "/sys/bus/auxiliary/devices";
const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    device: Option<String>,
    hwaddr: Option<String>,
    kernelpath: Option<String>,
    #[serde(rename = "pciBusID")]
    pci_bus_id: Option<String>,
    runtime_config: Option<RuntimeConfig>,
}

/// How the device is named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(IfName),
    Mac(MacAddr),
    /// A directory whose entries are link names (`KERNELPATH/net`, `.../PCI/net`, ...).
    NetDir(PathBuf),
}

/// The validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub selector: Selector,
    pub l3: bool,
}

/// `dddd:bb:dd.f`: a PCI address, so it can be joined to a sysfs path safely.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
        && b.iter()
            .enumerate()
            .filter(|(i, _)| ![4, 7, 10, 11].contains(i))
            .all(|(_, c)| c.is_ascii_hexdigit())
}

/// The `net/` directory of PCI device `id`, also under a virtio child (`virtio*/net`), as the
/// reference looks for it.
fn pci_net_dir(root: &Path, id: &str, field: &str) -> Result<PathBuf, CniError> {
    if !is_pci_address(id) {
        return Err(CniError::config(
            field,
            format!("{id:?} is not a PCI address (domain:bus:device.function, e.g. 0000:00:03.0)"),
        ));
    }
    if !root.exists() {
        return Err(CniError::config(
            field,
            format!(
                "this host has no PCI bus ({} does not exist): use device, hwaddr or kernelpath",
                root.display()
            ),
        ));
    }
    let dev = root.join(id);
    if !dev.exists() {
        return Err(CniError::config(
            field,
            format!(
                "no PCI device {id} on this host ({} does not exist)",
                dev.display()
            ),
        ));
    }
    if let Ok(drv) = std::fs::read_link(dev.join("driver")) {
        if let Some(name) = drv.file_name().and_then(|n| n.to_str()) {
            if USERSPACE_DRIVERS.contains(&name) {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!(
                        "PCI device {id} is bound to {name} (DPDK): not supported by this plugin"
                    ),
                ));
            }
        }
    }
    let net = dev.join("net");
    if net.is_dir() {
        return Ok(net);
    }
    let mut virtio: Vec<PathBuf> = std::fs::read_dir(&dev)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("virtio"))
                        && p.join("net").is_dir()
                })
                .collect()
        })
        .unwrap_or_default();
    virtio.sort();
    virtio.first().map(|p| p.join("net")).ok_or_else(|| {
        CniError::config(
            field,
            format!("PCI device {id} has no network interface (no net directory)"),
        )
    })
}

pub fn parse(req: &Request) -> Result<Spec, CniError> {
    parse_with(req, Path::new(SYS_BUS_PCI), Path::new(SYS_BUS_AUX))
}

fn parse_with(req: &Request, pci: &Path, aux: &Path) -> Result<Spec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let nonempty = |o: &Option<String>| o.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let mut pci_id = nonempty(&raw.pci_bus_id);
    let mut aux_id = None;
    // A device plugin's deviceID overrides the config: PCI first, then the auxiliary bus.
    if let Some(id) = raw
        .runtime_config
        .as_ref()
        .and_then(|r| nonempty(&r.device_id))
    {
        if is_pci_address(&id) && pci.join(&id).exists() {
            pci_id = Some(id);
        } else if !id.contains('/') && id != ".." && aux.join(&id).exists() {
            pci_id = None;
            aux_id = Some(id);
        } else {
            return Err(CniError::config(
                "runtimeConfig.deviceID",
                format!("{id} not found or unsupported"),
            ));
        }
    }
    let selector = if let Some(d) = nonempty(&raw.device) {
        Selector::Name(IfName::new(&d).map_err(|e| CniError::config("device", e))?)
    } else if let Some(h) = nonempty(&raw.hwaddr) {
        Selector::Mac(h.parse().map_err(|_| {
            CniError::config("hwaddr", format!("failed to parse MAC address {h:?}"))
        })?)
    } else if let Some(k) = nonempty(&raw.kernelpath) {
        let p = Path::new(&k);
        if !p.is_absolute() || !k.starts_with("/sys/devices/") || k.contains("/../") {
            return Err(CniError::config(
                "kernelpath",
                format!("kernel device path {k:?} must be absolute and begin with /sys/devices/"),
            ));
        }
        Selector::NetDir(p.join("net"))
    } else if let Some(id) = pci_id {
        Selector::NetDir(pci_net_dir(pci, &id, "pciBusID")?)
    } else if let Some(id) = aux_id {
        Selector::NetDir(aux.join(id).join("net"))
    } else {
        return Err(CniError::config(
            "device",
            r#"specify either "device", "hwaddr", "kernelpath" or "pciBusID""#,
        ));
    };
    Ok(Spec {
        selector,
        l3: podif::has_ipam(req),
    })
}

/// The first link named in a sysfs `net/` directory (sorted, as the reference's ReadDir).
fn link_from_dir(host: &Netlink<'_>, dir: &Path) -> Result<Link, LinkError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| LinkError::Io {
            what: format!("failed to read directory {}", dir.display()),
            source,
        })?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let first = names.first().ok_or_else(|| {
        LinkError::Config(format!(
            "failed to find network device in path {}",
            dir.display()
        ))
    })?;
    host.link(first)?.ok_or_else(|| {
        LinkError::Config(format!(
            "{} lists {first}, which is not a link of this netns",
            dir.display()
        ))
    })
}

fn find_device(spec: &Spec, host: &Netlink<'_>) -> Result<Link, LinkError> {
    match &spec.selector {
        Selector::Name(n) => host.link(n)?.ok_or_else(|| {
            LinkError::Config(format!("failed to find host device: link {n} not found"))
        }),
        Selector::Mac(m) => host
            .links()?
            .into_iter()
            .find(|l| l.mac == Some(*m))
            .ok_or_else(|| {
                LinkError::Config(format!("failed to find host device: no link has MAC {m}"))
            }),
        Selector::NetDir(d) => link_from_dir(host, d),
    }
}

/// What the state file keeps of a moved link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    host_name: String,
    addresses: Vec<IpNetwork>,
    up: bool,
}

fn state_path(req: &Request) -> Result<PathBuf, LinkError> {
    let dir = nftplan::default_state_dir().map_err(|e| LinkError::Config(e.to_string()))?;
    // network, container id and ifname are validated names (no '/').
    Ok(dir.join("host-device").join(format!(
        "{}-{}-{}.json",
        req.conf.name, req.container_id, req.ifname
    )))
}

fn read_saved(path: &Path) -> Option<Saved> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Addresses worth restoring: everything but IPv6 link-local ones (the kernel makes those).
fn restorable(addrs: Vec<IpNetwork>) -> Vec<IpNetwork> {
    addrs
        .into_iter()
        .filter(|a| match a.ip() {
            std::net::IpAddr::V6(v) => v.segments()[0] & 0xffc0 != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        })
        .collect()
}

/// The pure plan, first half: record, alias, move (renamed), up. Applied before IPAM, as the
/// reference does: the dhcp daemon needs the interface in the pod.
pub fn plan_link(
    dev: &IfName,
    restore: HostState,
    ifname: &IfName,
    state: PathBuf,
) -> Result<Vec<Step>, LinkError> {
    let body = serde_json::to_string(&Saved {
        host_name: dev.to_string(),
        addresses: restore.addrs.clone(),
        up: restore.up,
    })
    .map_err(|e| LinkError::Config(e.to_string()))?;
    Ok(vec![
        Step::WriteState { path: state, body },
        Step::SetAlias {
            ns: Ns::Host,
            link: dev.clone(),
            alias: dev.to_string(),
        },
        Step::MoveToPod {
            host_name: dev.clone(),
            pod_name: ifname.clone(),
            restore,
        },
        Step::Net(Op::SetUp {
            ns: Ns::Pod,
            link: ifname.clone(),
        }),
    ])
}

impl PodLink for Spec {
    /// The device found (never `lo`), then the steps that move it in.
    fn plan_in(&self, cx: &LinkCtx<'_, '_>) -> Result<Vec<Step>, LinkError> {
        let dev = find_device(self, cx.host)?;
        if dev.name == "lo" {
            return Err(LinkError::Config("refusing to move lo into a pod".into()));
        }
        cx.refuse_taken()?;
        let dev_name = IfName::new(&dev.name).map_err(NetopsError::from)?;
        let restore = HostState {
            addrs: restorable(cx.host.addresses(&dev, None)?),
            up: dev.admin_up,
        };
        let state = state_path(cx.req)?;
        plan_link(&dev_name, restore, cx.ifname, state)
    }

    /// (L3) IPAM's addresses and routes; nothing more without (the device is up already).
    fn plan_config(
        &self,
        l3: bool,
        ifname: &IfName,
        ipam: &CniResult,
    ) -> Result<Vec<Step>, LinkError> {
        if l3 {
            iface::configure_steps(ifname, ipam)
        } else {
            Ok(Vec::new())
        }
    }
}

fn add(req: &Request) -> Result<CniResult, LinkError> {
    podif::add_pod_link(req, &parse(req)?)
}

/// DEL: IPAM, then the link home (from the pod, or from wherever the host has it when the pod
/// is gone: a physical link returns to the initial netns when its netns dies), renamed, its
/// alias cleared, its addresses and state back; then the state file.
fn del(req: &Request) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    if let Err(e) = podif::delegate_ipam_if_any(req, Command::Del) {
        errors.push(e);
    }
    let path = state_path(req);
    let saved = path.as_ref().ok().and_then(|p| read_saved(p));
    let res = (|| -> Result<(), LinkError> {
        let kernel = Kernel::new()?;
        let host = kernel.host();
        let restore = |s: &Saved| HostState {
            addrs: s.addresses.clone(),
            up: s.up,
        };
        if let Some(ns) = iface::del_netns(req)? {
            let pod = kernel.pod(&ns)?;
            if let Some(l) = pod.link(&req.ifname)? {
                let home = l
                    .alias
                    .clone()
                    .or_else(|| saved.as_ref().map(|s| s.host_name.clone()))
                    .ok_or_else(|| {
                        LinkError::Config(format!(
                            "failed to find original ifname for {} (alias is not set)",
                            req.ifname
                        ))
                    })?;
                let st = saved
                    .as_ref()
                    .filter(|s| s.host_name == home)
                    .map(restore)
                    .unwrap_or_default();
                pod.move_link(&l, &host, &home)?;
                let back = host.require_link(&home)?;
                host.set_alias(&back, "")?;
                podif::restore_host(&host, &home, &st)?;
                return Ok(());
            }
        }
        // Not in the pod (gone with its netns, or never moved): one of ours the host holds
        // under another name still carries its alias.
        if let Some(s) = &saved {
            let found = host
                .links()?
                .into_iter()
                .find(|l| l.alias.as_deref() == Some(s.host_name.as_str()));
            if let Some(l) = found {
                if l.name != s.host_name {
                    rename(&host, &l, &s.host_name)?;
                }
                let back = host.require_link(&s.host_name)?;
                host.set_alias(&back, "")?;
                podif::restore_host(&host, &s.host_name, &restore(s))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        errors.push(e.into());
    } else if let Ok(p) = &path {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(CniError::io(format!("removing {}", p.display()), &e));
            }
        }
    }
    cni_core::error::combine(errors)
}

/// `ip link set NAME down; ip link set NAME name NEW` (a link is renamed only down).
fn rename(host: &Netlink<'_>, l: &Link, new: &str) -> Result<(), LinkError> {
    if l.admin_up {
        host.set_down(l)?;
    }
    host.rename(l, new)?;
    Ok(())
}

fn check(req: &Request) -> Result<(), LinkError> {
    let spec = parse(req)?;
    let (prev, k) = podif::check_start(req, spec.l3)?;
    let pod = k.pod()?;
    let l = iface::check_pod_iface(req, &prev, &pod, |_| Ok(()))?;
    if l.alias.is_none() {
        return Err(LinkError::Check(format!(
            "{} carries no alias: its host name is unknown",
            l.name
        )));
    }
    Ok(())
}

podif::link_plugin!(HostDevice, "host-device", any_args = true, del = del);

#[cfg(test)]
mod tests;
