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
mod tests {
    use super::*;

    fn conf(ipam: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{ipam}}}"#)
    }

    fn ok(ipam: &str) -> IpamConfig {
        parse(conf(ipam).as_bytes(), Version::V1_0_0, &CniArgs::default()).unwrap()
    }

    fn bad(ipam: &str) -> String {
        let e = parse(conf(ipam).as_bytes(), Version::V1_0_0, &CniArgs::default()).unwrap_err();
        assert_eq!(e.code(), 7, "{ipam}: {}", e.msg);
        e.msg
    }

    #[test]
    fn defaults_like_the_reference() {
        let c = ok(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}"#,
        );
        let r = &c.range_sets[0].0[0];
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        let r6 = &c.range_sets[1].0[0];
        assert_eq!(r6.end.to_string(), "fd00::ffff:ffff:ffff:ffff");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
    }

    #[test]
    fn legacy_form_comes_before_ranges() {
        let c = ok(
            r#"{"subnet":"10.2.0.0/16","rangeStart":"10.2.1.0","rangeEnd":"10.2.1.9","gateway":"10.2.0.1",
            "ranges":[[{"subnet":"10.3.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.9.0.0/16","gw":"10.2.0.9"}],
            "dataDir":"/tmp/x"}"#,
        );
        assert_eq!(c.range_sets.len(), 2);
        assert_eq!(c.range_sets[0].to_string(), "10.2.1.0-10.2.1.9");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some("10.2.0.9".parse().unwrap()));
    }

    #[test]
    fn each_bad_input_class_names_its_field() {
        let cases = [
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0"}]]}"#,
                "ipam.ranges[0][0].subnet",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/33"}]]}"#,
                "ipam.ranges[0][0].subnet",
            ),
            (
                r#"{"ranges":[[{"subnet":"garbage/24"}]]}"#,
                "ipam.ranges[0][0].subnet",
            ),
            (r#"{"ranges":[[{"subnet":"10.0.0.5/24"}]]}"#, "host bits"),
            (r#"{"ranges":[[{"subnet":"10.0.0.0/31"}]]}"#, "too small"),
            (r#"{"ranges":[[{"subnet":"fd00::/127"}]]}"#, "too small"),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.1.0/24","rangeStart":"10.0.1.9","rangeEnd":"10.0.2.5"}]]}"#,
                "ipam.ranges[0][1].rangeEnd: 10.0.2.5 is outside subnet 10.0.1.0/24",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}]]}"#,
                "ipam.ranges[0][0].rangeStart: 10.0.1.5 is outside subnet 10.0.0.0/24",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.50","rangeEnd":"10.0.0.10"}]]}"#,
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.5.1"}]]}"#,
                "ipam.ranges[0][0].gateway: 10.0.5.1 is outside subnet",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]}"#,
                "ipam.ranges[0][1]: range 10.0.0.1-10.0.0.126 overlaps ipam.ranges[0][0]",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.128/25"}]]}"#,
                "ipam.ranges[1]: range 10.0.0.129-10.0.0.254 overlaps",
            ),
            (
                r#"{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.0.0/24"}]]}"#,
                "ipam.ranges[0]: range",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
                "ipam.ranges[0][1].subnet: fd00::/64 mixes address families",
            ),
            (
                r#"{"ranges":[[{"subnet":"fd00::/64","gateway":"10.0.0.1"}]]}"#,
                "ipam.ranges[0][0].gateway",
            ),
            (r#"{"ranges":[[]]}"#, "ipam.ranges[0]: empty range set"),
            (r#"{"ranges":[]}"#, "ipam.ranges: no IP ranges"),
            (
                r#"{"ranges":[[{"rangeStart":"10.0.0.1"}]]}"#,
                "ipam.ranges[0][0].subnet: missing",
            ),
            (
                r#"{"subnet":"10.0.0.0/24","rangeStart":"10.9.0.1"}"#,
                "ipam.rangeStart",
            ),
            (r#"{"ranges":[[{"subnet":5}]]}"#, "ipam.ranges[0][0].subnet"),
            (
                r#"{"subnet":"10.0.0.0/24","routes":[{"dst":"nope"}]}"#,
                "ipam.routes[0].dst",
            ),
            (
                r#"{"subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"x"}]}"#,
                "ipam.routes[0].gw",
            ),
        ];
        for (ipam, want) in cases {
            let msg = bad(ipam);
            assert!(msg.contains(want), "{ipam}: {msg:?} lacks {want:?}");
        }
        let e = parse(
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
            Version::V1_0_0,
            &CniArgs::default(),
        )
        .unwrap_err();
        assert!(e.msg.contains("ipam: missing"), "{}", e.msg);
    }

    #[test]
    fn old_versions_take_one_address_per_family() {
        let c = conf(r#"{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/24"}]]}"#);
        assert_eq!(
            parse(c.as_bytes(), Version::new(0, 2, 0), &CniArgs::default())
                .unwrap_err()
                .code(),
            7
        );
        assert!(parse(c.as_bytes(), Version::new(0, 3, 1), &CniArgs::default()).is_ok());
    }

    #[test]
    fn requested_ips_from_every_source() {
        let c = String::from(
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}],[{"subnet":"10.5.0.0/24"}]]},
            "args":{"cni":{"ips":["fd00::9"]}},"runtimeConfig":{"ips":["10.5.0.7/24"]}}"#,
        );
        let args = CniArgs::parse("IgnoreUnknown=1;IP=10.0.0.9").unwrap();
        let cfg = parse(c.as_bytes(), Version::V1_0_0, &args).unwrap();
        let per = cfg.requested_per_set().unwrap();
        let got: Vec<String> = per.iter().map(|r| r.unwrap().ip.to_string()).collect();
        assert_eq!(got, ["10.0.0.9", "fd00::9", "10.5.0.7"]);
        assert_eq!(per[1].unwrap().field, "args.cni.ips[0]");

        let args = CniArgs::parse("IP=10.0.0.9,10.0.0.10").unwrap();
        let cfg = parse(c.as_bytes(), Version::V1_0_0, &args).unwrap();
        let e: CniError = cfg.requested_per_set().unwrap_err().into();
        assert_eq!(e.code(), 7);
        assert!(
            e.msg.contains("CNI_ARGS IP") && e.msg.contains("10.0.0.10"),
            "{}",
            e.msg
        );
        let args = CniArgs::parse("IP=bogus").unwrap();
        let e = parse(c.as_bytes(), Version::V1_0_0, &args).unwrap_err();
        assert!(e.msg.contains("CNI_ARGS IP"), "{}", e.msg);
    }

    #[test]
    fn resolv_conf() {
        let d = parse_resolv_conf(
            "# c\n; c\nnameserver 1.1.1.1\nnameserver 8.8.8.8\ndomain ex.com\nsearch a.com b.com\noptions ndots:2 edns0\nbogus\n",
        );
        assert_eq!(d.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(d.domain, "ex.com");
        assert_eq!(d.search, ["a.com", "b.com"]);
        assert_eq!(d.options, ["ndots:2", "edns0"]);
    }

    /// Go's encoding/json matches keys case-insensitively: `IPRanges` (the capability as
    /// containerd's go-cni names the field), `RangeStart`, `DataDir`, `Routes`... all parse.
    #[test]
    fn keys_match_case_insensitively_as_go_does() {
        let c = String::from(
            r#"{"cniVersion":"1.0.0","name":"n","IPAM":{"Type":"host-local",
                "Ranges":[[{"Subnet":"10.7.0.0/24","RangeStart":"10.7.0.10","RangeEnd":"10.7.0.20","Gateway":"10.7.0.1"}]],
                "Routes":[{"Dst":"0.0.0.0/0","GW":"10.7.0.1"}],"DataDir":"/tmp/go"},
             "RuntimeConfig":{"IPRanges":[[{"Subnet":"10.8.0.0/24"}]],"IPs":["10.8.0.5"]},
             "Args":{"CNI":{"IPs":["10.7.0.12"]}}}"#,
        );
        let cfg = parse(c.as_bytes(), Version::V1_0_0, &CniArgs::default()).unwrap();
        assert_eq!(cfg.range_sets.len(), 2, "ipRanges first, then ranges");
        assert_eq!(cfg.range_sets[0].0[0].subnet.to_string(), "10.8.0.0/24");
        let r = &cfg.range_sets[1].0[0];
        assert_eq!(
            (r.start.to_string(), r.end.to_string()),
            ("10.7.0.10".into(), "10.7.0.20".into())
        );
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/go"));
        let got: Vec<String> = cfg
            .requested_per_set()
            .unwrap()
            .iter()
            .map(|r| r.map(|r| r.ip.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(got, ["10.8.0.5", "10.7.0.12"]);
        let e = bad(r#"{"Ranges":[[{"Subnet":"10.7.0.0/33"}]]}"#);
        assert!(e.contains("ipam.ranges[0][0].subnet"), "{e}");
    }

    /// The CRI's capability args as go-cni spells them: `ipRanges` entries with Go field
    /// names (empty strings for unset fields) become the first range set; the rest is ignored.
    #[test]
    fn cri_capability_args_are_accepted() {
        let c = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"type":"host-local"}},"runtimeConfig":{}}}"#,
            r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#
        );
        let cfg = parse(c.as_bytes(), Version::V1_0_0, &CniArgs::default()).unwrap();
        assert_eq!(cfg.range_sets.len(), 1);
        assert_eq!(cfg.range_sets[0].0[0].subnet.to_string(), "10.9.0.0/24");
        assert_eq!(cfg.range_sets[0].0[0].gateway.to_string(), "10.9.0.1");
    }
}
