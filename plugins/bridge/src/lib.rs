//! `bridge` and `internal-bridge`: one attachment = a veth from a Linux bridge into the pod.
//!
//! parse ([`config`]) -> IPAM -> plan ([`plan`], pure) -> apply ([`verbs`]: kernel, then
//! firewall) -> result. `internal-bridge` is the same code with [`config::Mode::Internal`]:
//! no default route, no masquerade, and the bridge sealed on the host by the firewall table.

pub mod config;
pub mod plan;
pub mod verbs;

use cni_core::{CniError, CniResult, Plugin, Request};
pub use config::Mode;

/// The plugin, in one of its two modes.
pub struct Bridge(pub Mode);

impl Plugin for Bridge {
    fn name(&self) -> &'static str {
        match self.0 {
            Mode::External => "bridge",
            Mode::Internal => "internal-bridge",
        }
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["MAC"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        verbs::add(req, self.0)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        verbs::del(req, self.0)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        verbs::check(req, self.0)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        verbs::status(req, self.0)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        verbs::gc(req, self.0)
    }
}

#[cfg(test)]
mod tests;
