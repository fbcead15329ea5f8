//! Validated network values shared by every crate of the suite, so that one rule decides
//! what an interface name, a MAC address or a port protocol is:
//!
//! - [`IfName`]: a Linux interface name, checked once (at parse time) with the strictest rule
//!   any consumer needs (the kernel's `dev_valid_name`, and printable ASCII without `"` or `\`
//!   so it can be written into nft text as is);
//! - [`MacAddr`]: an Ethernet address, parsed from and printed as `aa:bb:cc:dd:ee:ff`;
//! - [`Protocol`]: tcp / udp / sctp, as CNI `portMappings` and nft spell them;
//! - [`logging`]: the log backend of every binary (stderr and an optional file, never stdout).
//!
//! No dependency on the CNI contract or the kernel: everything here is pure.

mod ifname;
pub mod logging;
mod mac;
mod protocol;

pub use ifname::{IfName, InvalidIfName, IFNAMSIZ_MAX};
pub use mac::{InvalidMac, MacAddr};
pub use protocol::{InvalidProtocol, Protocol};
