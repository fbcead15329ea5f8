//! `bridge` and `internal-bridge`: one attachment = a veth from a Linux bridge into the pod.
//!
//! parse ([`config`]) -> read the kernel ([`apply::read_view`]) -> IPAM -> plan ([`plan`]:
//! pure, a list of steps printed as `ip` commands) -> apply (`netops::apply` over
//! [`apply::Effects`], undoing completed steps on a failure) -> result. Errors are
//! [`BridgeError`], mapped to CNI codes once. `internal-bridge` is the same code with [`config::Mode::Internal`]:
//! no default route, no masquerade, and the bridge sealed on the host by the firewall table.

pub mod apply;
pub mod config;
pub mod error;
pub mod plan;
pub mod verbs;

use cni_core::{CniError, CniResult, Plugin, Request};
pub use config::Mode;
pub use error::BridgeError;

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
        verbs::Ctx::real(req, |ctx| verbs::add(ctx, req, self.0))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        verbs::Ctx::real(req, |ctx| verbs::del(ctx, req, self.0))
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        verbs::Ctx::real(req, |ctx| verbs::check(ctx, req, self.0))
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        verbs::Ctx::real(req, |ctx| verbs::status(ctx, req, self.0))
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        verbs::Ctx::real(req, |ctx| verbs::gc(ctx, req, self.0))
    }
}

#[cfg(test)]
#[path = "tests/orchestration.rs"]
mod orchestration;
#[cfg(test)]
mod tests;
