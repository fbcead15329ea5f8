//! The ONE place the overlay depends on the bridge plugin's code.
//!
//! The overlay is "a bridge attachment whose bridge also carries a VXLAN port". Everything about
//! the pod side (veth, addresses, routes, IPAM delegation, firewall elements, rollback, DEL from
//! (network, container, ifname) alone) is the bridge library's, reached only through its public
//! `Plugin` implementation, with the config rewritten by [`crate::config::bridge_stdin`]. When
//! the bridge's plan/apply API changes, only this module is re-pointed.

use bridge_plugin::{Bridge, Mode};
use cni_core::{CniError, CniResult, Plugin, Request};

fn plugin(internal: bool) -> Bridge {
    Bridge(if internal {
        Mode::Internal
    } else {
        Mode::External
    })
}

fn with_stdin(req: &Request, stdin: Vec<u8>) -> Request {
    let mut r = req.clone();
    r.stdin = stdin;
    r
}

/// The bridge attachment's ADD (IPAM, veth, addresses, routes, firewall; rolled back on error).
pub fn add(req: &Request, stdin: Vec<u8>, internal: bool) -> Result<CniResult, CniError> {
    plugin(internal).add(&with_stdin(req, stdin))
}

/// The bridge attachment's DEL (idempotent; releases the address through IPAM).
pub fn del(req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
    plugin(internal).del(&with_stdin(req, stdin))
}

pub fn check(req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
    plugin(internal).check(&with_stdin(req, stdin))
}

pub fn gc(req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
    plugin(internal).gc(&with_stdin(req, stdin))
}

pub fn status(req: &Request, stdin: Vec<u8>, internal: bool) -> Result<(), CniError> {
    plugin(internal).status(&with_stdin(req, stdin))
}

/// The pod interface's MAC in a bridge ADD result.
pub fn pod_mac(req: &Request, result: &CniResult) -> Option<String> {
    result
        .sandbox_interface(&req.ifname)
        .map(|i| result.interfaces[i].mac.clone())
        .filter(|m| !m.is_empty())
}
