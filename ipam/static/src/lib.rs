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
    args::CniArgs, conf::parse_value, result::parse_cidr, CniError, CniResult, Dns, ErrorCode,
    IpConfig, Plugin, Request, Route, Version,
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
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(ErrorCode::Decode, format!("decoding network config: {e}")))?;
    let net: RawNet = parse_value(&value, "")?;
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn args(s: &str) -> CniArgs {
        CniArgs::parse(s).unwrap()
    }

    fn load_v(v: Value, cni_args: &str) -> Result<StaticConfig, CniError> {
        let version = v["cniVersion"]
            .as_str()
            .and_then(Version::parse)
            .unwrap_or(Version::V1_0_0);
        load(v.to_string().as_bytes(), version, &args(cni_args))
    }

    fn addrs(c: &StaticConfig) -> Vec<(String, Option<String>)> {
        c.addresses
            .iter()
            .map(|a| (a.address.to_string(), a.gateway.map(|g| g.to_string())))
            .collect()
    }

    fn pair(a: &str, g: Option<&str>) -> (String, Option<String>) {
        (a.to_string(), g.map(str::to_string))
    }

    /// The reference README's example, answered as the reference answers it (1.0.0).
    #[test]
    fn the_readme_example_answers_addresses_routes_and_dns() {
        let conf = json!({"cniVersion": "1.0.0", "name": "mynet", "type": "ipvlan",
            "ipam": {"type": "static",
                "addresses": [
                    {"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                    {"address": "3ffe:ffff:0:01ff::1/64", "gateway": "3ffe:ffff:0::1"}],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"},
                           {"dst": "3ffe:ffff:0:01ff::1/64"}],
                "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com",
                        "search": ["example.com"]}}});
        let r = load_v(conf, "").unwrap().result().to_json(Version::V1_0_0);
        assert_eq!(
            r,
            json!({"cniVersion": "1.0.0",
                "ips": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                        {"address": "3ffe:ffff:0:1ff::1/64", "gateway": "3ffe:ffff::1"}],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"},
                           {"dst": "3ffe:ffff:0:1ff::1/64"}],
                "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com",
                        "search": ["example.com"]}})
        );
    }

    #[test]
    fn keys_match_as_go_matches_them() {
        let conf = json!({"cniVersion": "1.0.0", "name": "n",
            "IPAM": {"Addresses": [{"ADDRESS": "10.1.0.2/24", "Gateway": "10.1.0.1"}],
                     "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.1.0.1", "Priority": 5}],
                     "DNS": {"Nameservers": ["10.1.0.53"]}}});
        let c = load_v(conf, "").unwrap();
        assert_eq!(addrs(&c), vec![pair("10.1.0.2/24", Some("10.1.0.1"))]);
        assert_eq!(c.routes[0].priority, Some(5));
        assert_eq!(c.routes[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(c.dns.nameservers, vec!["10.1.0.53"]);
        let c = load_v(
            json!({"ipam": {}, "RuntimeConfig": {"IPs": ["10.2.0.2/24"]}}),
            "",
        )
        .unwrap();
        assert_eq!(addrs(&c), vec![pair("10.2.0.2/24", None)]);
        let c = load_v(
            json!({"ipam": {}, "Args": {"CNI": {"IPS": ["10.3.0.2/24"]}}}),
            "",
        )
        .unwrap();
        assert_eq!(addrs(&c), vec![pair("10.3.0.2/24", None)]);
    }

    #[test]
    fn the_go_structs_internal_address_field_is_refused_by_its_exact_key() {
        let e = load_v(
            json!({"ipam": {"addresses": [{"Address": {"IP": "10.0.0.1", "Mask": "////AA=="}}]}}),
            "",
        )
        .unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.msg.contains("addresses[0].Address"), "{}", e.msg);
    }

    #[test]
    fn cni_args_ip_is_appended_and_gateway_goes_to_the_ip_addresses_containing_it() {
        let conf = json!({"ipam": {"addresses": [{"address": "10.9.0.2/24"}]}});
        let c = load_v(
            conf,
            "IgnoreUnknown=1;IP=10.9.0.3/24, fd00:9::3/64 ;GATEWAY=10.9.0.1,fd00:9::1",
        )
        .unwrap();
        assert_eq!(
            addrs(&c),
            vec![
                // The config's own address is not given the CNI_ARGS gateway (as the reference).
                pair("10.9.0.2/24", None),
                pair("10.9.0.3/24", Some("10.9.0.1")),
                pair("fd00:9::3/64", Some("fd00:9::1")),
            ]
        );
        // A gateway outside every IP= subnet is parsed and given to none.
        let c = load_v(json!({"ipam": {}}), "IP=10.9.0.3/24;GATEWAY=10.8.0.1").unwrap();
        assert_eq!(addrs(&c), vec![pair("10.9.0.3/24", None)]);
    }

    #[test]
    fn args_ips_replace_the_config_and_runtime_config_ips_replace_both() {
        let base = json!({"ipam": {"addresses": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1"}]},
            "args": {"cni": {"ips": ["10.7.0.2/24"]}}});
        let c = load_v(base.clone(), "IP=10.9.0.3/24").unwrap();
        assert_eq!(addrs(&c), vec![pair("10.7.0.2/24", None)]);
        let mut both = base;
        both["runtimeConfig"] = json!({"ips": ["10.6.0.2/24", "fd00:6::2/64"]});
        let c = load_v(both.clone(), "").unwrap();
        assert_eq!(
            addrs(&c),
            vec![pair("10.6.0.2/24", None), pair("fd00:6::2/64", None)]
        );
        // Empty lists replace nothing.
        both["runtimeConfig"] = json!({"ips": []});
        both["args"] = json!({"cni": {"ips": []}});
        let c = load_v(both, "").unwrap();
        assert_eq!(addrs(&c), vec![pair("10.9.0.2/24", Some("10.9.0.1"))]);
    }

    #[test]
    fn bad_values_are_code_7_naming_the_field() {
        for (conf, cni_args, field) in [
            (json!({"name": "n"}), "", "ipam"),
            (
                json!({"ipam": {"addresses": [{"address": "10.0.0.1"}]}}),
                "",
                "ipam.addresses[0].address",
            ),
            (
                json!({"ipam": {"addresses": [{"gateway": "10.0.0.1"}]}}),
                "",
                "ipam.addresses[0].address",
            ),
            (
                json!({"ipam": {"addresses": [{"address": "10.0.0.2/24", "gateway": "x"}]}}),
                "",
                "ipam.addresses[0].gateway",
            ),
            (
                json!({"ipam": {"addresses": [{"address": "10.0.0.2/24", "gateway": "fd00::1"}]}}),
                "",
                "addresses[0]",
            ),
            (
                json!({"ipam": {"routes": [{"gw": "10.0.0.1"}]}}),
                "",
                "ipam.routes[0]",
            ),
            (
                json!({"ipam": {"routes": [{"dst": "0.0.0.0/0", "mtu": -1}]}}),
                "",
                "ipam.routes[0].mtu",
            ),
            (json!({"ipam": {}}), "IP=10.0.0.5", "CNI_ARGS IP"),
            (
                json!({"ipam": {}}),
                "IP=10.0.0.5/24;GATEWAY=nope",
                "CNI_ARGS GATEWAY",
            ),
            (
                json!({"ipam": {}, "runtimeConfig": {"ips": ["10.0.0.5/24", "bad"]}}),
                "",
                "runtimeConfig.ips[1]",
            ),
            (
                json!({"ipam": {}, "args": {"cni": {"ips": ["bad"]}}}),
                "",
                "args.cni.ips[0]",
            ),
            (
                json!({"ipam": {"addresses": "10.0.0.2/24"}}),
                "",
                "ipam.addresses",
            ),
        ] {
            let e = load_v(conf.clone(), cni_args).unwrap_err();
            assert_eq!(e.code(), 7, "{conf} {cni_args}: {e}");
            assert!(e.msg.contains(field), "{field}: {}", e.msg);
        }
    }

    #[test]
    fn two_addresses_of_one_family_need_cni_0_3_0() {
        let conf = |v: &str| {
            json!({"cniVersion": v, "ipam": {"addresses": [
                {"address": "10.0.0.2/24"}, {"address": "10.0.1.2/24"}]}})
        };
        assert_eq!(load_v(conf("0.2.0"), "").unwrap_err().code(), 1);
        assert_eq!(load_v(conf("0.3.1"), "").unwrap().addresses.len(), 2);
        // One of each family is fine at 0.2.0, and prints as ip4/ip6.
        let c = load_v(
            json!({"cniVersion": "0.2.0", "ipam": {"addresses": [
                {"address": "10.0.0.2/24", "gateway": "10.0.0.1"}, {"address": "fd00::2/64"}],
                "routes": [{"dst": "0.0.0.0/0"}]}}),
            "",
        )
        .unwrap();
        let r = c.result().to_json(Version::parse("0.2.0").unwrap());
        assert_eq!(r["ip4"]["ip"], "10.0.0.2/24");
        assert_eq!(r["ip4"]["gateway"], "10.0.0.1");
        assert_eq!(r["ip6"]["ip"], "fd00::2/64");
    }

    fn prev(ips: &[(&str, Option<&str>)]) -> CniResult {
        CniResult {
            ips: ips
                .iter()
                .map(|(a, g)| IpConfig {
                    address: a.parse().unwrap(),
                    gateway: g.map(|g| g.parse().unwrap()),
                    interface: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn check_wants_every_configured_address_with_its_gateway() {
        let c = load_v(
            json!({"ipam": {"addresses": [
                {"address": "10.0.0.2/24", "gateway": "10.0.0.1"}, {"address": "fd00::2/64"}]}}),
            "",
        )
        .unwrap();
        assert!(c
            .check(
                &prev(&[("10.0.0.2/24", Some("10.0.0.1")), ("fd00::2/64", None)]),
                "eth0"
            )
            .is_ok());
        // The IPv6 address has no configured gateway: any answer's gateway is fine.
        assert!(c
            .check(
                &prev(&[
                    ("10.0.0.2/24", Some("10.0.0.1")),
                    ("fd00::2/64", Some("fd00::1"))
                ]),
                "eth0"
            )
            .is_ok());
        let e = c
            .check(
                &prev(&[("10.0.0.2/24", Some("10.0.0.9")), ("fd00::2/64", None)]),
                "eth0",
            )
            .unwrap_err();
        assert_eq!(e.code(), 105);
        let e = c
            .check(&prev(&[("10.0.0.2/24", Some("10.0.0.1"))]), "eth0")
            .unwrap_err();
        assert!(e.msg.contains("fd00::2/64"), "{}", e.msg);
    }

    fn dispatch(env: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
        let vars: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = move |k: &str| vars.get(k).cloned();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cni_core::skel::dispatch(
            &Static,
            &var,
            &mut stdin.to_string().as_bytes(),
            &mut out,
            &mut err,
        );
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).unwrap()
        };
        (code, v)
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn through_the_dispatcher_unknown_cni_args_need_ignore_unknown_and_del_is_a_no_op() {
        let conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge",
            "ipam": {"type": "static", "addresses": [{"address": "10.5.0.2/24"}]}});
        let (code, r) = dispatch(ADD, &conf);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["ips"][0]["address"], "10.5.0.2/24");

        let mut env = ADD.to_vec();
        env.push(("CNI_ARGS", "IP=10.5.0.3/24;GATEWAY=10.5.0.1;FOO=1"));
        let (code, r) = dispatch(&env, &conf);
        assert_eq!((code, r["code"].as_u64()), (1, Some(4)), "{r}");
        env.pop();
        env.push(("CNI_ARGS", "IP=10.5.0.3/24;GATEWAY=10.5.0.1"));
        let (code, r) = dispatch(&env, &conf);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["ips"][1]["gateway"], "10.5.0.1");

        let mut del = ADD.to_vec();
        del[0] = ("CNI_COMMAND", "DEL");
        del[2] = ("CNI_NETNS", "");
        assert_eq!(dispatch(&del, &conf).0, 0);
        let mut check = ADD.to_vec();
        check[0] = ("CNI_COMMAND", "CHECK");
        let (code, r) = dispatch(&check, &conf);
        assert_eq!(
            (code, r["code"].as_u64()),
            (1, Some(7)),
            "no prevResult: {r}"
        );
    }
}
