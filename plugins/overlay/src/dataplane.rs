//! The host side an overlay network needs besides the bridge attachment: the underlay (VTEP
//! address, MTU), the network's bridge with the anycast gateway MAC, and its VXLAN port.

use std::net::Ipv4Addr;

use cni_core::{CniError, ErrorCode};

use crate::error::OverlayError;
use netops::{FdbEntry, Link, MacAddr, Netlink, VxlanSpec, FLOOD_MAC, VXLAN_PORT};

use crate::config::{gateway_mac, OverlaySpec, VXLAN_OVERHEAD};

/// This host's end of the overlay.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: Link,
    pub vtep: Ipv4Addr,
}

/// `underlay` from the config, or the interface of the default route; its first IPv4 address
/// is the VTEP.
pub fn underlay(host: &Netlink<'_>, spec: &OverlaySpec) -> Result<Underlay, OverlayError> {
    let link = match &spec.underlay {
        Some(name) => host.link(name)?.ok_or_else(|| {
            CniError::config("underlay", format!("no interface {name} on this host"))
        })?,
        None => host.default_route_link()?.ok_or_else(|| {
            CniError::config(
                "underlay",
                "not set, and this host has no IPv4 default route to take it from",
            )
        })?,
    };
    let vtep = host.first_ipv4(&link)?.ok_or_else(|| {
        CniError::config(
            "underlay",
            format!("{} has no IPv4 address to use as the VTEP", link.name),
        )
    })?;
    Ok(Underlay { link, vtep })
}

/// The pod MTU: `mtu`, or the underlay's minus the VXLAN overhead.
pub fn pod_mtu(spec: &OverlaySpec, ul: &Underlay) -> Result<u32, CniError> {
    match spec.mtu {
        Some(m) => Ok(m),
        None => ul
            .link
            .mtu
            .checked_sub(VXLAN_OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                CniError::config(
                    "mtu",
                    format!("underlay {} MTU {} is too small", ul.link.name, ul.link.mtu),
                )
            }),
    }
}

/// The network's bridge (anycast gateway MAC) with the VXLAN device as a port, up. When the
/// VXLAN device is new, `remote_vteps` is asked once for the flood entries (the agent keeps
/// them right afterwards). Idempotent: concurrent ADDs converge.
/// Equivalent: `ip link add BR mtu M type bridge; ip link set BR address 02:63:6e:..; ip link
/// add VX type vxlan id VNI local VTEP dev UL dstport 4789 nolearning mtu M; ip link set VX
/// master BR up; bridge fdb append 00:00:00:00:00:00 dev VX dst REMOTE` (per remote).
pub fn ensure(
    host: &Netlink<'_>,
    spec: &OverlaySpec,
    ul: &Underlay,
    mtu: u32,
    remote_vteps: impl FnOnce() -> Result<Vec<Ipv4Addr>, CniError>,
) -> Result<(), OverlayError> {
    let new = netops::NewBridge {
        mtu: Some(mtu),
        ..Default::default()
    };
    let br = host.ensure_bridge(&spec.bridge, &new)?.link;
    let mac = MacAddr(gateway_mac(spec.vni));
    if br.mac != Some(mac) {
        host.set_mac(&br, mac)?;
    }
    let vx = host.ensure_vxlan(&VxlanSpec {
        name: spec.vxlan.clone(),
        vni: spec.vni,
        local: ul.vtep.into(),
        underlay: Some(ul.link.index),
        port: VXLAN_PORT,
        learning: false,
        mtu: Some(mtu),
        mac: None,
    })?;
    if let Some(other) = vx.link.master.filter(|m| *m != br.index) {
        return Err(CniError::new(
            ErrorCode::Conflict,
            format!(
                "{} is a port of another bridge (ifindex {other}), not of {}",
                spec.vxlan, spec.bridge
            ),
        )
        .into());
    }
    if vx.link.master.is_none() || !vx.link.admin_up {
        host.attach_to_bridge(&vx.link, &br)?;
    }
    if vx.created {
        match remote_vteps() {
            Ok(vteps) => {
                for v in vteps {
                    host.fdb_add(
                        &vx.link,
                        &FdbEntry {
                            mac: FLOOD_MAC.0,
                            dst: v.into(),
                        },
                    )?;
                }
            }
            // Not fatal: the agent programs them as soon as it sees the device.
            Err(e) => log::warn!("flood entries for {}: {e}", spec.vxlan),
        }
    }
    Ok(())
}

/// CHECK: the VXLAN device exists, is ours (VNI) and a port of the bridge.
pub fn check(host: &Netlink<'_>, spec: &OverlaySpec) -> Result<(), OverlayError> {
    let failed = |m: String| CniError::new(ErrorCode::CheckFailed, m);
    let br = host
        .link(&spec.bridge)?
        .ok_or_else(|| failed(format!("bridge {} not found", spec.bridge)))?;
    let vx = host
        .vxlan(&spec.vxlan)?
        .ok_or_else(|| failed(format!("vxlan {} not found", spec.vxlan)))?;
    if vx.vni != Some(spec.vni) {
        return Err(failed(format!(
            "{} has VNI {:?}, want {}",
            spec.vxlan, vx.vni, spec.vni
        ))
        .into());
    }
    if vx.link.master != Some(br.index) {
        return Err(failed(format!("{} is not a port of {}", spec.vxlan, spec.bridge)).into());
    }
    Ok(())
}
