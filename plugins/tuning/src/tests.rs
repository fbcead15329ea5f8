use cni_core::Command;

use super::*;

fn req(extra: &str) -> Request {
    let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"tuning"{extra}}}"#);
    Request::build(
        Command::Add,
        "c1",
        Some("/run/netns/p"),
        "eth0",
        conf.as_bytes(),
    )
    .unwrap()
}

#[test]
fn sysctl_keys_are_confined_to_the_pod() {
    for ok in [
        "net.core.somaxconn",
        "net.ipv4.conf.eth0.arp_filter",
        "net/ipv4/conf/eth0/rp_filter",
        "net.ipv4.conf.IFNAME.rp_filter",
        "net.ipv6.conf.all.accept_ra",
        "net.ipv4.ip_unprivileged_port_start",
    ] {
        assert!(validate_sysctl(ok, "1", "eth0").is_ok(), "{ok}");
    }
    for bad in [
        "kernel.panic",
        "net.ipv4.conf.eth1.arp_filter",
        "net.ipv4.conf...eth0.x",
        "net/../kernel/panic",
        "net.ipv4.neigh.lo.gc_stale_time",
        "",
    ] {
        let e = validate_sysctl(bad, "1", "eth0").unwrap_err();
        assert_eq!(e.code(), 7, "{bad}");
    }
    assert_eq!(
        validate_sysctl("net.core.somaxconn", "1\n2", "eth0")
            .unwrap_err()
            .code(),
        7
    );
}

#[test]
fn config_values() {
    let s = parse(&req(
        r#","mac":"0a:58:00:00:00:09","mtu":1400,"txQLen":500,"promisc":true"#,
    ))
    .unwrap();
    assert_eq!(s.mac.unwrap().to_string(), "0a:58:00:00:00:09");
    assert_eq!(
        (s.mtu, s.txqlen, s.promisc),
        (Some(1400), Some(500), Some(true))
    );
    for (extra, field) in [
        (r#","mtu":20"#, "mtu"),
        (r#","mac":"01:00:5e:00:00:01""#, "mac"),
        (r#","mac":"nope""#, "mac"),
        (r#","dataDir":"rel""#, "dataDir"),
        (r#","sysctl":{"kernel.x":"1"}"#, "sysctl.kernel.x"),
        (r#","runtimeConfig":{"mac":"zz"}"#, "runtimeConfig.mac"),
    ] {
        let e = parse(&req(extra)).unwrap_err();
        assert_eq!(e.code(), 7, "{extra}");
        assert!(e.msg.contains(field), "{} should name {field}", e.msg);
    }
}

#[test]
fn backup_format_matches_the_reference() {
    let b = Backup {
        mac: Some("0a:00:00:00:00:01".into()),
        mtu: Some(1500),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&b).unwrap(),
        r#"{"Mac":"0a:00:00:00:00:01","Mtu":1500}"#
    );
}

#[test]
fn keys_match_case_insensitively_as_go_does() {
    let s = parse(&req(
            r#","Sysctl":{"net.core.somaxconn":"500"},"MTU":1400,"Promisc":true,"TxQLen":100,"AllMulti":true,"DataDir":"/tmp/t""#,
        ))
        .unwrap();
    assert_eq!(s.sysctls.len(), 1);
    assert_eq!(
        (s.mtu, s.promisc, s.txqlen, s.allmulti),
        (Some(1400), Some(true), Some(100), Some(true))
    );
    assert_eq!(s.data_dir, PathBuf::from("/tmp/t"));
    let s = parse(&req(r#","Args":{"CNI":{"MAC":"0a:58:0a:00:00:07"}}"#)).unwrap();
    assert_eq!(s.mac, Some("0a:58:0a:00:00:07".parse().unwrap()));
    let s = parse(&req(r#","RuntimeConfig":{"Mac":"0a:58:0a:00:00:08"}"#)).unwrap();
    assert_eq!(s.mac, Some("0a:58:0a:00:00:08".parse().unwrap()));
    assert_eq!(
        lenient_data_dir(&req(r#","DataDir":"/tmp/u""#)),
        PathBuf::from("/tmp/u")
    );
    let e = parse(&req(r#","MTU":"big""#)).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("mtu"), "{}", e.msg);
}

#[test]
fn cri_capability_args_are_accepted() {
    let rc = r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#;
    let s = parse(&req(&format!(r#","runtimeConfig":{rc}"#))).unwrap();
    assert_eq!(s.mac, None);
}
