//! The crate's one error type, and errno classification.

use std::{io, path::PathBuf};

/// Errors of the kernel edge. Every variant names the object that failed
/// (link name, netns path, CIDR, sysctl key) and keeps the kernel errno
/// (reach it with [`NetopsError::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum NetopsError {
    #[error("netns {path}: does not exist")]
    NetnsNotFound { path: PathBuf },
    #[error("netns {path}: not a network namespace")]
    NotANetns { path: PathBuf },
    #[error("netns {path}: {source}")]
    NetnsOpen { path: PathBuf, source: io::Error },
    #[error("enter netns {path}: {source}")]
    Setns { path: PathBuf, source: io::Error },
    #[error("return to original netns from {path}: {source} (thread left in the wrong netns)")]
    NetnsRestore { path: PathBuf, source: io::Error },
    #[error("tokio runtime: {0}")]
    Runtime(io::Error),
    #[error("open netlink socket in {netns}: {source}")]
    Connection { netns: String, source: io::Error },
    #[error(transparent)]
    InvalidIfName(#[from] netbase::InvalidIfName),
    #[error("invalid sysctl key {key:?}: {reason}")]
    InvalidSysctlKey { key: String, reason: &'static str },
    #[error("sysctl {key} in {netns}: {source}")]
    Sysctl {
        key: String,
        netns: String,
        source: io::Error,
    },
    #[error("link {name} in {netns}: not found")]
    LinkNotFound { name: String, netns: String },
    #[error("link {name} in {netns} exists but is a {kind:?}, not a bridge")]
    NotABridge {
        name: String,
        netns: String,
        kind: Option<String>,
    },
    #[cfg(feature = "netlink")]
    #[error("create bridge {name}: {source}")]
    CreateBridge {
        name: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("a link named {name} already exists in {netns}")]
    NameTaken { name: String, netns: String },
    #[error("create veth {host}: a link named {host} already exists on the host")]
    HostVethExists { host: String },
    #[error("create veth peer {peer}: a link named {peer} already exists in netns {netns}")]
    PeerExists { peer: String, netns: String },
    #[cfg(feature = "netlink")]
    #[error("create veth {host} with peer {peer} in {netns}: {source}")]
    CreateVeth {
        host: String,
        peer: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} on link {name} in {netns}: {source}")]
    Link {
        op: &'static str,
        name: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} address {cidr} on {link} in {netns}: {source}")]
    Address {
        op: &'static str,
        cidr: String,
        link: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} route {dst}{} dev {link} in {netns}: {source}", gw.map(|g| format!(" via {g}")).unwrap_or_default())]
    Route {
        op: &'static str,
        dst: String,
        gw: Option<std::net::IpAddr>,
        link: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} seal rule iif {iif} in {netns}: {source}")]
    Rule {
        op: &'static str,
        iif: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} {what} in {netns}: {source}")]
    Policy {
        op: &'static str,
        /// The rule or route, as `ip` text.
        what: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("list {what} in {netns}: {source}")]
    Dump {
        what: &'static str,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("conntrack: {what}: {source}")]
    Conntrack {
        what: &'static str,
        source: io::Error,
    },
    #[error("link {name} in {netns} is not the expected VXLAN device: want {want}, found {have}")]
    VxlanMismatch {
        name: String,
        netns: String,
        want: String,
        have: String,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} fdb entry {mac} dst {dst} on {dev} in {netns}: {source}")]
    Fdb {
        op: &'static str,
        mac: String,
        dst: std::net::IpAddr,
        dev: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("{op} neighbour {ip} on {dev} in {netns}: {source}")]
    Neighbour {
        op: &'static str,
        ip: std::net::IpAddr,
        dev: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[cfg(feature = "netlink")]
    #[error("tc: {op} on {link} in {netns}: {source}")]
    Tc {
        op: &'static str,
        link: String,
        netns: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("tap {name} in {netns}: {what}: {source}")]
    Tap {
        name: String,
        netns: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("invalid route {dst}: {reason}")]
    InvalidRoute { dst: String, reason: String },
    #[error("{what}: needs a pod handle from Kernel::pod")]
    NeedsPodHandle { what: &'static str },
    #[error("{what} is not supported yet")]
    Unsupported { what: &'static str },
    /// A failure the in-memory kernel ([`crate::FakeNet`]) was told to inject, with the errno
    /// a test chose.
    #[error("{op}: injected failure (errno {errno})")]
    Injected { op: String, errno: i32 },
}

/// Positive errno carried by a netlink error, if any.
#[cfg(feature = "netlink")]
pub fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let c = m.raw_code().abs();
            (c != 0).then_some(c)
        }
        _ => None,
    }
}

impl NetopsError {
    /// The kernel errno behind this error (positive), when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::NetnsOpen { source, .. }
            | Self::Setns { source, .. }
            | Self::NetnsRestore { source, .. }
            | Self::Runtime(source)
            | Self::Connection { source, .. }
            | Self::Sysctl { source, .. }
            | Self::Conntrack { source, .. }
            | Self::Tap { source, .. } => source.raw_os_error(),
            Self::NetnsNotFound { .. } => Some(libc::ENOENT),
            Self::Injected { errno, .. } => Some(*errno),
            Self::LinkNotFound { .. } => Some(libc::ENODEV),
            Self::HostVethExists { .. } | Self::PeerExists { .. } | Self::NameTaken { .. } => {
                Some(libc::EEXIST)
            }
            #[cfg(feature = "netlink")]
            Self::CreateBridge { source, .. }
            | Self::CreateVeth { source, .. }
            | Self::Link { source, .. }
            | Self::Address { source, .. }
            | Self::Route { source, .. }
            | Self::Rule { source, .. }
            | Self::Policy { source, .. }
            | Self::Dump { source, .. }
            | Self::Fdb { source, .. }
            | Self::Neighbour { source, .. }
            | Self::Tc { source, .. } => netlink_errno(source),
            Self::NotANetns { .. }
            | Self::InvalidIfName(_)
            | Self::InvalidSysctlKey { .. }
            | Self::NotABridge { .. }
            | Self::VxlanMismatch { .. }
            | Self::InvalidRoute { .. }
            | Self::NeedsPodHandle { .. }
            | Self::Unsupported { .. } => None,
        }
    }

    /// True when the errno says "the object is not there" (see [`errno::is_not_found`]).
    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(errno::is_not_found)
    }

    /// True when the errno is EEXIST.
    pub fn is_exists(&self) -> bool {
        self.errno().is_some_and(errno::is_exists)
    }
}

/// Classify kernel errors by number, never by message text.
pub mod errno {
    /// ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL: the link, file, route or
    /// address asked for does not exist. Accepts negative (netlink) values.
    pub fn is_not_found(errno: i32) -> bool {
        matches!(
            errno.abs(),
            libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL
        )
    }

    /// EEXIST. Accepts negative (netlink) values.
    pub fn is_exists(errno: i32) -> bool {
        errno.abs() == libc::EEXIST
    }

    /// A hint for errnos whose meaning is ambiguous, for error messages.
    pub fn hint(errno: i32) -> Option<&'static str> {
        match errno.abs() {
            libc::EACCES => Some("is IPv6 enabled (disable_ipv6=0) in this netns?"),
            libc::ENETUNREACH => Some("is the gateway inside a subnet of the interface?"),
            libc::EPERM => Some("are we root with CAP_NET_ADMIN?"),
            libc::EOPNOTSUPP => Some("is the kernel module for this link type loaded?"),
            _ => None,
        }
    }
}

impl NetopsError {
    /// The kind of failure, for the plugin's one mapping to CNI codes.
    pub fn class(&self) -> netbase::ErrorClass {
        use netbase::ErrorClass as C;
        match self {
            NetopsError::NetnsNotFound { .. }
            | NetopsError::NotANetns { .. }
            | NetopsError::InvalidIfName(_) => C::InvalidEnvironment,
            NetopsError::InvalidSysctlKey { .. }
            | NetopsError::NotABridge { .. }
            | NetopsError::VxlanMismatch { .. }
            | NetopsError::InvalidRoute { .. }
            | NetopsError::Unsupported { .. } => C::InvalidConfig,
            NetopsError::HostVethExists { .. }
            | NetopsError::PeerExists { .. }
            | NetopsError::NameTaken { .. } => C::Conflict,
            NetopsError::NetnsOpen { .. } => C::Io,
            _ => C::Kernel,
        }
    }

    /// A user hint for an ambiguous errno ("is IPv6 enabled?").
    pub fn hint(&self) -> Option<&'static str> {
        self.errno().and_then(errno::hint)
    }
}

impl netbase::Classified for NetopsError {
    fn class(&self) -> netbase::ErrorClass {
        NetopsError::class(self)
    }
    fn hint(&self) -> Option<&'static str> {
        NetopsError::hint(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_errnos_are_classified_by_number() {
        for e in [libc::ENODEV, libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL] {
            assert!(errno::is_not_found(e), "{e}");
            assert!(errno::is_not_found(-e), "-{e}");
            assert!(!errno::is_exists(e));
        }
        assert!(!errno::is_not_found(libc::EEXIST));
        assert!(!errno::is_not_found(libc::EPERM));
        assert!(!errno::is_not_found(0));
    }

    #[test]
    fn exists_is_eexist_only() {
        assert!(errno::is_exists(libc::EEXIST));
        assert!(errno::is_exists(-libc::EEXIST));
        assert!(!errno::is_exists(libc::EBUSY));
    }

    #[test]
    #[cfg(feature = "netlink")]
    fn error_keeps_errno_of_netlink_error() {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let e = NetopsError::Link {
            op: "set up",
            name: "eth0".into(),
            netns: "host".into(),
            source: Box::new(rtnetlink::Error::NetlinkError(msg)),
        };
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert!(e.is_not_found());
        assert!(!e.is_exists());
        assert!(e.to_string().contains("eth0"));
        let io = NetopsError::Sysctl {
            key: "net.ipv4.ip_forward".into(),
            netns: "host".into(),
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert!(io.is_exists());
    }
}
