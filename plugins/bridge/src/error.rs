//! The plugin's own error: every failure keeps its cause, and the CNI code is chosen once, in
//! `From<BridgeError> for CniError`, where `details` gets the cause chain.

use std::net::IpAddr;

use cni_core::{error::from_lower, CniError, ErrorCode, IfName};
use ipnetwork::IpNetwork;
use netops::NetopsError;
use nftplan::NftError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Parsing, environment or IPAM delegation: already a CNI error with its code.
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Kernel(#[from] NetopsError),
    #[error(transparent)]
    Firewall(#[from] NftError),
    #[error("interface {ifname} already exists in {netns}")]
    IfnameTaken { ifname: IfName, netns: String },
    #[error("link {name} exists and is a {kind}, not a bridge")]
    NotABridge { name: IfName, kind: String },
    #[error(
        "bridge {bridge} already has address {have}, different from {want}: another network \
         uses this bridge (set forceAddress to replace it)"
    )]
    BridgeAddressTaken {
        bridge: IfName,
        have: IpNetwork,
        want: IpNetwork,
    },
    #[error("invalid config: ipam: the pod address {0} is the gateway address")]
    PodAddressIsGateway(IpNetwork),
    #[error("invalid config: ipam: gateway {gw} with prefix {prefix}")]
    BadGateway { gw: IpAddr, prefix: u8 },
    #[error("IPAM plugin returned no IP addresses")]
    NoAddresses,
    /// A step of the plan failed (the steps before it were undone).
    #[error("{source}")]
    Step {
        step: usize,
        command: String,
        #[source]
        source: Box<BridgeError>,
    },
    #[error("{0}")]
    Check(String),
}

impl BridgeError {
    /// The CNI error of this one failure: code by kind, message, details from the causes.
    fn to_cni(&self) -> CniError {
        let plain = |code| CniError::new(code, self.to_string());
        match self {
            BridgeError::Cni(c) => c.clone(),
            BridgeError::Kernel(k) => from_lower(k),
            BridgeError::Firewall(f) => from_lower(f),
            BridgeError::IfnameTaken { .. } | BridgeError::BridgeAddressTaken { .. } => {
                plain(ErrorCode::Conflict)
            }
            BridgeError::NotABridge { .. }
            | BridgeError::PodAddressIsGateway(_)
            | BridgeError::BadGateway { .. } => plain(ErrorCode::InvalidConfig),
            BridgeError::NoAddresses => plain(ErrorCode::Delegate),
            BridgeError::Check(_) => plain(ErrorCode::CheckFailed),
            BridgeError::Step {
                step,
                command,
                source,
            } => source.to_cni().at_step(*step, command),
        }
    }
}

/// The one place this plugin's errors become CNI errors.
impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> CniError {
        e.to_cni()
    }
}

/// DEL and GC go on past failures: the first decides the code, every one is in `details`.
pub fn combine(errors: Vec<BridgeError>) -> Result<(), CniError> {
    cni_core::error::combine(errors.into_iter().map(CniError::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_keeps_the_kernel_code_and_names_the_step_in_details() {
        let e = BridgeError::Step {
            step: 3,
            command: "ip link set vethx master cni0 up".into(),
            source: Box::new(BridgeError::Kernel(NetopsError::LinkNotFound {
                name: "cni0".into(),
                netns: "host".into(),
            })),
        };
        let c = CniError::from(e);
        assert_eq!(c.code(), 100);
        assert!(c.msg.contains("cni0"), "{}", c.msg);
        assert!(c.details.contains("step 3") && c.details.contains("master cni0"));
    }

    #[test]
    fn del_reports_every_failure_with_the_first_ones_code() {
        let r = combine(vec![
            BridgeError::IfnameTaken {
                ifname: IfName::new("eth0").unwrap(),
                netns: "/run/netns/a".into(),
            },
            BridgeError::NoAddresses,
        ]);
        let c = r.unwrap_err();
        assert_eq!(c.code(), 103);
        assert!(c
            .details
            .contains("also: IPAM plugin returned no IP addresses"));
    }

    #[test]
    fn cni_errors_from_below_keep_their_code() {
        let c = CniError::from(BridgeError::Cni(CniError::config("mtu", "too small")));
        assert_eq!(c.code(), 7);
        assert!(c.msg.contains("mtu"));
    }
}
