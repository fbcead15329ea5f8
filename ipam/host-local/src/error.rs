//! The crate's one error type; mapped once to a `CniError` at the plugin's edge.

use std::{net::IpAddr, path::PathBuf};

use cni_core::{CniError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 7: a config value (or requested address) is invalid; names the field.
    #[error(transparent)]
    Config(#[from] ipamconf::ConfigError),

    /// Code 104: every address of a range set is taken.
    #[error(transparent)]
    Exhausted(#[from] ipamconf::Exhausted),

    /// Code 103: a requested address is held by another container.
    #[error("requested IP address {ip} (from {field}) is already reserved by {owner}")]
    Taken {
        ip: IpAddr,
        field: String,
        owner: String,
    },

    /// Code 103: the container already holds another address of the range set.
    #[error("{container} already holds {held} in range set {index}; release it before requesting {requested}")]
    AlreadyHolds {
        container: String,
        held: IpAddr,
        index: usize,
        requested: IpAddr,
    },

    /// Code 105: CHECK found no lease.
    #[error(
        "no address reserved for {container} in range set {index} ({ranges}) of network {network}"
    )]
    NotReserved {
        container: String,
        network: String,
        index: usize,
        ranges: String,
    },

    /// Code 5: a file or directory of the data dir.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn config(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Self::Config(ipamconf::ConfigError::new(field, problem))
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Config(c) => c.clone().into(),
            Error::Exhausted(x) => x.clone().into(),
            Error::Taken { .. } | Error::AlreadyHolds { .. } => {
                CniError::new(ErrorCode::Conflict, e.to_string())
            }
            Error::NotReserved { .. } => CniError::new(ErrorCode::CheckFailed, e.to_string()),
            Error::Io { .. } => CniError::new(ErrorCode::Io, e.to_string()),
        }
    }
}
