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
//!   handed to a detached process after a verb answered ([`Detacher`]): the one place the
//!   suite forks;
//! - [`nlwire`]: the one netlink wire codec (messages, attributes, a blocking socket) for the
//!   requests the typed crates do not carry;
//! - [`Classified`]: how a lower crate's error tells a plugin which CNI code it maps to;
//! - [`subnet`]: an address with its prefix reduced to the network it is in.
//!
//! No dependency on the CNI contract or the kernel; everything but [`detach`] and
//! [`nlwire::Socket`] is pure.

pub mod detach;
mod ifname;
pub mod logging;
mod mac;
pub mod nlwire;
mod protocol;

pub use detach::Detacher;

pub use ifname::{IfName, InvalidIfName, IFNAMSIZ_MAX};
pub use mac::{InvalidMac, MacAddr};
pub use protocol::{InvalidProtocol, Protocol};

use ipnetwork::IpNetwork;

/// The network `a` is in: `10.1.2.3/24` -> `10.1.0.0/24`... `10.1.2.0/24`.
pub fn subnet(a: IpNetwork) -> IpNetwork {
    IpNetwork::new(a.network(), a.prefix()).unwrap_or(a)
}

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

/// What identifies one attachment of a pod to a network on the host, and so everything it
/// owns there (firewall elements, state records, a derived veth name): the network's name,
/// the container id and the pod's interface name. A CNI request is one (`cni_core::Request`).
pub trait AttachmentKey {
    fn network(&self) -> &str;
    fn container_id(&self) -> &str;
    fn ifname(&self) -> &str;
}

/// An error of a lower crate (netops, nftplan, ...) that knows its [`ErrorClass`] and, where
/// the kernel's answer is ambiguous, a hint for the user. A plugin maps it to a CNI error in
/// one call (`cni_core::error::from_lower`).
pub trait Classified: std::error::Error {
    fn class(&self) -> ErrorClass;
    fn hint(&self) -> Option<&'static str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_drops_the_host_bits_of_both_families() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert_eq!(subnet(n("10.1.2.3/24")), n("10.1.2.0/24"));
        assert_eq!(subnet(n("fd00:1::9/64")), n("fd00:1::/64"));
        assert_eq!(subnet(n("0.0.0.0/0")), n("0.0.0.0/0"));
        assert_eq!(subnet(n("10.1.2.3/32")), n("10.1.2.3/32"));
    }
}
