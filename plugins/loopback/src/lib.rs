//! `loopback`: a drop-in for the reference loopback plugin, which containerd's CRI runs for
//! every sandbox (`lo`), whatever `CNI_IFNAME` says.
//!
//! - ADD: `lo` up in the pod netns; every address on it must be a loopback address. The
//!   result is the previous plugin's when there is one, else the spec's loopback result:
//!   interface `lo` (MAC all zeros, sandbox = the netns) with its first IPv4 and first IPv6
//!   address (`127.0.0.1/8`, `::1/128`; none of a family the netns lacks).
//! - CHECK: `lo` is up.
//! - DEL: `lo` down; a missing or empty netns is success.
//!
//! The pipeline is short: read `lo` (one RTM_GETLINK, one address dump per family), decide,
//! set it up if it is not, answer.

use cni_core::{
    error::from_lower, CniError, CniResult, ErrorCode, Interface, IpConfig, Plugin, Request,
};
use ipnetwork::IpNetwork;
use netops::{Family, Kernel, Link, NetNs, Netlink, NetopsError};

pub struct Loopback;

/// The interface name the plugin works on, whatever `CNI_IFNAME` says (as the reference).
pub const LO: &str = "lo";

fn kernel_err(e: NetopsError) -> CniError {
    from_lower(&e)
}

/// What the kernel says about `lo`: up or not, its addresses per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoView {
    pub up: bool,
    pub v4: Vec<IpNetwork>,
    pub v6: Vec<IpNetwork>,
}

/// The pure half of ADD: refuse a `lo` with a non-loopback address (the reference's sanity
/// check), else the result to give when there is no previous result.
pub fn plan_result(view: &LoView, netns: &str) -> Result<CniResult, CniError> {
    for a in view.v4.iter().chain(&view.v6) {
        if !a.ip().is_loopback() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "loopback interface found with non-loopback address {:?}",
                    a.ip()
                ),
            ));
        }
    }
    let ips = view
        .v4
        .first()
        .into_iter()
        .chain(view.v6.first())
        .map(|a| IpConfig {
            address: *a,
            gateway: None,
            interface: Some(0),
        })
        .collect();
    Ok(CniResult {
        interfaces: vec![Interface {
            name: LO.into(),
            mac: "00:00:00:00:00:00".into(),
            sandbox: netns.into(),
            ..Default::default()
        }],
        ips,
        ..Default::default()
    })
}

fn read_lo(pod: &Netlink<'_>) -> Result<(Link, LoView), NetopsError> {
    let lo = pod.require_link(LO)?;
    let view = LoView {
        up: lo.admin_up,
        v4: pod.addresses(&lo, Some(Family::V4))?,
        v6: pod.addresses(&lo, Some(Family::V6))?,
    };
    Ok((lo, view))
}

impl Plugin for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn any_args(&self) -> bool {
        true
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let netns = req.netns()?;
        let prev = req.prev_result()?;
        let ns = NetNs::open(netns).map_err(kernel_err)?;
        let kernel = Kernel::new().map_err(kernel_err)?;
        let pod = kernel.pod(&ns).map_err(kernel_err)?;
        let (lo, view) = read_lo(&pod).map_err(kernel_err)?;
        if !view.up {
            pod.set_up(&lo).map_err(kernel_err)?;
        }
        // The addresses `lo` gets when it comes up (a fresh netns has none before).
        let view = if view.up {
            view
        } else {
            read_lo(&pod).map_err(kernel_err)?.1
        };
        let fresh = plan_result(&view, &netns.display().to_string())?;
        // A previous plugin's result passes through unchanged, as the reference passes it.
        Ok(prev.unwrap_or(fresh))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let Some(netns) = req.netns.as_ref() else {
            return Ok(());
        };
        let ns = match NetNs::open(netns) {
            Ok(ns) => ns,
            Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. }) => return Ok(()),
            Err(e) => return Err(kernel_err(e)),
        };
        let kernel = Kernel::new().map_err(kernel_err)?;
        let pod = kernel.pod(&ns).map_err(kernel_err)?;
        match pod.link(LO).map_err(kernel_err)? {
            Some(lo) if lo.admin_up => pod.set_down(&lo).map_err(kernel_err),
            _ => Ok(()),
        }
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let ns = NetNs::open(req.netns()?).map_err(kernel_err)?;
        let kernel = Kernel::new().map_err(kernel_err)?;
        let pod = kernel.pod(&ns).map_err(kernel_err)?;
        let lo = pod.require_link(LO).map_err(kernel_err)?;
        if !lo.admin_up {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                "loopback interface is down",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn the_result_is_lo_with_its_first_address_of_each_family() {
        let view = LoView {
            up: true,
            v4: vec![n("127.0.0.1/8"), n("127.0.0.2/8")],
            v6: vec![n("::1/128")],
        };
        let r = plan_result(&view, "/run/netns/p").unwrap();
        let j = r.to_json(cni_core::Version::V1_0_0);
        assert_eq!(
            j,
            // "dns": {} as the reference prints it (Go's omitempty keeps an empty struct).
            serde_json::json!({"cniVersion": "1.0.0", "dns": {},
                "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/p"}],
                "ips": [{"interface": 0, "address": "127.0.0.1/8"},
                        {"interface": 0, "address": "::1/128"}]})
        );
    }

    #[test]
    fn a_netns_without_ipv6_gives_the_ipv4_address_only() {
        let view = LoView {
            up: true,
            v4: vec![n("127.0.0.1/8")],
            v6: vec![],
        };
        let r = plan_result(&view, "/x").unwrap();
        assert_eq!(r.ips.len(), 1);
    }

    #[test]
    fn a_non_loopback_address_on_lo_is_refused() {
        let view = LoView {
            up: true,
            v4: vec![n("127.0.0.1/8"), n("10.0.0.1/32")],
            v6: vec![],
        };
        let e = plan_result(&view, "/x").unwrap_err();
        assert!(e.msg.contains("10.0.0.1"), "{}", e.msg);
    }
}
