//! The crate's one error type; mapped once to a `CniError` at the plugin's edge.

use std::{net::IpAddr, path::PathBuf};

use cni_core::{CniError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 7: a config value (or requested address) is invalid; names the field.
    #[error("invalid config: {field}: {problem}")]
    Config { field: String, problem: String },

    /// Code 104: every address of a range set is taken.
    #[error("no IP addresses available in range set {index} ({ranges}) of network {network}")]
    Exhausted {
        network: String,
        index: usize,
        ranges: String,
    },

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
        Self::Config {
            field: field.into(),
            problem: problem.to_string(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<ipamconf::ConfigError> for Error {
    fn from(e: ipamconf::ConfigError) -> Self {
        Error::Config {
            field: e.field,
            problem: e.problem,
        }
    }
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Config { field, problem } => CniError::config(field, problem),
            Error::Exhausted { .. } => CniError::new(ErrorCode::AddressesExhausted, e.to_string()),
            Error::Taken { .. } | Error::AlreadyHolds { .. } => {
                CniError::new(ErrorCode::Conflict, e.to_string())
            }
            Error::NotReserved { .. } => CniError::new(ErrorCode::CheckFailed, e.to_string()),
            Error::Io { .. } => CniError::new(ErrorCode::Io, e.to_string()),
        }
    }
}
