//! The crate's error type; mapped once to a `CniError` at the plugin's edge.

use std::net::IpAddr;

use cni_core::{CniError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 11: etcd did not answer (every endpoint tried until the deadline), or refused.
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),

    /// Code 7: a requested address cannot be handed out; names where it came from.
    #[error(transparent)]
    Config(#[from] ipamconf::ConfigError),

    /// Code 104: this node's blocks of a range set are full and no block is left to claim
    /// (dead nodes' blocks reclaimed first).
    #[error(transparent)]
    Exhausted(#[from] ipamconf::Exhausted),

    /// Code 103: a requested address is held by another attachment.
    #[error("requested IP address {ip} is already held by {owner}")]
    Taken { ip: IpAddr, owner: String },

    /// Code 103: a requested address lies in a block another node holds (the overlay routes
    /// each block to its node, so it would not be reachable here).
    #[error(
        "requested IP address {ip} lies in block {block}, held by node {node:?}: addresses are \
         routed to the node that holds their block, so a node hands out only addresses of its \
         own blocks (request one of this node's, or an address in an unclaimed block)"
    )]
    OtherNodesBlock {
        ip: IpAddr,
        block: ipnetwork::IpNetwork,
        node: String,
    },

    /// Code 11: an address picked under the host's lock was taken (a writer that does not
    /// honour the lock).
    #[error("node {node}: an address picked under the host's lock was taken meanwhile; try again")]
    Contention { node: String },

    /// Code 105 (CHECK) or 7 (ADD): the attachment's record does not fit the config.
    #[error("{what}")]
    Stale { what: String },

    /// Code 103: the attachment already holds another address of the range set.
    #[error("this attachment already holds {held}; release it before requesting {requested}")]
    AlreadyHolds { held: IpAddr, requested: IpAddr },

    /// This host's lease files (code 5 for an I/O error; host-local's codes otherwise).
    #[error(transparent)]
    Local(Box<host_local::HostLocalError>),

    /// Code 105: CHECK found no address for the attachment.
    #[error("no address held by {container}/{ifname} in range set {index} ({ranges}) of network {network}")]
    NotHeld {
        container: String,
        ifname: String,
        network: String,
        index: usize,
        ranges: String,
    },
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Local(l) => return (*l).into(),
            Error::Config(c) => return c.into(),
            // A TLS failure at first contact (CA does not verify the member, our certificate
            // refused or missing) is the config's fault: code 7 naming the key.
            Error::Etcd(ref etcd_err) if etcd_err.is_config() => {
                let field = etcd_err
                    .tls_file()
                    .map(crate::config::tls_field)
                    .unwrap_or_else(|| "ipam.etcdEndpoints".to_string());
                return CniError::config(&field, etcd_err);
            }
            Error::Etcd(_) | Error::Contention { .. } => ErrorCode::TryAgainLater,
            Error::OtherNodesBlock { .. } => ErrorCode::Conflict,
            Error::Stale { .. } => ErrorCode::CheckFailed,
            Error::Exhausted(_) => ErrorCode::AddressesExhausted,
            Error::Taken { .. } | Error::AlreadyHolds { .. } => ErrorCode::Conflict,
            Error::NotHeld { .. } => ErrorCode::CheckFailed,
        };
        CniError::new(code, e.to_string())
    }
}
