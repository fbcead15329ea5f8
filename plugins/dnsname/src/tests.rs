use cni_core::{CniArgs, Command};
use serde_json::json;

use super::*;

fn conf(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "net1", "type": "dnsname",
        "domainName": "dns.podman", "capabilities": {"aliases": true},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni-podman1"}, {"name": "veth1"},
                           {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.89.0.5/24", "gateway": "10.89.0.1", "interface": 2},
                    {"address": "fd00:89::5/64", "gateway": "fd00:89::1", "interface": 2}],
            "dns": {"nameservers": ["192.0.2.53"]}}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn req(conf: &serde_json::Value, args: &str) -> Request {
    let mut r = Request::build(
        Command::Add,
        "ctr1",
        Some("/run/netns/p"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap();
    r.args = CniArgs::parse(args).unwrap();
    r
}

#[test]
fn spec_takes_name_aliases_gateways_and_bridge() {
    let c = conf(json!({"runtimeConfig": {"aliases": {
        "net1": ["DB", "api", "db", "cache.internal"], "other": ["nope"]}}}));
    let s = Spec::from_request(&req(&c, "IgnoreUnknown=1;K8S_POD_NAME=Api")).unwrap();
    assert_eq!(s.entry.name, "api");
    assert_eq!(s.entry.aliases, ["db", "cache.internal"]);
    assert_eq!(s.bridge, "cni-podman1");
    assert_eq!(
        s.gateways,
        [
            "10.89.0.1".parse::<IpAddr>().unwrap(),
            "fd00:89::1".parse().unwrap()
        ]
    );
    assert_eq!(s.entry.ips.len(), 2);
    assert_eq!(s.domain, "dns.podman");
    let cfg = s.daemon_config();
    assert!(cfg.forward, "forwarding is the default");
    assert_eq!(cfg.device.as_deref(), Some("cni-podman1"));
    assert_eq!(cfg.port, 53);
}

#[test]
fn result_puts_the_gateway_and_domain_first() {
    let c = conf(json!({}));
    let r = req(&c, "K8S_POD_NAME=web");
    let s = Spec::from_request(&r).unwrap();
    let out = s.result(r.require_prev_result().unwrap());
    assert_eq!(
        out.dns.nameservers,
        ["10.89.0.1", "fd00:89::1", "192.0.2.53"]
    );
    assert_eq!(out.dns.search, ["dns.podman"]);
    assert_eq!(out.ips.len(), 2, "prevResult passed on");
}

#[test]
fn bad_names_are_code_7_and_a_missing_name_is_no_name() {
    let c = conf(json!({}));
    for bad in ["a.b", "-x", "has space", "ünï"] {
        let e = Spec::from_request(&req(&c, &format!("K8S_POD_NAME={bad}"))).unwrap_err();
        assert_eq!(e.code(), 7, "{bad}: {e}");
        assert!(e.msg.contains("K8S_POD_NAME"), "{e}");
    }
    let c = conf(json!({"runtimeConfig": {"aliases": {"net1": ["ok", "bad alias"]}}}));
    let e = Spec::from_request(&req(&c, "K8S_POD_NAME=a")).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("runtimeConfig.aliases.net1[1]"), "{e}");
    let c = conf(json!({"domainName": "bad..domain"}));
    let e = Spec::from_request(&req(&c, "K8S_POD_NAME=a")).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("domainName"), "{e}");
    let s = Spec::from_request(&req(&conf(json!({})), "IgnoreUnknown=1")).unwrap();
    assert_eq!(s.entry.name, "");
}

#[test]
fn needs_a_bridge_and_a_gateway_in_prev_result() {
    let mut c = conf(json!({}));
    c["prevResult"]["ips"][0]
        .as_object_mut()
        .unwrap()
        .remove("gateway");
    c["prevResult"]["ips"][1]
        .as_object_mut()
        .unwrap()
        .remove("gateway");
    let e = Spec::from_request(&req(&c, "K8S_POD_NAME=a")).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("gateway"), "{e}");
    let mut c = conf(json!({}));
    c.as_object_mut().unwrap().remove("prevResult");
    assert_eq!(
        Spec::from_request(&req(&c, "K8S_POD_NAME=a"))
            .unwrap_err()
            .code(),
        7
    );
}

#[test]
fn forward_false_reaches_the_resolver_config() {
    let c = conf(json!({"forward": false}));
    let s = Spec::from_request(&req(&c, "K8S_POD_NAME=a")).unwrap();
    assert!(!s.daemon_config().forward);
}
