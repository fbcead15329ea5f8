//! The kernel edge of the CNI plugins: network namespaces, links, veth,
//! bridge, addresses, routes and `net.*` sysctls, over rtnetlink.
//!
//! The API is **synchronous**; the async rtnetlink code runs on a tokio
//! current_thread runtime owned by [`Kernel`] and never leaves this crate.
//!
//! - [`NetNs::open`] opens a netns path and checks it is a network namespace
//!   ([`NetopsError::NetnsNotFound`] vs [`NetopsError::NotANetns`]);
//!   [`NetNs::run`] runs a closure with the current thread inside it.
//! - [`Kernel::new`] opens a netlink socket in the calling thread's netns
//!   (the host); [`Kernel::host`] gives a [`Netlink`] for it and
//!   [`Kernel::pod`] opens a second socket bound to a pod netns (setns in,
//!   socket, setns back; no `.await` in between).
//! - [`Netlink`] methods: [`ensure_bridge`](Netlink::ensure_bridge),
//!   [`create_veth`](Netlink::create_veth) (peer created directly in the pod
//!   netns under its final name), [`attach_to_bridge`](Netlink::attach_to_bridge),
//!   [`set_bridge_port`](Netlink::set_bridge_port), addresses, routes, link
//!   reads, idempotent [`delete_link`](Netlink::delete_link). Each documents
//!   the `ip` command it matches.
//! - VXLAN: [`ensure_vxlan`](Netlink::ensure_vxlan), FDB entries
//!   ([`fdb_add`](Netlink::fdb_add), [`fdb_del`](Netlink::fdb_del),
//!   [`fdb_entries`](Netlink::fdb_entries)), permanent neighbours.
//! - [`sysctl`]: validated `net.*` keys, read/write in the current or a given netns.
//! - [`UndoLog`]: record inverses of applied steps; roll back in reverse.
//! - Errors: one [`NetopsError`], errno kept; [`errno::is_not_found`] and
//!   [`errno::is_exists`] classify by number.
//!
//! ```no_run
//! use netops::{Kernel, NetNs, VethSpec, RouteSpec, BridgePortOpts};
//! # fn main() -> Result<(), netops::NetopsError> {
//! let k = Kernel::new()?;
//! let host = k.host();
//! let ns = NetNs::open("/var/run/netns/pod1")?;
//! let pod = k.pod(&ns)?;
//! let br = host.ensure_bridge("cni0", None, false)?.link;
//! let veth = host.create_veth(&VethSpec { host_name: "veth1234".into(),
//!     peer_name: "eth0".into(), mtu: None, peer_mac: None, up: true }, &pod)?;
//! host.attach_to_bridge(&veth.host, &br)?;
//! host.set_bridge_port(&veth.host, BridgePortOpts { hairpin: Some(true), isolated: None })?;
//! pod.loopback_up()?;
//! pod.add_address(&veth.peer, "10.88.0.2/16".parse().unwrap(), false)?;
//! pod.add_route(&veth.peer, &RouteSpec { dst: "0.0.0.0/0".parse().unwrap(),
//!     gw: Some("10.88.0.1".parse().unwrap()), priority: None })?;
//! # Ok(()) }
//! ```

mod error;
mod kernel;
mod netns;
pub mod sysctl;
mod types;
mod undo;
mod vxlan;

pub use error::{errno, netlink_errno, NetopsError};
pub use ipnetwork::IpNetwork;
pub use kernel::{Kernel, Netlink, SEAL_RULE_PRIORITY};
pub use netns::NetNs;
pub use sysctl::SysctlKey;
pub use types::{
    BridgeInfo, BridgePortFlags, BridgePortOpts, Family, InvalidMac, Link, MacAddr, RouteInfo,
    RouteSpec, VethPair, VethSpec,
};
pub use undo::{Side, UndoLog, UndoOp};
pub use vxlan::{FdbEntry, VxlanInfo, VxlanSpec, FLOOD_MAC, VXLAN_PORT};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAMSIZ_MAX: usize = 15;

/// Check an interface name as the kernel's `dev_valid_name` does: 1..=15
/// bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), NetopsError> {
    let bad = |reason| {
        Err(NetopsError::InvalidIfName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > IFNAMSIZ_MAX {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' or '..'");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_edges() {
        assert!(validate_ifname("abcdefghijklmno").is_ok()); // 15
        assert!(validate_ifname("abcdefghijklmnop").is_err()); // 16
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ifname("br.100").is_ok());
    }
}
