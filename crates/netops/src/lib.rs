//! The kernel edge of the CNI plugins: network namespaces, links, veth,
//! bridge, addresses, routes and `net.*` sysctls, over rtnetlink.
//!
//! Feature `netlink` (default) brings the rtnetlink part ([`Kernel`], [`Netlink`],
//! `KernelExec`); without it the crate is sysctls, netns handles, conntrack and the op values,
//! with no tokio (what `portmap` needs).
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
//! - Other links: macvlan ([`create_macvlan`](Netlink::create_macvlan)), IFB
//!   ([`create_ifb`](Netlink::create_ifb)), TAP ([`create_tap`], over `/dev/net/tun`), moving a
//!   link between namespaces under a new name ([`move_link`](Netlink::move_link)).
//! - Traffic control: TBF ([`add_tbf`](Netlink::add_tbf)), ingress and clsact qdiscs, u32
//!   filters with a mirred redirect ([`add_u32_filter`](Netlink::add_u32_filter)), read back
//!   with [`qdiscs`](Netlink::qdiscs) and [`u32_filters`](Netlink::u32_filters).
//! - [`sysctl`]: validated `net.*` keys, read/write in the current or a given netns.
//! - [`ops`]: kernel work as values ([`Op`], printed as `ip` commands), [`apply`] with an
//!   undo of every completed step, [`KernelExec`] over netlink and the [`Recorder`] fake.
//! - [`Session`]: the kernel of one plugin call (host netns and one pod netns) as a trait, so
//!   a verb is handed it: [`KernelSession`] over netlink, [`FakeNet`] in memory (unit tests of
//!   a plugin's orchestration, no root).
//! - Errors: one [`NetopsError`], errno kept; [`errno::is_not_found`] and
//!   [`errno::is_exists`] classify by number.
//!
//! ```no_run
//! use netops::{Kernel, NetNs, NewBridge, VethSpec, RouteSpec, BridgePortOpts};
//! # fn main() -> Result<(), netops::NetopsError> {
//! let k = Kernel::new()?;
//! let host = k.host();
//! let ns = NetNs::open("/var/run/netns/pod1")?;
//! let pod = k.pod(&ns)?;
//! let br = host.ensure_bridge("cni0", &NewBridge::default())?.link;
//! let veth = host.create_veth(&VethSpec { host_name: "veth1234".into(),
//!     peer_name: "eth0".into(), mtu: None, peer_mac: None, up: true, host_up: false }, &pod)?;
//! host.attach_to_bridge(&veth.host, &br)?;
//! host.set_bridge_port(&veth.host, BridgePortOpts { hairpin: Some(true), isolated: None })?;
//! pod.loopback_up()?;
//! pod.add_address(&veth.peer, "10.88.0.2/16".parse().unwrap(), false)?;
//! pod.add_route(&veth.peer, &RouteSpec { dst: "0.0.0.0/0".parse().unwrap(),
//!     gw: Some("10.88.0.1".parse().unwrap()), priority: None, onlink: false })?;
//! # Ok(()) }
//! ```

pub mod conntrack;
mod error;
#[cfg(feature = "netlink")]
mod exec;
mod fake;
#[cfg(feature = "netlink")]
mod kernel;
#[cfg(feature = "netlink")]
mod linkwatch;
mod netns;
pub mod ops;
mod session;
pub mod sysctl;
mod tap;
mod types;
#[cfg(feature = "netlink")]
mod vxlan;

#[cfg(feature = "netlink")]
pub use error::netlink_errno;
pub use error::{errno, NetopsError};
#[cfg(feature = "netlink")]
pub use exec::KernelExec;
pub use fake::{FakeNet, FakeNs};
pub use ipnetwork::IpNetwork;
#[cfg(feature = "netlink")]
pub use kernel::{tc, AddrFlags, Kernel, Netlink, RouteExtra, RETIRE_STALL_ENV};
#[cfg(feature = "netlink")]
pub use linkwatch::LinkWatch;
pub use netns::NetNs;
pub use ops::{
    apply, retired_name, rollback, Executor, Failure, Ns, Op, Recorder, Reversible, Undo,
    RETIRED_PREFIX, SEAL_RULE_PRIORITY,
};
#[cfg(feature = "netlink")]
pub use session::KernelSession;
pub use session::{RouteFilter, Session, SessionExec};
pub use sysctl::SysctlKey;
pub use tap::{create_tap, tap_flags, TapSpec};
pub use types::{
    BridgeInfo, BridgePortFlags, BridgePortOpts, Family, InvalidMac, Link, MacAddr, MacvlanMode,
    MacvlanSpec, Neighbour, NewBridge, PeerRoute, RouteInfo, RouteSpec, RuleAction, RuleSpec,
    TableRoute, TableTarget, VethPair, VethSpec, VxlanSpec,
};
#[cfg(feature = "netlink")]
pub use vxlan::{FdbEntry, VxlanInfo, FLOOD_MAC, VXLAN_PORT};

pub use netbase::{IfName, InvalidIfName, IFNAMSIZ_MAX};

/// Check an interface name with the suite's one rule ([`IfName`]).
pub fn validate_ifname(name: &str) -> Result<(), NetopsError> {
    IfName::new(name).map(drop).map_err(NetopsError::from)
}
