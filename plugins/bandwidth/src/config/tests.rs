use cni_core::Command;

use super::*;

fn req(conf: &str) -> Request {
    Request::build(
        Command::Add,
        "c1",
        Some("/run/netns/p"),
        "eth0",
        conf.as_bytes(),
    )
    .unwrap()
}

fn spec(conf: &str) -> Result<Option<Spec>, CniError> {
    parse(&req(conf))
}

const HEAD: &str = r#""cniVersion":"1.0.0","name":"n","type":"bandwidth""#;

#[test]
fn top_level_keys_win_over_runtime_config() {
    let s = spec(&format!(
        r#"{{{HEAD},"ingressRate":8000,"ingressBurst":16000,
                "runtimeConfig":{{"bandwidth":{{"egressRate":1000,"egressBurst":1000}}}}}}"#
    ))
    .unwrap()
    .unwrap();
    assert_eq!(
        s.ingress,
        Some(Limit {
            rate: 8000,
            burst: 16000
        })
    );
    assert_eq!(
        s.egress, None,
        "runtimeConfig ignored once a top-level key is there"
    );
}

#[test]
fn runtime_config_as_containerd_spells_it() {
    // go-cni marshals its BandWidth struct with Go field names and MaxUint32 bursts.
    let s = spec(&format!(
            r#"{{{HEAD},"runtimeConfig":{{"bandwidth":{{"IngressRate":10000000,"IngressBurst":4294967295,
                "EgressRate":10000000,"EgressBurst":4294967295}}}}}}"#
        ))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.ingress,
        Some(Limit {
            rate: 10_000_000,
            burst: 4_294_967_295
        })
    );
    assert_eq!(s.egress, s.ingress);
    assert_eq!(s.subnets, Subnets::All);
}

#[test]
fn cri_o_burst_just_under_4gb_is_accepted_and_4gb_is_refused() {
    let ok = (u64::from(u32::MAX)) * 8 - 1;
    let s = spec(&format!(
        r#"{{{HEAD},"egressRate":1000000,"egressBurst":{ok}}}"#
    ))
    .unwrap()
    .unwrap();
    assert_eq!(s.egress.unwrap().burst, ok);
    let e = spec(&format!(
        r#"{{{HEAD},"egressRate":1000000,"egressBurst":{}}}"#,
        ok + 1
    ))
    .unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(
        e.msg.contains("egressBurst") && e.msg.contains("4GB"),
        "{}",
        e.msg
    );
}

#[test]
fn nothing_asked_is_none() {
    assert_eq!(spec(&format!("{{{HEAD}}}")).unwrap(), None);
    assert_eq!(
        spec(&format!(
            r#"{{{HEAD},"runtimeConfig":{{"bandwidth":{{}}}}}}"#
        ))
        .unwrap(),
        None
    );
    assert_eq!(
        spec(&format!(r#"{{{HEAD},"ingressRate":0,"ingressBurst":0}}"#)).unwrap(),
        None
    );
}

#[test]
fn rate_and_burst_go_together_and_values_are_checked() {
    for (conf, field) in [
        (r#""ingressRate":1000"#, "ingressBurst"),
        (r#""egressBurst":1000"#, "egressRate"),
        (r#""ingressRate":7,"ingressBurst":1000"#, "ingressRate"),
        (r#""ingressRate":-1,"ingressBurst":1000"#, "ingressRate"),
        (r#""ingressRate":1.5e6,"ingressBurst":1000"#, "ingressRate"),
    ] {
        let e = spec(&format!("{{{HEAD},{conf}}}")).unwrap_err();
        assert_eq!(e.code(), 7, "{conf}");
        assert!(e.msg.contains(field), "{conf}: {}", e.msg);
    }
}

#[test]
fn subnets_one_list_or_the_other_in_cidr_notation() {
    let s = spec(&format!(
            r#"{{{HEAD},"egressRate":1000,"egressBurst":1000,"unshapedSubnets":["10.1.2.3/16","fd00::/64"]}}"#
        ))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.subnets,
        Subnets::Except(vec![
            "10.1.0.0/16".parse().unwrap(),
            "fd00::/64".parse().unwrap()
        ])
    );
    let s = spec(&format!(
            r#"{{{HEAD},"runtimeConfig":{{"bandwidth":{{"egressRate":1000,"egressBurst":1000,"ShapedSubnets":["192.168.0.0/24"]}}}}}}"#
        ))
        .unwrap()
        .unwrap();
    assert!(matches!(s.subnets, Subnets::Only(ref v) if v.len() == 1));
    for bad in [
        r#""shapedSubnets":["10.0.0.0/8"],"unshapedSubnets":["10.1.0.0/16"]"#,
        r#""shapedSubnets":["10.0.0.1"]"#,
        r#""shapedSubnets":["nonsense/8"]"#,
    ] {
        let e = spec(&format!(
            r#"{{{HEAD},"egressRate":1000,"egressBurst":1000,{bad}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code(), 7, "{bad}");
        assert!(e.msg.contains("ubnets"), "{bad}: {}", e.msg);
    }
}
