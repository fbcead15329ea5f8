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
