//! The overlay plugin's errors: kernel failures keep their source; the CNI code is chosen once,
//! here, at the plugin's edge.

use cni_core::{error::from_classified, CniError};
use netops::NetopsError;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A netlink step (underlay lookup, bridge, VXLAN device, FDB entry) failed.
    #[error("overlay dataplane: {0}")]
    Kernel(#[from] NetopsError),
    /// Already a CNI error (config, check, etcd), passed on as it is.
    #[error(transparent)]
    Cni(#[from] CniError),
}

impl From<OverlayError> for CniError {
    fn from(e: OverlayError) -> Self {
        match e {
            OverlayError::Kernel(k) => from_classified(k.class(), &k, k.hint()),
            OverlayError::Cni(c) => c,
        }
    }
}
