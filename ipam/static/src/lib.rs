//! static IPAM: a drop-in for the reference plugin (`plugins/ipam/static`).
//!
//! It allocates nothing: ADD answers the addresses, routes and DNS written in the config, DEL
//! has nothing to release, CHECK compares the config with `prevResult`. The addresses come, as
//! the reference's `LoadIPAMConfig` takes them, from (in this order):
//!
//! 1. `ipam.addresses` (`address` in CIDR form with the host bits, optional `gateway`);
//! 2. `CNI_ARGS` `IP=` (comma-separated CIDRs, appended), with `GATEWAY=` (comma-separated
//!    addresses) given to the `IP=` addresses that contain it;
//! 3. `args.cni.ips`: when not empty, it *replaces* everything above;
//! 4. `runtimeConfig.ips` (capability `ips`): when not empty, it replaces everything above.
//!
//! Keys are matched as Go matches them (exact, else case-insensitive; `cni_core::gokeys`).
//! Where we are stricter than the reference, it is on inputs the reference accepts and then
//! answers something broken: a gateway of the other family than its address is refused, the
//! Go struct's internal `Address` (an `IPNet` object) is refused, and CHECK fails when a
//! configured address is missing from `prevResult` (the reference passes it).

use std::net::IpAddr;

use cni_core::{
    args::CniArgs, result::parse_cidr, CniError, CniResult, Dns, ErrorCode, IpConfig, Plugin,
    Request, Route, Version,
};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

/// The plugin, for `cni_core::skel::run`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Static;

/// One configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// With its host bits: `10.10.0.5/24`.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// The validated config: what ADD answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticConfig {
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNet {
    ipam: Option<RawIpam>,
    runtime_config: Option<RawIps>,
    args: Option<RawArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawIpam {
    routes: Option<Vec<RawRoute>>,
    addresses: Option<Vec<RawAddress>>,
    dns: Option<Dns>,
}

/// The reference's `Address` struct: `address` is its `AddressStr`; its untagged `Address`
/// field (a Go `net.IPNet`) is matched by the exact key `Address` only, as Go does (a folded
/// `ADDRESS` goes to `address`, the first field in Go's order too).
#[derive(Debug, Default, Deserialize)]
struct RawAddress {
    address: Option<String>,
    gateway: Option<String>,
    #[serde(rename = "Address")]
    go_ipnet: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
    mtu: Option<i64>,
    advmss: Option<i64>,
    priority: Option<i64>,
    table: Option<i64>,
    scope: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawIps {
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    cni: Option<RawIps>,
}

fn cidr(s: &str, field: &str, what: &str) -> Result<IpNetwork, CniError> {
    parse_cidr(s).ok_or_else(|| {
        CniError::config(
            field,
            format!("{what} is expected to be in CIDR notation, got: {s:?}"),
        )
    })
}

/// A Go `net.IP` as text: empty is "none", anything else must parse.
fn opt_ip(s: Option<&str>, field: &str) -> Result<Option<IpAddr>, CniError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| CniError::config(field, format!("invalid IP address: {s:?}"))),
    }
}

fn opt_u32(v: Option<i64>, field: &str) -> Result<Option<u32>, CniError> {
    v.map(|n| u32::try_from(n).map_err(|_| CniError::config(field, format!("{n} is out of range"))))
        .transpose()
}

fn route(r: &RawRoute, field: &str) -> Result<Route, CniError> {
    let dst = r
        .dst
        .as_deref()
        .ok_or_else(|| CniError::config(field, "missing \"dst\""))?;
    let mut out = Route::new(
        cidr(dst, &format!("{field}.dst"), "dst")?,
        opt_ip(r.gw.as_deref(), &format!("{field}.gw"))?,
    );
    out.mtu = opt_u32(r.mtu, &format!("{field}.mtu"))?;
    out.advmss = opt_u32(r.advmss, &format!("{field}.advmss"))?;
    out.priority = opt_u32(r.priority, &format!("{field}.priority"))?;
    out.table = opt_u32(r.table, &format!("{field}.table"))?;
    out.scope = opt_u32(r.scope, &format!("{field}.scope"))?;
    Ok(out)
}

/// `ips` entries (from `args.cni.ips` or `runtimeConfig.ips`): CIDRs, no gateway.
fn ip_list(ips: &[String], field: &str) -> Result<Vec<Address>, CniError> {
    ips.iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(Address {
                address: cidr(s, &format!("{field}[{i}]"), "an entry in the 'ips' field")?,
                gateway: None,
            })
        })
        .collect()
}

/// Parse and validate the config the way the reference's `LoadIPAMConfig` does (see the crate
/// doc for the order of sources). `version` is the config's negotiated `cniVersion`.
pub fn load(stdin: &[u8], version: Version, args: &CniArgs) -> Result<StaticConfig, CniError> {
    let net: RawNet = cni_core::conf::parse(stdin)?;
    let ipam = net
        .ipam
        .ok_or_else(|| CniError::config("ipam", "IPAM config missing 'ipam' key"))?;

    let mut addresses = Vec::new();
    for (i, a) in ipam.addresses.iter().flatten().enumerate() {
        let field = format!("ipam.addresses[{i}]");
        if a.go_ipnet.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(CniError::config(
                &format!("{field}.Address"),
                "not supported: give the address as \"address\" in CIDR notation",
            ));
        }
        let text = a.address.as_deref().unwrap_or_default();
        addresses.push(Address {
            address: cidr(text, &format!("{field}.address"), "the 'address' field")?,
            gateway: opt_ip(a.gateway.as_deref(), &format!("{field}.gateway"))?,
        });
    }

    // CNI_ARGS IP= is appended; GATEWAY= goes to the IP= addresses that contain it (the
    // reference tests containment before the config's own addresses are parsed, so those
    // never match).
    let from_config = addresses.len();
    if let Some(ip) = args.get("IP").filter(|s| !s.is_empty()) {
        for item in ip.split(',').map(str::trim) {
            addresses.push(Address {
                address: cidr(item, "CNI_ARGS IP", "the 'ip' field")?,
                gateway: None,
            });
        }
    }
    if let Some(gws) = args.get("GATEWAY").filter(|s| !s.is_empty()) {
        for item in gws.split(',') {
            let gw: IpAddr = item.trim().parse().map_err(|_| {
                CniError::config(
                    "CNI_ARGS GATEWAY",
                    format!("invalid gateway address: {item}"),
                )
            })?;
            for a in addresses.iter_mut().skip(from_config) {
                if a.address.contains(gw) {
                    a.gateway = Some(gw);
                }
            }
        }
    }

    if let Some(ips) = net
        .args
        .and_then(|a| a.cni)
        .and_then(|c| c.ips)
        .filter(|v| !v.is_empty())
    {
        addresses = ip_list(&ips, "args.cni.ips")?;
    }
    if let Some(ips) = net
        .runtime_config
        .and_then(|r| r.ips)
        .filter(|v| !v.is_empty())
    {
        addresses = ip_list(&ips, "runtimeConfig.ips")?;
    }

    for (i, a) in addresses.iter().enumerate() {
        if let Some(gw) = a.gateway {
            if gw.is_ipv4() != a.address.is_ipv4() {
                return Err(CniError::config(
                    &format!("addresses[{i}]"),
                    format!(
                        "gateway {gw} is not of the same IP family as address {}",
                        a.address
                    ),
                ));
            }
        }
    }
    let v4 = addresses.iter().filter(|a| a.address.is_ipv4()).count();
    if (v4 > 1 || addresses.len() - v4 > 1) && version < Version::V0_3_0 {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CNI version {version} does not support more than 1 address per family"),
        ));
    }

    let routes = ipam
        .routes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| route(r, &format!("ipam.routes[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StaticConfig {
        addresses,
        routes,
        dns: ipam.dns.unwrap_or_default(),
    })
}

impl StaticConfig {
    /// The ADD result: the addresses (no interface index, as an IPAM result), routes and DNS.
    pub fn result(&self) -> CniResult {
        CniResult {
            interfaces: Vec::new(),
            ips: self
                .addresses
                .iter()
                .map(|a| IpConfig {
                    address: a.address,
                    gateway: a.gateway,
                    interface: None,
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    /// CHECK: every configured address is in `prev` (the same IP), with the configured gateway
    /// when one is configured.
    pub fn check(&self, prev: &CniResult, ifname: &str) -> Result<(), CniError> {
        for a in &self.addresses {
            let Some(found) = prev.ips.iter().find(|p| p.address.ip() == a.address.ip()) else {
                return Err(CniError::new(
                    ErrorCode::CheckFailed,
                    format!(
                        "static: address {} is not in prevResult for interface {ifname}",
                        a.address
                    ),
                ));
            };
            if a.gateway.is_some() && found.gateway != a.gateway {
                return Err(CniError::new(
                    ErrorCode::CheckFailed,
                    format!(
                        "static: Failed to match addr {} on interface {ifname}: gateway {:?}, configured {:?}",
                        a.address.ip(),
                        found.gateway,
                        a.gateway
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Plugin for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["IP", "GATEWAY"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = load(&req.stdin, req.version, &req.args)?;
        log::info!(
            "{}: {}",
            req.tag(),
            cfg.addresses
                .iter()
                .map(|a| a.address.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(cfg.result())
    }

    fn del(&self, _req: &Request) -> Result<(), CniError> {
        // Nothing was allocated.
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = load(&req.stdin, req.version, &req.args)?;
        let prev = req.require_prev_result()?;
        cfg.check(&prev, &req.ifname)
    }
}

#[cfg(test)]
mod tests;
