//! `bridge` and `internal-bridge`: one attachment = a veth from a Linux bridge into the pod.
//!
//! parse ([`config`]) -> IPAM -> plan ([`plan`], pure) -> apply (kernel + firewall) -> result.
//! `internal-bridge` is the same code with [`config::Mode::Internal`].

pub mod config;
pub mod plan;

#[cfg(test)]
mod tests;
