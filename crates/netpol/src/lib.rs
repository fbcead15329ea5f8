//! Kubernetes NetworkPolicy (networking.k8s.io/v1) on one host, enforced in table
//! `inet cnirs` (see `docs/netpol.md`).
//!
//! ```text
//! file (YAML/JSON) -> parse -> model::Object -> policy::validate (API server rules,
//!   defaulting) -> store (objects + pod attachments) -> compile::compile (pure) ->
//!   BTreeSet<Elem> (np_* sets) -> Firewall::set_netpol (one transaction: the difference)
//! ```
//! The chains (`netpol`, `np_ingress`, `np_egress`) are part of the skeleton and never
//! change; a policy or pod change only adds and removes set elements.

pub mod cluster;
pub mod compile;
mod index;
mod listing;
pub mod model;
#[cfg(any(test, feature = "oracle"))]
pub mod oracle;
pub mod parse;
pub mod policy;
pub mod source;
pub mod store;
pub mod typed;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use compile::{compile, World};
pub use parse::parse;
pub use source::{FileSource, ObjectStore, Snapshot};
pub use store::{PodAttachment, Store};

/// Errors of the policy code, with their sources.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The input file is not YAML/JSON of the kinds we take.
    #[error("document {doc}: {reason}")]
    Parse {
        /// 1-based document number
        doc: usize,
        /// why
        reason: String,
    },
    /// One object failed validation (`field: message` as the API server words them).
    #[error("{object} is invalid: {}", errors.join("; "))]
    Invalid {
        /// Kind/namespace/name
        object: String,
        /// each field's error
        errors: Vec<String>,
    },
    /// Some objects of an apply failed validation: nothing was changed.
    #[error("{0}")]
    Rejected(String),
    /// Objects to delete that do not exist: nothing was changed.
    #[error("not found: {0}")]
    NotFound(String),
    /// A state file.
    #[error("{}: {source}", path.display())]
    Io {
        /// the file
        path: PathBuf,
        /// the cause
        source: std::io::Error,
    },
    /// A state file that does not parse.
    #[error("{}: {source}", path.display())]
    State {
        /// the file
        path: PathBuf,
        /// the cause
        source: serde_json::Error,
    },
    /// The firewall.
    #[error(transparent)]
    Nft(#[from] nftplan::NftError),
    /// etcd (shared objects): unreachable, TLS refused, ...
    #[error("etcd: {0}")]
    Etcd(#[from] etcd::EtcdError),
    /// A value under `<prefix>/netpol/` that does not parse.
    #[error("etcd key {key}: {source}")]
    Record {
        /// the key
        key: String,
        /// the cause
        source: serde_json::Error,
    },
}

impl PolicyError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
