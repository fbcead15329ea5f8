//! Validated network values shared by every crate of the suite, so that one rule decides
//! what an interface name, a MAC address or a port protocol is:
//!
//! - [`IfName`]: a Linux interface name, checked once (at parse time) with the strictest rule
//!   any consumer needs (the kernel's `dev_valid_name`, and printable ASCII without `"` or `\`
//!   so it can be written into nft text as is);
//! - [`MacAddr`]: an Ethernet address, parsed from and printed as `aa:bb:cc:dd:ee:ff`;
//! - [`Protocol`]: tcp / udp / sctp, as CNI `portMappings` and nft spell them;
//! - [`logging`]: the log backend of every binary (stderr and an optional file, never stdout);
//! - [`detach`]: work only the kernel can observe (a slow delete, a socket whose close waits),
//!   handed to a detached process after a verb answered: the one place the suite forks.
//!
//! No dependency on the CNI contract or the kernel; everything but [`detach`] is pure.

pub mod detach;
mod ifname;
pub mod logging;
mod mac;
mod protocol;

pub use ifname::{IfName, InvalidIfName, IFNAMSIZ_MAX};
pub use mac::{InvalidMac, MacAddr};
pub use protocol::{InvalidProtocol, Protocol};

/// What kind of failure an error is, decided by the crate that raised it (by variant and
/// errno), so that each plugin maps it to a CNI code in one place without the lower crates
/// knowing the CNI contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A value refused before anything was touched (name, key, route, unsupported option).
    InvalidConfig,
    /// The netns or interface name the runtime passed is wrong.
    InvalidEnvironment,
    /// The thing asked for is taken (interface name, host port).
    Conflict,
    /// A file or state I/O failure.
    Io,
    /// The kernel refused a netlink or sysctl operation.
    Kernel,
    /// nftables refused a batch.
    Firewall,
    /// What CHECK looked for is not there.
    CheckFailed,
}
