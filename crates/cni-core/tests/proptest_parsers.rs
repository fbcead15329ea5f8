//! Property tests of the parsers that read untrusted input: the network config on stdin
//! (`conf::parse::<NetConf>`), results (`CniResult::from_json`, used on `prevResult`) and the
//! whole dispatch path (`skel::dispatch` with random env and stdin).
//!
//! Properties:
//! * no input makes them panic; every refusal is a CNI error with a spec code;
//! * `from_json(to_json(r, v))` gives back the addresses (and gateways, interfaces, routes) of
//!   `r` for every spec version, as far as the version can carry them (legacy 0.1/0.2 results
//!   carry one IPv4 and one IPv6 address).
//!
//! `PROPTEST_CASES` raises the number of cases (default 256 per property here).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_core::{
    conf,
    result::{CniResult, Dns, Interface, IpConfig, Route},
    skel, CniError, NetConf, Plugin, Request, Version,
};
use ipnetwork::IpNetwork;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// strategies

/// Keys the parsers look at, so random objects reach the interesting code paths.
const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "capabilities",
    "ipam",
    "dns",
    "args",
    "prevResult",
    "runtimeConfig",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "interfaces",
    "ips",
    "routes",
    "ip4",
    "ip6",
    "ip",
    "address",
    "gateway",
    "interface",
    "version",
    "mac",
    "mtu",
    "sandbox",
    "socketPath",
    "pciID",
    "dst",
    "gw",
    "advmss",
    "priority",
    "table",
    "scope",
    "nameservers",
    "domain",
    "search",
    "options",
    "portMappings",
];

/// Strings the parsers treat specially: versions, addresses, CIDRs, and junk.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.1.0".to_owned()),
        Just("1.0.0".to_owned()),
        Just("0.4.0".to_owned()),
        Just("0.3.1".to_owned()),
        Just("0.2.0".to_owned()),
        Just("0.1.0".to_owned()),
        Just("".to_owned()),
        Just("10.1.0.5/24".to_owned()),
        Just("10.1.0.1".to_owned()),
        Just("fd00::5/64".to_owned()),
        Just("::ffff:10.1.0.5/120".to_owned()),
        Just("0.0.0.0/0".to_owned()),
        Just("300.1.1.1/8".to_owned()),
        Just("10.1.0.5/33".to_owned()),
        Just("host-local".to_owned()),
        any::<String>(),
        "[0-9./:a-f]{0,24}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (0u64..8).prop_map(Value::from),
        interesting_string().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 96, 8, |inner| {
        let key = prop_oneof![
            4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
            1 => any::<String>(),
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A config-shaped object: the usual top-level keys with random values, so that the typed
/// fields (capabilities, ipam, dns, valid attachments) see wrong types and odd values.
fn config_like() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(interesting_string()),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
        proptest::option::of(result_like()),
    )
        .prop_map(|(ver, name, caps, ipam, dns, va, prev)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            };
            put("cniVersion", ver.map(Value::from));
            put("name", name);
            put("type", Some(json!("bridge")));
            put("capabilities", caps);
            put("ipam", ipam);
            put("dns", dns);
            put("cni.dev/valid-attachments", va);
            put("prevResult", prev);
            Value::Object(m)
        })
}

/// A result-shaped object (right keys, random values) in either layout.
fn result_like() -> impl Strategy<Value = Value> {
    let ip = (interesting_string(), proptest::option::of(json_value())).prop_map(|(a, i)| {
        let mut m = Map::new();
        m.insert("address".into(), Value::from(a));
        if let Some(i) = i {
            m.insert("interface".into(), i);
        }
        Value::Object(m)
    });
    let modern = (
        proptest::collection::vec(json_value(), 0..3),
        proptest::collection::vec(ip, 0..4),
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
    )
        .prop_map(|(ifs, ips, routes, dns)| {
            let mut m = Map::new();
            m.insert("interfaces".into(), Value::Array(ifs));
            m.insert("ips".into(), Value::Array(ips));
            if let Some(r) = routes {
                m.insert("routes".into(), r);
            }
            if let Some(d) = dns {
                m.insert("dns".into(), d);
            }
            Value::Object(m)
        });
    let legacy = (interesting_string(), json_value()).prop_map(
        |(ip, routes)| json!({"ip4": {"ip": ip, "routes": routes}, "ip6": {"ip": "fd00::1/64"}}),
    );
    prop_oneof![modern, legacy, json_value()]
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// IPv6 addresses, with the forms that print specially (IPv4-mapped, IPv4-compatible, ::,
/// ::1) over-represented.
fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        4 => any::<u128>().prop_map(Ipv6Addr::from),
        1 => ipv4().prop_map(|a| a.to_ipv6_mapped()),
        1 => any::<u32>().prop_map(|n| Ipv6Addr::from(u128::from(n))),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, a, b)),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}

fn net() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![
        (ipv4(), 0u8..=32).prop_map(|(a, p)| IpNetwork::new(IpAddr::V4(a), p).unwrap()),
        (ipv6(), 0u8..=128).prop_map(|(a, p)| IpNetwork::new(IpAddr::V6(a), p).unwrap()),
    ]
}

fn opt_u32() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(any::<u32>())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9:/._-]{1,16}", any::<String>()]
}

/// A well-formed result (interface indexes in range).
fn cni_result() -> impl Strategy<Value = CniResult> {
    let iface = (
        text(),
        text(),
        opt_u32(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
        });
    let route = (
        net(),
        proptest::option::of(ip()),
        opt_u32(),
        opt_u32(),
        opt_u32(),
        opt_u32(),
        opt_u32(),
    )
        .prop_map(|(dst, gw, mtu, advmss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        });
    let dns = (
        proptest::collection::vec(text(), 0..3),
        text(),
        proptest::collection::vec(text(), 0..3),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        });
    (
        proptest::collection::vec(iface, 0..4),
        proptest::collection::vec(
            (
                net(),
                proptest::option::of(ip()),
                any::<prop::sample::Index>(),
            ),
            0..5,
        ),
        proptest::collection::vec(route, 0..4),
        dns,
        any::<bool>(),
    )
        .prop_map(|(interfaces, ips, routes, dns, with_index)| {
            let n = interfaces.len();
            let ips = ips
                .into_iter()
                .map(|(address, gateway, idx)| IpConfig {
                    address,
                    gateway,
                    interface: (with_index && n > 0).then(|| idx.index(n)),
                })
                .collect();
            CniResult {
                interfaces,
                ips,
                routes,
                dns,
            }
        })
}

fn versions() -> Vec<Version> {
    cni_core::version::SUPPORTED
        .iter()
        .map(|s| Version::parse(s).unwrap())
        .collect()
}

fn is_spec_code(e: &CniError) -> bool {
    // Parsers refuse with "decode" (6) or "invalid config" (7), never anything else.
    matches!(e.code(), 6 | 7)
}

// ---------------------------------------------------------------------------------------------
// conf::parse

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Arbitrary bytes (not even UTF-8) on stdin.
    #[test]
    fn netconf_parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = conf::parse::<NetConf>(&bytes) {
            prop_assert!(is_spec_code(&e), "code {} for {bytes:?}: {e}", e.code());
        }
    }

    /// Arbitrary JSON documents.
    #[test]
    fn netconf_parse_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        match conf::parse::<NetConf>(&bytes) {
            Ok(c) => {
                // Accepted configs are objects; a name we were given is kept verbatim.
                prop_assert!(v.is_object(), "accepted a non-object: {v}");
                if let Some(Value::String(n)) = v.get("name") {
                    prop_assert_eq!(&c.name, n);
                }
            }
            Err(e) => prop_assert!(is_spec_code(&e), "code {} for {v}: {e}", e.code()),
        }
    }

    /// Config-shaped objects with random values in the typed fields.
    #[test]
    fn netconf_parse_never_panics_on_config_shapes(v in config_like()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = conf::parse::<NetConf>(&bytes) {
            prop_assert!(is_spec_code(&e), "code {} for {v}: {e}", e.code());
        }
    }

    /// A valid JSON document followed by random bytes (truncation and trailing garbage).
    #[test]
    fn netconf_parse_refuses_trailing_garbage(v in config_like(), tail in "[^ \t\r\n]{1,8}", cut in any::<prop::sample::Index>()) {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        bytes.extend_from_slice(tail.as_bytes());
        prop_assert!(conf::parse::<NetConf>(&bytes).is_err(), "accepted trailing {tail:?}");
        let doc = serde_json::to_vec(&v).unwrap();
        let truncated = &doc[..cut.index(doc.len())];
        if let Err(e) = conf::parse::<NetConf>(truncated) {
            prop_assert!(is_spec_code(&e));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CniResult::from_json

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn result_from_json_never_panics(v in json_value()) {
        if let Err(e) = CniResult::from_json(&v, "prevResult") {
            prop_assert!(is_spec_code(&e), "code {} for {v}: {e}", e.code());
        }
    }

    #[test]
    fn result_from_json_never_panics_on_result_shapes(v in result_like()) {
        match CniResult::from_json(&v, "prevResult") {
            Ok(r) => {
                // Every interface index that was accepted points at an interface.
                for ip in &r.ips {
                    if let Some(i) = ip.interface {
                        prop_assert!(i < r.interfaces.len(), "{v} -> {r:?}");
                    }
                }
            }
            Err(e) => prop_assert!(is_spec_code(&e), "code {} for {v}: {e}", e.code()),
        }
    }

    /// `from_json(to_json(r, v))` for every version.
    #[test]
    fn result_round_trips_in_every_version(r in cni_result()) {
        for v in versions() {
            let j = r.to_json(v);
            let vs = v.to_string();
            prop_assert_eq!(j["cniVersion"].as_str(), Some(vs.as_str()));
            // What goes on the wire must survive a text round trip too (stdout -> stdin).
            let j: Value = serde_json::from_str(&j.to_string()).unwrap();
            let back = CniResult::from_json(&j, "result")
                .map_err(|e| TestCaseError::fail(format!("{v}: {e}\n{j}")))?;
            if v.is_legacy_result() {
                // 0.1/0.2: the first address of each family, with its gateway; routes of each
                // carried family; no interfaces.
                let want: Vec<(IpNetwork, Option<IpAddr>)> = [true, false]
                    .iter()
                    .filter_map(|fam| r.ips.iter().find(|ip| ip.address.is_ipv4() == *fam))
                    .map(|ip| (ip.address, ip.gateway))
                    .collect();
                let got: Vec<(IpNetwork, Option<IpAddr>)> =
                    back.ips.iter().map(|ip| (ip.address, ip.gateway)).collect();
                prop_assert_eq!(got, want, "{} addresses: {}", v, j);
                prop_assert!(back.interfaces.is_empty());
            } else {
                let want: Vec<(IpNetwork, Option<IpAddr>, Option<usize>)> =
                    r.ips.iter().map(|ip| (ip.address, ip.gateway, ip.interface)).collect();
                let got: Vec<(IpNetwork, Option<IpAddr>, Option<usize>)> =
                    back.ips.iter().map(|ip| (ip.address, ip.gateway, ip.interface)).collect();
                prop_assert_eq!(got, want, "{} addresses: {}", v, j);
                let names: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
                let back_names: Vec<&str> = back.interfaces.iter().map(|i| i.name.as_str()).collect();
                prop_assert_eq!(back_names, names, "{} interfaces", v);
                let dsts: Vec<(IpNetwork, Option<IpAddr>)> = r.routes.iter().map(|x| (x.dst, x.gw)).collect();
                let back_dsts: Vec<(IpNetwork, Option<IpAddr>)> = back.routes.iter().map(|x| (x.dst, x.gw)).collect();
                prop_assert_eq!(back_dsts, dsts, "{} routes", v);
                if v >= Version::V1_1_0 {
                    prop_assert_eq!(&back, &r, "1.1.0 carries everything: {}", j);
                }
            }
            // Reading what we read gives the same again (a fixed point after one trip).
            let again = CniResult::from_json(&back.to_json(v), "result").unwrap();
            prop_assert_eq!(again, back, "{} second trip", v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the whole dispatch path

/// A plugin that reads everything a real one reads: prevResult, runtimeConfig, args.
struct Probe;

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let prev = req.prev_result()?;
        let _ = req.valid_attachments();
        let _ = req.tag();
        Ok(prev.unwrap_or_default())
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        req.prev_result().map(|_| ())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        req.require_prev_result().map(|_| ())
    }
}

fn env_value() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just("ADD".to_owned()),
        Just("DEL".to_owned()),
        Just("CHECK".to_owned()),
        Just("VERSION".to_owned()),
        Just("GC".to_owned()),
        Just("STATUS".to_owned()),
        Just("/run/netns/x".to_owned()),
        Just("eth0".to_owned()),
        Just("IgnoreUnknown=1;IP=10.1.0.9".to_owned()),
        "[A-Za-z0-9=;_./-]{0,20}",
        any::<String>(),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Random CNI_* variables and stdin through `skel::dispatch`: exit 0 or 1, and on 1 stdout
    /// is a CNI error object with a code.
    #[test]
    fn dispatch_never_panics(
        cmd in env_value(), cid in env_value(), netns in env_value(), ifname in env_value(),
        args in env_value(), path in env_value(), conf in config_like(), raw in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let vars = [
            ("CNI_COMMAND", cmd), ("CNI_CONTAINERID", cid), ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname), ("CNI_ARGS", args), ("CNI_PATH", path),
        ];
        let var = |k: &str| vars.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.clone());
        let stdin = if raw { bytes } else { serde_json::to_vec(&conf).unwrap() };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = skel::dispatch(&Probe, &var, &mut stdin.as_slice(), &mut out, &mut err);
        prop_assert!(code == 0 || code == 1, "exit {code}");
        if code == 1 {
            let v: Value = serde_json::from_slice(&out)
                .map_err(|e| TestCaseError::fail(format!("stdout not JSON ({e}): {out:?}")))?;
            prop_assert!(v["code"].as_u64().is_some_and(|c| c > 0), "{v}");
            prop_assert!(v["msg"].is_string(), "{v}");
        }
    }
}

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
