//! The overlay plugin's one error type: every failure keeps its cause, and the CNI code is
//! chosen once, in `From<OverlayError> for CniError`. DEL and GC go on past failures and
//! report them all ([`combine`]).

use bridge_plugin::BridgeError;
use cni_core::{error::from_classified, CniError, ErrorCode};
use etcd::EtcdError;
use netops::NetopsError;
use nftplan::NftError;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Parsing, environment, IPAM delegation: already a CNI error with its code.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// A netlink step of the overlay's own (underlay lookup, device, table, rules).
    #[error("overlay dataplane: {0}")]
    Kernel(#[from] NetopsError),
    #[error(transparent)]
    Firewall(#[from] NftError),
    /// The bridge attachment (its preflight, a step of the plan, its checks).
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// An etcd call, named.
    #[error("etcd: {what}: {source}")]
    Etcd { what: String, source: EtcdError },
    /// A link of the VXLAN device's name that was not made for this network.
    #[error("link {name} is not this network's VXLAN device: want {want}, found {have}")]
    DeviceMismatch {
        name: String,
        want: String,
        have: String,
    },
    /// The network is registered in the cluster under another VNI.
    #[error("network {network} is VNI {have} in the cluster ({key}), this config says {want}")]
    VniConflict {
        network: String,
        key: String,
        have: u32,
        want: u32,
    },
    /// `hosts/<node>` names another VTEP: two hosts share one node name.
    #[error(
        "node name {node:?} ({source_of}) is registered in etcd ({key}) by another host, VTEP \
         {theirs}; this host's VTEP is {ours}: two hosts share one node name. Give each host its \
         own (CNIRS_NODE_NAME for the plugins, the same for the agent's --node-name)"
    )]
    NodeTaken {
        node: String,
        source_of: &'static str,
        key: String,
        theirs: std::net::IpAddr,
        ours: std::net::IpAddr,
    },
    /// The network's per-host lock.
    #[error("lock {path}: {source}")]
    Lock {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// CHECK found the host or the pod not as ADD left it.
    #[error("{0}")]
    Check(String),
}

impl OverlayError {
    /// An etcd failure of `what`.
    pub fn etcd(what: impl Into<String>, source: EtcdError) -> Self {
        OverlayError::Etcd {
            what: what.into(),
            source,
        }
    }
}

/// The one place this plugin's errors become CNI errors.
impl From<OverlayError> for CniError {
    fn from(e: OverlayError) -> CniError {
        let msg = e.to_string();
        let plain = |code| CniError::new(code, msg.clone());
        match e {
            OverlayError::Cni(c) => c,
            OverlayError::Kernel(k) => from_classified(k.class(), &k, k.hint()),
            OverlayError::Firewall(f) => from_classified(f.class(), &f, None),
            OverlayError::Bridge(b) => b.into(),
            // TLS at first contact (the CA does not verify the member, our certificate refused
            // or missing): the config's fault, code 7 naming the key.
            OverlayError::Etcd { source, .. } if source.is_config() => {
                let field = source.tls_file().map_or_else(
                    || "ipam.etcdEndpoints".to_string(),
                    |f| format!("ipam.{}", f.conf_key()),
                );
                CniError::config(&field, msg)
            }
            OverlayError::Etcd {
                source: EtcdError::Unavailable { .. },
                ..
            } => plain(ErrorCode::TryAgainLater),
            OverlayError::Etcd { .. } | OverlayError::Lock { .. } => plain(ErrorCode::Io),
            OverlayError::DeviceMismatch { .. } | OverlayError::VniConflict { .. } => {
                plain(ErrorCode::Conflict)
            }
            OverlayError::NodeTaken { .. } => plain(ErrorCode::InvalidConfig),
            OverlayError::Check(_) => plain(ErrorCode::CheckFailed),
        }
    }
}

/// DEL and GC go on past failures: the first decides the code, every one is in `details`.
pub fn combine(errors: Vec<OverlayError>) -> Result<(), CniError> {
    cni_core::error::combine(errors.into_iter().map(CniError::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_reported_with_the_first_ones_code() {
        let r = combine(vec![
            OverlayError::Check("veth gone".into()),
            OverlayError::Cni(CniError::new(ErrorCode::TryAgainLater, "etcd down")),
            OverlayError::Lock {
                path: "/run/x".into(),
                source: std::io::Error::from_raw_os_error(13),
            },
        ]);
        let c = r.unwrap_err();
        assert_eq!(c.code(), ErrorCode::CheckFailed.as_u32());
        assert!(c.details.contains("etcd down"), "{}", c.details);
        assert!(c.details.contains("/run/x"), "{}", c.details);
        assert!(combine(Vec::new()).is_ok());
    }

    #[test]
    fn a_conflict_on_the_device_or_the_vni_is_103_and_a_shared_node_name_7() {
        let c = CniError::from(OverlayError::VniConflict {
            network: "ov".into(),
            key: "/cnirs/networks/ov".into(),
            have: 7,
            want: 8,
        });
        assert_eq!(c.code(), ErrorCode::Conflict.as_u32());
        let c = CniError::from(OverlayError::NodeTaken {
            node: "h1".into(),
            source_of: "CNIRS_NODE_NAME",
            key: "/cnirs/hosts/h1".into(),
            theirs: "10.240.0.1".parse().unwrap(),
            ours: "10.240.0.3".parse().unwrap(),
        });
        assert_eq!(c.code(), ErrorCode::InvalidConfig.as_u32());
        assert!(c.msg.contains("10.240.0.3"), "{}", c.msg);
    }
}
