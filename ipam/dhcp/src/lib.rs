//! dhcp IPAM: a drop-in for the reference plugin (`plugins/ipam/dhcp`) and its daemon.
//!
//! One binary, two roles: run by a runtime it is the CNI plugin, which asks the daemon over
//! `/run/cni/dhcp.sock` (or `ipam.daemonSocketPath`); run as `dhcp daemon` it is the daemon,
//! which acquires each lease inside the pod netns on the container interface, renews it for
//! the pod's life and releases it on DEL. Plugin and daemon speak the reference's protocol
//! (Go net/rpc over HTTP, gob), so either side can be the reference's.
//!
//! - [`config`]: the `ipam` keys, the client id, the options sent (pure);
//! - [`proto`]: the DHCP exchanges over a [`proto::Transport`] and the lease -> result (pure);
//! - [`packet`]: the `AF_PACKET` transport;
//! - [`lease`]: the thread that keeps one lease;
//! - [`rpc`]: the net/rpc + gob protocol; [`daemon`]: the daemon; [`plugin`]: the plugin.

pub mod config;
pub mod daemon;
pub mod lease;
pub mod packet;
pub mod plugin;
pub mod proto;
pub mod rpc;

pub use plugin::Dhcp;
