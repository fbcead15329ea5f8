//! The `ipam` section (plus `args.cni.ips`, `runtimeConfig.ips`/`ipRanges` and `CNI_ARGS IP`)
//! parsed and validated the way the reference's `LoadIPAMConfig` + `Canonicalize` do, with
//! code-7 errors naming the field (`ipam.ranges[0][1].rangeStart: ...`).
//!
//! Range sets are numbered as the reference numbers them (this index names the
//! `last_reserved_ip.<n>` file): `runtimeConfig.ipRanges` first, then the legacy single range
//! (`ipam.subnet`...), then `ipam.ranges`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use cni_core::{args::CniArgs, CniError, Dns, Route, Version};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::{
    range::{canonical, from_u128, to_u128, Range, RangeSet},
    ConfigError as Error, DEFAULT_DATA_DIR,
};

/// An address asked for by the runtime, with the field it came from (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub ip: IpAddr,
    pub field: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNet {
    ipam: Option<RawIpam>,
    #[serde(default)]
    runtime_config: Option<RawRuntime>,
    #[serde(default)]
    args: Option<RawArgs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntime {
    ips: Option<Vec<String>>,
    ip_ranges: Option<Vec<Vec<RawRange>>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    cni: Option<RawCniArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCniArgs {
    ips: Option<Vec<String>>,
}

/// The validated IPAM config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// One address is handed out per set, in this order.
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// Addresses asked for, in the order: `CNI_ARGS IP`, `args.cni.ips`, `runtimeConfig.ips`.
    pub requested: Vec<Requested>,
}

/// Parse the config on stdin. `cni_args` is the parsed `CNI_ARGS` (for `IP=`).
pub fn parse(stdin: &[u8], version: Version, cni_args: &CniArgs) -> Result<IpamConfig, CniError> {
    let raw: RawNet = cni_core::conf::parse(stdin)?;
    build(raw, version, cni_args).map_err(CniError::from)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_ip(s: &str, field: &str) -> Result<IpAddr, Error> {
    s.trim()
        .parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| Error::new(field, format!("{s:?} is not an IP address")))
}

/// `a.b.c.d/n` or `x::/n` (a prefix length, not a netmask, as Go's `ParseCIDR`).
fn parse_cidr(s: &str, field: &str) -> Result<IpNetwork, Error> {
    let bad = || {
        Error::new(
            field,
            format!("{s:?} is not a CIDR (address/prefix length)"),
        )
    };
    let (ip, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    IpNetwork::new(ip, len).map_err(|_| bad())
}

/// One range, as the reference's `Range.Canonicalize`.
fn build_range(raw: &RawRange, field: &str) -> Result<Range, Error> {
    let subnet_field = format!("{field}.subnet");
    let Some(subnet_s) = non_empty(&raw.subnet) else {
        return Err(Error::new(&subnet_field, "missing"));
    };
    let subnet = parse_cidr(subnet_s, &subnet_field)?;
    if subnet.ip() != subnet.network() {
        return Err(Error::new(
            &subnet_field,
            format!(
                "{subnet} has host bits set: the network address is {}/{}",
                subnet.network(),
                subnet.prefix()
            ),
        ));
    }
    let bits = if subnet.is_ipv4() { 32 } else { 128 };
    if subnet.prefix() > bits - 2 {
        return Err(Error::new(
            &subnet_field,
            format!("{subnet} is too small to allocate from"),
        ));
    }
    let in_subnet = |key: &str, s: Option<&str>| -> Result<Option<IpAddr>, Error> {
        let Some(s) = s else { return Ok(None) };
        let f = format!("{field}.{key}");
        let ip = parse_ip(s, &f)?;
        if ip.is_ipv4() != subnet.is_ipv4() {
            return Err(Error::new(
                &f,
                format!("{ip} is not of the same address family as subnet {subnet}"),
            ));
        }
        if !subnet.contains(ip) {
            return Err(Error::new(&f, format!("{ip} is outside subnet {subnet}")));
        }
        Ok(Some(ip))
    };
    let first = from_u128(to_u128(subnet.network()) + 1, subnet.network());
    let gateway = in_subnet("gateway", non_empty(&raw.gateway))?.unwrap_or(first);
    let start = in_subnet("rangeStart", non_empty(&raw.range_start))?.unwrap_or(first);
    let end = match in_subnet("rangeEnd", non_empty(&raw.range_end))? {
        Some(e) => e,
        // The last address, less the broadcast for IPv4.
        None if subnet.is_ipv4() => from_u128(to_u128(subnet.broadcast()) - 1, subnet.network()),
        None => subnet.broadcast(),
    };
    if to_u128(end) < to_u128(start) {
        return Err(Error::new(
            format!("{field}.rangeEnd"),
            format!("{end} is before rangeStart {start}"),
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

/// One range set, as the reference's `RangeSet.Canonicalize`.
fn build_set(raw: &[RawRange], field: &str) -> Result<RangeSet, Error> {
    if raw.is_empty() {
        return Err(Error::new(field, "empty range set"));
    }
    let mut ranges: Vec<Range> = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let f = format!("{field}[{j}]");
        let range = build_range(r, &f)?;
        if let Some(first) = ranges.first() {
            if first.subnet.is_ipv4() != range.subnet.is_ipv4() {
                return Err(Error::new(
                    format!("{f}.subnet"),
                    format!(
                        "{} mixes address families with {} in one range set",
                        range.subnet, first.subnet
                    ),
                ));
            }
        }
        if let Some((k, other)) = ranges.iter().enumerate().find(|(_, o)| o.overlaps(&range)) {
            return Err(Error::new(
                &f,
                format!("range {range} overlaps {field}[{k}] ({other})"),
            ));
        }
        ranges.push(range);
    }
    Ok(RangeSet(ranges))
}

fn build(raw: RawNet, version: Version, cni_args: &CniArgs) -> Result<IpamConfig, Error> {
    let Some(ipam) = raw.ipam else {
        return Err(Error::new("ipam", "missing"));
    };

    // (field prefix, set) in the reference's order.
    let mut sets: Vec<(String, RangeSet)> = Vec::new();
    if let Some(rt) = raw
        .runtime_config
        .as_ref()
        .and_then(|r| r.ip_ranges.as_ref())
    {
        for (i, s) in rt.iter().enumerate() {
            let f = format!("runtimeConfig.ipRanges[{i}]");
            sets.push((f.clone(), build_set(s, &f)?));
        }
    }
    if non_empty(&ipam.subnet).is_some() {
        let legacy = RawRange {
            subnet: ipam.subnet.clone(),
            range_start: ipam.range_start.clone(),
            range_end: ipam.range_end.clone(),
            gateway: ipam.gateway.clone(),
        };
        let r = build_range(&legacy, "ipam")?;
        sets.push(("ipam".to_string(), RangeSet(vec![r])));
    }
    for (i, s) in ipam.ranges.iter().flatten().enumerate() {
        let f = format!("ipam.ranges[{i}]");
        sets.push((f.clone(), build_set(s, &f)?));
    }
    if sets.is_empty() {
        return Err(Error::new(
            "ipam.ranges",
            "no IP ranges specified (set ipam.ranges or ipam.subnet)",
        ));
    }
    for (i, (fi, si)) in sets.iter().enumerate() {
        for (fj, sj) in &sets[..i] {
            for ri in &si.0 {
                if let Some(rj) = sj.0.iter().find(|rj| rj.overlaps(ri)) {
                    return Err(Error::new(fi, format!("range {ri} overlaps {rj} of {fj}")));
                }
            }
        }
    }
    if version < Version::V0_3_0 {
        let v4 = sets.iter().filter(|(_, s)| s.is_ipv4()).count();
        if v4 > 1 || sets.len() - v4 > 1 {
            return Err(Error::new(
                "ipam.ranges",
                format!("cniVersion {version} allows at most one address per family"),
            ));
        }
    }

    let mut routes = Vec::new();
    for (i, r) in ipam.routes.iter().flatten().enumerate() {
        let f = format!("ipam.routes[{i}]");
        let Some(dst) = non_empty(&r.dst) else {
            return Err(Error::new(format!("{f}.dst"), "missing"));
        };
        let dst = parse_cidr(dst, &format!("{f}.dst"))?;
        let gw = non_empty(&r.gw)
            .map(|g| parse_ip(g, &format!("{f}.gw")))
            .transpose()?;
        routes.push(Route::new(dst, gw));
    }

    let mut requested: Vec<Requested> = Vec::new();
    let mut push = |ip: IpAddr, field: String| {
        if !requested.iter().any(|r| r.ip == ip) {
            requested.push(Requested { ip, field });
        }
    };
    if let Some(list) = cni_args.get("IP").filter(|s| !s.is_empty()) {
        for s in list.split(',').filter(|s| !s.trim().is_empty()) {
            push(parse_ip(s, "CNI_ARGS IP")?, "CNI_ARGS IP".to_string());
        }
    }
    if let Some(ips) = raw
        .args
        .as_ref()
        .and_then(|a| a.cni.as_ref())
        .and_then(|c| c.ips.as_ref())
    {
        for (i, s) in ips.iter().enumerate() {
            let f = format!("args.cni.ips[{i}]");
            push(parse_ip(s, &f)?, f);
        }
    }
    if let Some(ips) = raw.runtime_config.as_ref().and_then(|r| r.ips.as_ref()) {
        for (i, s) in ips.iter().enumerate() {
            let f = format!("runtimeConfig.ips[{i}]");
            // The capability allows `10.0.0.5/24` as well as a bare address.
            let ip = match s.split_once('/') {
                Some((a, _)) => {
                    parse_cidr(s, &f)?;
                    parse_ip(a, &f)?
                }
                None => parse_ip(s, &f)?,
            };
            push(ip, f);
        }
    }

    let data_dir = non_empty(&ipam.data_dir)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let resolv_conf = non_empty(&ipam.resolv_conf).map(PathBuf::from);
    Ok(IpamConfig {
        range_sets: sets.into_iter().map(|(_, s)| s).collect(),
        routes,
        data_dir,
        resolv_conf,
        requested,
    })
}

impl IpamConfig {
    /// Pair each range set with the requested address that falls in it; an address that fits
    /// no set is refused (code 7 naming where it came from).
    pub fn requested_per_set(&self) -> Result<Vec<Option<&Requested>>, Error> {
        let mut per_set: Vec<Option<&Requested>> = vec![None; self.range_sets.len()];
        for req in &self.requested {
            let slot = self
                .range_sets
                .iter()
                .position(|s| s.contains(req.ip))
                .filter(|&i| per_set[i].is_none());
            match slot {
                Some(i) => per_set[i] = Some(req),
                None => {
                    let sets: Vec<String> =
                        self.range_sets.iter().map(RangeSet::to_string).collect();
                    return Err(Error::new(
                        &req.field,
                        format!(
                            "{} does not fit any range set [{}] (or another requested address already took its set)",
                            req.ip,
                            sets.join("; ")
                        ),
                    ));
                }
            }
        }
        Ok(per_set)
    }
}

/// `resolv.conf` into DNS, as the reference's `parseResolvConf`: `nameserver`, `domain`,
/// `search`, `options`; comments (`#`, `;`) and other lines skipped.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = fields[1].to_string(),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

/// Read and parse the `resolvConf` file.
pub fn read_resolv_conf(path: &Path) -> Result<Dns, Error> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .map_err(|e| {
            Error::new(
                "ipam.resolvConf",
                format!("reading {}: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests;
