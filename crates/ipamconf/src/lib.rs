//! The `ipam` section the reference's host-local reads, shared by our `host-local` and
//! `etcd-ipam`: ranges and range sets ([`range`]), and the config with its routes, requested
//! addresses and `resolvConf` ([`config`]), validated with code-7 errors naming the field
//! ([`ConfigError`]).

pub mod config;
pub mod range;

use cni_core::{CniError, CniResult, Dns, IpConfig, Route};

pub use config::{IpamConfig, Requested};

/// Default `dataDir` of host-local (the reference's).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A config value (or requested address) that is invalid: code 7 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        CniError::config(&e.field, e.problem)
    }
}

/// Every address of range set `index` (`ranges`) of `network` is taken: code 104.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no IP addresses available in range set {index} ({ranges}) of network {network}")]
pub struct Exhausted {
    pub network: String,
    pub index: usize,
    pub ranges: String,
}

impl From<Exhausted> for CniError {
    fn from(e: Exhausted) -> Self {
        CniError::new(cni_core::ErrorCode::AddressesExhausted, e.to_string())
    }
}

/// An IPAM ADD's result (addresses, the config's routes, DNS), logged once as
/// `LABEL: ADDRESS,...`.
pub fn result(label: &str, ips: Vec<IpConfig>, routes: Vec<Route>, dns: Dns) -> CniResult {
    log::info!(
        "{label}: {}",
        ips.iter()
            .map(|i| i.address.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    CniResult {
        interfaces: Vec::new(),
        ips,
        routes,
        dns,
    }
}
