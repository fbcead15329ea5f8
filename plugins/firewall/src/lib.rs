//! `firewall`: a drop-in for the reference firewall plugin's config, on the suite's nftables
//! table (no iptables binary, no firewalld).
//!
//! - Forwarding on hosts whose FORWARD policy is drop: the bridge's traffic is accepted in the
//!   host's own `filter FORWARD` chains (per bridge, see `nftplan::Firewall::attach_forward`),
//!   removed with the network's last attachment.
//! - `ingressPolicy`: `open` (default) or `same-bridge`: the pod's bridge cannot be reached
//!   from other `same-bridge`/isolated bridges: the `isolation` plugin's guarantee, with its
//!   code and its set element.
//! - `backend: firewalld` is refused (we do not talk to firewalld: ignoring it would leave
//!   the pod unreachable where the user expects a zone); `backend: iptables`,
//!   `iptablesAdminChainName` and `firewalldZone` are accepted and ignored with a log line.

//!
//! Its one side effect, the firewall table, is handed to the verbs ([`FirewallCell`]).

use cni_core::{CniError, CniResult, Plugin, Request};
use nftplan::{Attachment, Feature, FirewallCell, NftError};
use serde::Deserialize;

pub struct Firewall;

cni_core::plugin_error! {
    /// The plugin's errors, each with its cause; CNI codes are chosen once, by the macro's
    /// `From<FirewallError> for CniError`.
    pub enum FirewallError {
        Nft(NftError),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    iptables_admin_chain_name: Option<String>,
    #[serde(default)]
    firewalld_zone: Option<String>,
    #[serde(default)]
    ingress_policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Open,
    SameBridge,
}

pub fn parse(req: &Request) -> Result<Ingress, CniError> {
    let raw: RawConf = req.parse_conf()?;
    match raw.backend.as_deref() {
        None | Some("") | Some("iptables") | Some("nftables") => {}
        Some("firewalld") => {
            return Err(CniError::config(
                "backend",
                "firewalld is not supported: this plugin manages nftables rules itself (use \"iptables\" or leave it out)",
            ))
        }
        Some(other) => {
            return Err(CniError::config("backend", format!("{other:?} is not iptables or firewalld")))
        }
    }
    if raw.iptables_admin_chain_name.is_some() || raw.firewalld_zone.is_some() {
        log::info!("firewall: iptablesAdminChainName/firewalldZone are ignored (no iptables chains, no firewalld)");
    }
    match raw.ingress_policy.as_deref() {
        None | Some("") | Some("open") => Ok(Ingress::Open),
        Some("same-bridge") => Ok(Ingress::SameBridge),
        Some(other) => Err(CniError::config(
            "ingressPolicy",
            format!("{other:?} is not \"open\" or \"same-bridge\""),
        )),
    }
}

fn add(fw: &FirewallCell, req: &Request) -> Result<CniResult, FirewallError> {
    let ingress = parse(req)?;
    let prev = req.require_prev_result()?;
    if prev.container_ips(&req.ifname).is_empty() {
        return Err(CniError::config("prevResult", "no container addresses to let through").into());
    }
    let bridge = prev.bridge()?;
    let fw = fw.get()?;
    let att = Attachment::of(req)?;
    fw.attach_forward(&att, &bridge)?;
    if ingress == Ingress::SameBridge {
        if let Err(e) = fw.attach_isolation(&att, &bridge) {
            // Undo the step before, then answer with the original error.
            if let Err(u) = fw.detach_forward(&att) {
                log::warn!("{}: rollback of the FORWARD accept: {u}", req.tag());
            }
            return Err(e.into());
        }
    }
    Ok(prev)
}

/// DEL goes on past a failure: both features are released, every failure is reported.
fn del(fw: &FirewallCell, req: &Request) -> Result<(), CniError> {
    // An unknown policy must not block DEL: always release what this attachment may own.
    let _ = parse(req);
    let fw = fw.get().map_err(FirewallError::from)?;
    let att = Attachment::of(req).map_err(FirewallError::from)?;
    let errors: Vec<CniError> = [fw.detach_isolation(&att), fw.detach_forward(&att)]
        .into_iter()
        .filter_map(Result::err)
        .map(|e| FirewallError::from(e).into())
        .collect();
    cni_core::error::combine(errors)
}

fn check(fw: &FirewallCell, req: &Request) -> Result<(), FirewallError> {
    let ingress = parse(req)?;
    let prev = req.require_prev_result()?;
    prev.bridge()?;
    if ingress == Ingress::Open {
        return Ok(());
    }
    let att = Attachment::of(req)?;
    let missing = fw.get()?.check_isolation(&att)?;
    Ok(nftplan::missing_error(
        "same-bridge isolation",
        &att,
        &missing,
    )?)
}

/// GC goes on past a failure too.
fn gc(fw: &FirewallCell, req: &Request) -> Result<(), CniError> {
    let fw = fw.get().map_err(FirewallError::from)?;
    let valid = req.valid_pairs();
    let errors: Vec<CniError> = [Feature::Isolation, Feature::Firewall]
        .into_iter()
        .filter_map(|f| fw.gc(f, &req.conf.name, &valid).err())
        .map(|e| FirewallError::from(e).into())
        .collect();
    cni_core::error::combine(errors)
}

impl Plugin for Firewall {
    fn name(&self) -> &'static str {
        "firewall"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(&FirewallCell::lazy(&req.detach), req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(&FirewallCell::lazy(&req.detach), req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(&FirewallCell::lazy(&req.detach), req)
    }
}

#[cfg(test)]
mod tests;
