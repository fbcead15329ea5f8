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
