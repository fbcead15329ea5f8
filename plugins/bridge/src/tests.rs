//! Plan tests: config + IPAM result in, plan out, no kernel.

use cni_core::{args::Command, CniResult, Request};

use crate::{
    config::{self, Mode},
    plan,
};

fn req(conf: &str) -> Request {
    Request::build(
        Command::Add,
        "ctr1",
        Some("/run/netns/p"),
        "eth0",
        conf.as_bytes(),
    )
    .unwrap()
}

fn ipam(json: serde_json::Value) -> CniResult {
    CniResult::from_json(&json, "ipam").unwrap()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","bridge":"br-t",
    "isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"host-local"}}"#;

fn dual() -> CniResult {
    ipam(serde_json::json!({"cniVersion":"1.0.0",
        "ips":[{"address":"10.5.0.3/24","gateway":"10.5.0.1"},{"address":"fd00:5::3/64"}],
        "routes":[{"dst":"192.168.77.0/24"}]}))
}

#[test]
fn default_gateway_plan_is_complete() {
    let r = req(CONF);
    let spec = config::parse(&r, Mode::External).unwrap();
    assert!(spec.is_gateway, "isDefaultGateway implies isGateway");
    let p = plan::build(&spec, &r, &dual()).unwrap();
    assert_eq!(
        p.bridge_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["10.5.0.1/24", "fd00:5::1/64"]
    );
    let routes: Vec<String> = p
        .pod_routes
        .iter()
        .map(|r| format!("{}via{}", r.dst, r.gw.unwrap()))
        .collect();
    assert_eq!(
        routes,
        [
            "192.168.77.0/24via10.5.0.1",
            "0.0.0.0/0via10.5.0.1",
            "::/0viafd00:5::1"
        ]
    );
    assert_eq!(
        p.firewall
            .masq
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["10.5.0.0/24", "fd00:5::/64"]
    );
    assert!(!p.firewall.internal);
    assert!(p.forward_v4 && p.forward_v6);
    assert!(p.nodad);
    assert!(p.ips.iter().all(|i| i.interface == Some(2)));
}

#[test]
fn internal_mode_drops_default_routes_and_masquerade() {
    let conf = CONF.replace(r#""type":"bridge""#, r#""type":"internal-bridge""#);
    let r = req(&conf);
    let spec = config::parse(&r, Mode::Internal).unwrap();
    let with_default = ipam(serde_json::json!({"cniVersion":"1.0.0",
        "ips":[{"address":"10.6.0.3/24","gateway":"10.6.0.1"}],
        "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.99.0.0/16"}]}));
    let p = plan::build(&spec, &r, &with_default).unwrap();
    assert!(
        p.pod_routes.iter().all(|r| r.dst.prefix() != 0),
        "{:?}",
        p.pod_routes
    );
    assert_eq!(p.pod_routes.len(), 1);
    assert!(p.firewall.masq.is_empty());
    assert!(p.firewall.internal);
    assert!(
        p.bridge_addrs.is_empty(),
        "no gateway address unless isGateway"
    );
}

#[test]
fn bad_values_name_their_field() {
    for (patch, field) in [
        (r#""mtu":10"#, "mtu"),
        (r#""bridge":"a-very-long-bridge-name""#, "bridge"),
        (r#""bridge":"a/b""#, "bridge"),
        (r#""vlan":5000"#, "vlan"),
        (r#""macspoofchk":"yes""#, "macspoofchk"),
        (r#""promiscMode":true"#, "hairpinMode"),
        (
            r#""runtimeConfig":{"mac":"01:00:00:00:00:01"}"#,
            "runtimeConfig.mac",
        ),
        (r#""isGateway":"yes""#, "isGateway"),
    ] {
        // After CONF's own keys: a repeated key's last value counts, as in Go.
        let conf = format!("{},{patch}}}", &CONF[..CONF.len() - 1]);
        let e = config::parse(&req(&conf), Mode::External).unwrap_err();
        assert_eq!(e.code(), 7, "{patch}: {}", e.msg);
        assert!(
            e.msg.contains(field),
            "{patch}: {} should name {field}",
            e.msg
        );
    }
}

#[test]
fn pod_address_equal_to_gateway_is_refused() {
    let r = req(CONF);
    let spec = config::parse(&r, Mode::External).unwrap();
    let bad = ipam(
        serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.5.0.1/24","gateway":"10.5.0.1"}]}),
    );
    assert_eq!(plan::build(&spec, &r, &bad).unwrap_err().code(), 7);
}

/// Go's encoding/json matches keys case-insensitively; hand-written conflists and runtimes
/// rely on it (`IsGateway`, `IPMasq`, `args.CNI.MAC`).
#[test]
fn keys_match_case_insensitively_as_go_does() {
    let conf = r#"{"cniVersion":"1.0.0","name":"n1","Type":"bridge","Bridge":"br-go",
        "IsGateway":true,"IPMasq":true,"HairpinMode":true,"MTU":1400,"PortIsolation":true,
        "MacSpoofChk":true,"EnableDAD":true,"IPAM":{"type":"host-local"},
        "Args":{"CNI":{"MAC":"0a:58:0a:00:00:09"}}}"#;
    let spec = config::parse(&req(conf), Mode::External).unwrap();
    assert_eq!(spec.bridge, "br-go");
    assert!(spec.is_gateway && spec.ip_masq && spec.hairpin && spec.port_isolation);
    assert!(spec.macspoofchk && spec.enable_dad && spec.has_ipam);
    assert_eq!(spec.mtu, Some(1400));
    assert_eq!(spec.mac, Some([0x0a, 0x58, 0x0a, 0, 0, 9]));
    let conf = r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge",
        "RuntimeConfig":{"MAC":"0a:58:0a:00:00:0a"}}"#;
    let spec = config::parse(&req(conf), Mode::External).unwrap();
    assert_eq!(spec.mac, Some([0x0a, 0x58, 0x0a, 0, 0, 0x0a]));
    // A bad value under a Go spelling is still code 7 naming the field.
    let e = config::parse(
        &req(r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","IsGateway":"yes"}"#),
        Mode::External,
    )
    .unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("isGateway"), "{}", e.msg);
}

/// containerd's CRI hands every capability a conflist declares to the plugin; the ones that
/// are not bridge's (bandwidth, dns, pod annotations, portMappings, ipRanges) are ignored.
#[test]
fn cri_capability_args_are_accepted() {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"n1","type":"bridge","bridge":"br-t","runtimeConfig":{}}}"#,
        r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#
    );
    let spec = config::parse(&req(&conf), Mode::External).unwrap();
    assert_eq!(spec.mac, None);
}
