//! The config: `ingressRate`/`ingressBurst`/`egressRate`/`egressBurst` at the top level of the
//! plugin's config or in `runtimeConfig.bandwidth` (the `bandwidth` capability), keys matched
//! as Go matches them (containerd's CRI sends `IngressRate`, ...). As in the reference, any of
//! those keys at the top level makes the top-level entry the one used, and
//! `runtimeConfig.bandwidth` is then ignored.
//!
//! `shapedSubnets` / `unshapedSubnets` (CIDR lists, one or the other) were in the reference's
//! v1.5 releases (reverted from its main branch in v1.6): here they select which traffic the
//! limits apply to, by the remote address.

use cni_core::{conf::parse_value, CniError, Request};
use ipnetwork::IpNetwork;
use serde::Deserialize;

/// One direction's limit as configured: bits per second and bits of burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u64,
    pub burst: u64,
}

/// Which traffic is shaped, by the remote end's address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subnets {
    /// Everything (the reference's only behaviour on its main branch).
    #[default]
    All,
    /// `shapedSubnets`: only traffic with these.
    Only(Vec<IpNetwork>),
    /// `unshapedSubnets`: everything but traffic with these.
    Except(Vec<IpNetwork>),
}

/// What to set up: at least one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Towards the pod (shaped on the host veth, or an IFB with subnets).
    pub ingress: Option<Limit>,
    /// From the pod (shaped on an IFB the host veth's incoming traffic is redirected to).
    pub egress: Option<Limit>,
    pub subnets: Subnets,
}

/// The keys of one entry: the config's top level, or `runtimeConfig.bandwidth`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    ingress_rate: Option<u64>,
    ingress_burst: Option<u64>,
    egress_rate: Option<u64>,
    egress_burst: Option<u64>,
    shaped_subnets: Option<Vec<String>>,
    unshaped_subnets: Option<Vec<String>>,
}

impl Entry {
    fn present(&self) -> bool {
        self.ingress_rate.is_some()
            || self.ingress_burst.is_some()
            || self.egress_rate.is_some()
            || self.egress_burst.is_some()
            || self.shaped_subnets.is_some()
            || self.unshaped_subnets.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    bandwidth: Option<Entry>,
}

/// The largest burst the reference accepts: `burst/8 < MaxUint32` (a 32-bit byte count).
const MAX_BURST_BYTES: u64 = u32::MAX as u64;

fn limit(rate: u64, burst: u64, field: &str) -> Result<Option<Limit>, CniError> {
    match (rate, burst) {
        (0, 0) => Ok(None),
        (r, 0) if r != 0 => Err(CniError::config(
            &format!("{field}Burst"),
            "if rate is set, burst must also be set",
        )),
        (0, _) => Err(CniError::config(
            &format!("{field}Rate"),
            "if burst is set, rate must also be set",
        )),
        (_, b) if b / 8 >= MAX_BURST_BYTES => Err(CniError::config(
            &format!("{field}Burst"),
            "burst cannot be more than 4GB",
        )),
        // TBF counts bytes per second: below 8 bit/s the rate is zero bytes.
        (r, _) if r < 8 => Err(CniError::config(
            &format!("{field}Rate"),
            format!("{r} bit/s is below the kernel's smallest rate (8 bit/s)"),
        )),
        (rate, burst) => Ok(Some(Limit { rate, burst })),
    }
}

fn subnets(list: &[String], field: &str) -> Result<Vec<IpNetwork>, CniError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let n: IpNetwork = s.parse().map_err(|e| {
                CniError::config(&format!("{field}[{i}]"), format!("bad subnet {s:?}: {e}"))
            })?;
            if !s.contains('/') {
                return Err(CniError::config(
                    &format!("{field}[{i}]"),
                    format!("bad subnet {s:?}: not in CIDR notation"),
                ));
            }
            Ok(netbase::subnet(n))
        })
        .collect()
}

/// The validated request, `None` when it asks for nothing (no entry, or every value zero):
/// then ADD passes the previous result on untouched.
pub fn parse(req: &Request) -> Result<Option<Spec>, CniError> {
    let top: Entry = req.parse_conf()?;
    let (entry, prefix) = if top.present() {
        (top, "")
    } else {
        let rc: RuntimeConfig = match &req.conf.runtime_config {
            Some(v) => parse_value(v, "runtimeConfig")?,
            None => RuntimeConfig::default(),
        };
        match rc.bandwidth {
            Some(e) => (e, "runtimeConfig.bandwidth."),
            None => return Ok(None),
        }
    };
    let ingress = limit(
        entry.ingress_rate.unwrap_or(0),
        entry.ingress_burst.unwrap_or(0),
        &format!("{prefix}ingress"),
    )?;
    let egress = limit(
        entry.egress_rate.unwrap_or(0),
        entry.egress_burst.unwrap_or(0),
        &format!("{prefix}egress"),
    )?;
    let shaped = entry.shaped_subnets.unwrap_or_default();
    let unshaped = entry.unshaped_subnets.unwrap_or_default();
    let subnets = match (shaped.is_empty(), unshaped.is_empty()) {
        (true, true) => Subnets::All,
        (false, true) => Subnets::Only(subnets(&shaped, &format!("{prefix}shapedSubnets"))?),
        (true, false) => {
            Subnets::Except(subnets(&unshaped, &format!("{prefix}unshapedSubnets"))?)
        }
        (false, false) => {
            return Err(CniError::config(
                &format!("{prefix}shapedSubnets"),
                "unshapedSubnets and shapedSubnets cannot be both specified, one of them should be discarded",
            ))
        }
    };
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    Ok(Some(Spec {
        ingress,
        egress,
        subnets,
    }))
}

#[cfg(test)]
mod tests;
