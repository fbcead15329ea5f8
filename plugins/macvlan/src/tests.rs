use cni_core::{Command, IpConfig};

use super::*;

/// The whole plan (both halves), as it runs.
fn plan(
    spec: &Spec,
    master: &IfName,
    ifname: &IfName,
    ipam: &CniResult,
) -> Result<Vec<Step>, LinkError> {
    let mut steps = plan_link(spec, master, ifname)?;
    steps.extend(spec.plan_config(spec.l3, ifname, ipam)?);
    Ok(steps)
}

fn req(conf: &str, args: &str) -> Request {
    let mut r = Request::build(
        Command::Add,
        "c1",
        Some("/run/netns/p"),
        "eth0",
        conf.as_bytes(),
    )
    .unwrap();
    r.args = cni_core::CniArgs::parse(args).unwrap();
    r
}

const HEAD: &str = r#""cniVersion":"1.0.0","name":"n","type":"macvlan""#;

#[test]
fn modes_and_defaults() {
    let s = parse(&req(&format!("{{{HEAD}}}"), "")).unwrap();
    assert_eq!(s.mode, MacvlanMode::Bridge);
    assert_eq!(s.master, None);
    assert!(!s.l3);
    for (m, want) in [
        ("private", MacvlanMode::Private),
        ("vepa", MacvlanMode::Vepa),
        ("passthru", MacvlanMode::Passthru),
    ] {
        let s = parse(&req(
            &format!(r#"{{{HEAD},"mode":"{m}","master":"eth1"}}"#),
            "",
        ))
        .unwrap();
        assert_eq!(s.mode, want);
    }
    let e = parse(&req(&format!(r#"{{{HEAD},"mode":"source"}}"#), "")).unwrap_err();
    assert!(e.msg.contains("mode"), "{}", e.msg);
    let e = parse(&req(&format!(r#"{{{HEAD},"mtu":-1}}"#), "")).unwrap_err();
    assert!(e.msg.contains("mtu"), "{}", e.msg);
}

#[test]
fn mac_precedence_is_the_references() {
    let conf = format!(
        r#"{{{HEAD},"mac":"02:00:00:00:00:01","runtimeConfig":{{"mac":"02:00:00:00:00:03"}}}}"#
    );
    let s = parse(&req(&conf, "MAC=02:00:00:00:00:02")).unwrap();
    assert_eq!(s.mac.unwrap().to_string(), "02:00:00:00:00:03");
    let s = parse(&req(
        &format!(r#"{{{HEAD},"mac":"02:00:00:00:00:01"}}"#),
        "MAC=02:00:00:00:00:02",
    ))
    .unwrap();
    assert_eq!(s.mac.unwrap().to_string(), "02:00:00:00:00:02");
    let e = parse(&req(
        &format!(r#"{{{HEAD},"mac":"01:00:5e:00:00:01"}}"#),
        "",
    ))
    .unwrap_err();
    assert!(e.msg.contains("multicast"), "{}", e.msg);
}

#[test]
fn l3_plan_notifies_then_configures() {
    let spec = parse(&req(
        &format!(
            r#"{{{HEAD},"master":"ens3","mode":"vepa","mtu":1400,"ipam":{{"type":"static"}}}}"#
        ),
        "",
    ))
    .unwrap();
    let ipam = CniResult {
        ips: vec![IpConfig {
            address: "192.168.1.5/24".parse().unwrap(),
            gateway: None,
            interface: None,
        }],
        ..Default::default()
    };
    let steps = plan(
        &spec,
        &IfName::new("ens3").unwrap(),
        &IfName::new("eth0").unwrap(),
        &ipam,
    )
    .unwrap();
    let text: Vec<String> = steps.iter().map(|s| s.command("P")).collect();
    assert_eq!(
        text,
        [
            "ip link add link ens3 name eth0 netns P mtu 1400 type macvlan mode vepa",
            "nsenter --net=P sysctl -w net.ipv4.conf.eth0.arp_notify=1  # best effort",
            "nsenter --net=P sysctl -w net.ipv6.conf.eth0.ndisc_notify=1  # best effort",
            "ip -n P addr add 192.168.1.5/24 dev eth0",
            "ip -n P link set eth0 up",
        ]
    );
}
