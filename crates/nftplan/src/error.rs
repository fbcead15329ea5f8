//! The one error enum of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in the firewall model. Each variant names the object that failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A host port is already published by another attachment.
    #[error("port {port} is already published by {owner}")]
    Conflict {
        /// The mapping asked for, e.g. `0.0.0.0:8080/tcp`.
        port: String,
        /// The owning attachment, `network/container-id/ifname`.
        owner: String,
    },
    /// `nft` ran and failed (or was killed by a signal).
    #[error("nft failed ({status}) on a batch: {stderr}")]
    Nft {
        /// Exit status as printed by std (`exit status: 1`, `signal: 11`).
        status: String,
        /// What nft wrote on stderr.
        stderr: String,
    },
    /// `nft` could not be spawned or talked to.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program we tried to run.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file or directory could not be read or written.
    #[error("state I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file exists but does not parse.
    #[error("corrupt state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A value refused before anything was touched (interface name, mapping...).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value (`interface name`, `port mapping`...).
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// An interface name refused by the suite's one rule.
    #[error(transparent)]
    IfName(#[from] netbase::InvalidIfName),
    /// A port protocol other than tcp, udp or sctp.
    #[error(transparent)]
    Protocol(#[from] netbase::InvalidProtocol),
    /// CHECK found elements of an attachment missing from the kernel.
    #[error(
        "{what} missing for {attachment}: {elems} (after a firewall reload, run `cnirs reconcile`, or keep `cnirs watch` running)"
    )]
    Missing {
        /// What was checked (`firewall elements`, `published ports`...).
        what: &'static str,
        /// `network/container-id/ifname`.
        attachment: String,
        /// The missing elements.
        elems: String,
    },
    /// A netlink request of our own (table probe, netns cookie) failed.
    #[error("netlink ({what}): {source}")]
    Netlink {
        /// What was asked.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The table was missing (or replaced) and restoring it failed: the attachment would not
    /// be sealed, so the call fails.
    #[error("table inet cnirs is missing or was replaced (a firewall reload or `nft flush ruleset`?) and restoring it from {state} failed: {source}")]
    Restore {
        /// The state directory restored from.
        state: PathBuf,
        /// Why it failed.
        source: Box<NftError>,
    },
    /// CHECK of an attachment the state does not know.
    #[error("no {feature} attachment {attachment} in firewall state")]
    NotAttached {
        /// The feature (`network`, `isolation`, `portmap`).
        feature: &'static str,
        /// `network/container-id/ifname`.
        attachment: String,
    },
}

impl NftError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NftError::Io {
            path: path.into(),
            source,
        }
    }
}

impl NftError {
    /// The kind of failure, for the plugin's one mapping to CNI codes.
    pub fn class(&self) -> netbase::ErrorClass {
        use netbase::ErrorClass as C;
        match self {
            NftError::Conflict { .. } => C::Conflict,
            NftError::Invalid { .. } | NftError::IfName(_) | NftError::Protocol(_) => {
                C::InvalidConfig
            }
            NftError::NotAttached { .. } | NftError::Missing { .. } => C::CheckFailed,
            NftError::Io { .. } | NftError::State { .. } => C::Io,
            NftError::Nft { .. }
            | NftError::Spawn { .. }
            | NftError::Netlink { .. }
            | NftError::Restore { .. } => C::Firewall,
        }
    }
}

impl netbase::Classified for NftError {
    fn class(&self) -> netbase::ErrorClass {
        NftError::class(self)
    }
}
