use cni_core::Command;

use super::*;

fn parse_with(extra: &str) -> Result<Ingress, CniError> {
    let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"firewall"{extra}}}"#);
    parse(
        &Request::build(
            Command::Add,
            "c",
            Some("/run/netns/p"),
            "eth0",
            conf.as_bytes(),
        )
        .unwrap(),
    )
}

#[test]
fn keys_of_the_reference_config() {
    assert_eq!(parse_with("").unwrap(), Ingress::Open);
    assert_eq!(
        parse_with(r#","ingressPolicy":"same-bridge""#).unwrap(),
        Ingress::SameBridge
    );
    assert_eq!(
        parse_with(r#","backend":"iptables","iptablesAdminChainName":"X""#).unwrap(),
        Ingress::Open
    );
    for (extra, field) in [
        (r#","backend":"firewalld""#, "backend"),
        (r#","ingressPolicy":"closed""#, "ingressPolicy"),
        (r#","ingressPolicy":5"#, "ingressPolicy"),
    ] {
        let e = parse_with(extra).unwrap_err();
        assert_eq!(e.code(), 7, "{extra}");
        assert!(e.msg.contains(field), "{}", e.msg);
    }
}

#[test]
fn keys_match_case_insensitively_as_go_does() {
    assert_eq!(
        parse_with(r#","IngressPolicy":"same-bridge""#).unwrap(),
        Ingress::SameBridge
    );
    let e = parse_with(r#","Backend":"firewalld""#).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.msg.contains("backend"), "{}", e.msg);
}

#[test]
fn cri_capability_args_are_accepted() {
    let rc = r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
    "ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"","RangeEnd":"","Gateway":""}]],
    "bandwidth":{"IngressRate":1000000,"IngressBurst":2000000,"EgressRate":1000000,"EgressBurst":2000000},
    "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local"],"Options":["ndots:5"]},
    "io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"1M","a":"b"}}"#;
    assert_eq!(
        parse_with(&format!(r#","runtimeConfig":{rc}"#)).unwrap(),
        Ingress::Open
    );
}

/// Orchestration over the in-memory firewall (no root): a host whose FORWARD policy
/// drops, the pod's bridge accepted there and, with `same-bridge`, isolated.
mod orchestration {
    use std::sync::Arc;

    use nftplan::{FakeNft, FirewallCell, IpFamily};

    use super::*;

    fn world() -> (Arc<FakeNft>, FirewallCell, tempfile::TempDir) {
        let nft = FakeNft::new();
        nft.add_forward_chain(IpFamily::V4, true);
        let dir = tempfile::tempdir().unwrap();
        let fw = FirewallCell::ready(nftplan::Firewall::with_backend(
            dir.path().join("netns-1"),
            Box::new(nft.clone()),
        ));
        (nft, fw, dir)
    }

    fn req(cmd: Command, policy: &str) -> Request {
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"firewall","ingressPolicy":"{policy}",
                "prevResult":{{"cniVersion":"1.1.0",
                  "interfaces":[{{"name":"br-a"}},{{"name":"eth0","sandbox":"/run/netns/p"}}],
                  "ips":[{{"address":"10.1.0.5/24","interface":1}}]}}}}"#
        );
        Request::build(cmd, "c1", Some("/run/netns/p"), "eth0", conf.as_bytes()).unwrap()
    }

    #[test]
    fn add_accepts_the_bridge_and_isolates_it_and_del_removes_both() {
        let (nft, fw, _d) = world();
        add(&fw, &req(Command::Add, "same-bridge")).unwrap();
        assert!(!nft.forward_rules(IpFamily::V4).is_empty());
        assert!(!nft.elems_of("isolated_br").is_empty(), "{}", nft.dump());
        check(&fw, &req(Command::Check, "same-bridge")).unwrap();
        del(&fw, &req(Command::Del, "same-bridge")).unwrap();
        assert!(nft.forward_rules(IpFamily::V4).is_empty());
        assert!(nft.elems_of("isolated_br").is_empty());
        let e = check(&fw, &req(Command::Check, "same-bridge")).unwrap_err();
        assert_eq!(
            CniError::from(e).code(),
            cni_core::ErrorCode::CheckFailed.as_u32()
        );
    }

    #[test]
    fn a_failed_isolation_undoes_the_forward_accept() {
        // How many batches the forward accept alone takes.
        let (nft, fw, _d) = world();
        add(&fw, &req(Command::Add, "open")).unwrap();
        let forward = nft.batches().len();
        assert!(!nft.forward_rules(IpFamily::V4).is_empty());

        let (nft, fw, _d) = world();
        let mut outcomes = vec![false; forward];
        // The isolation batch and its retry with the skeleton.
        outcomes.extend([true; 2]);
        nft.fail_next(&outcomes);
        let e = add(&fw, &req(Command::Add, "same-bridge")).unwrap_err();
        assert_eq!(CniError::from(e).code(), 101);
        assert!(
            nft.forward_rules(IpFamily::V4).is_empty(),
            "the accept is undone: {:?}",
            nft.forward_rules(IpFamily::V4)
        );
    }

    #[test]
    fn del_goes_on_past_a_failure_and_gc_releases_stale_attachments() {
        let (nft, fw, _d) = world();
        add(&fw, &req(Command::Add, "same-bridge")).unwrap();
        // The isolation release fails (every batch of it): the forward release still
        // runs, the failure is reported.
        // (the batch, its retry with the skeleton, the element on its own).
        nft.fail_next(&[true; 3]);
        assert!(del(&fw, &req(Command::Del, "same-bridge")).is_err());
        assert!(nft.forward_rules(IpFamily::V4).is_empty());
        assert!(!nft.elems_of("isolated_br").is_empty());
        del(&fw, &req(Command::Del, "same-bridge")).unwrap();
        assert!(nft.elems_of("isolated_br").is_empty());

        add(&fw, &req(Command::Add, "same-bridge")).unwrap();
        gc(&fw, &req(Command::Gc, "same-bridge")).unwrap();
        assert!(nft.forward_rules(IpFamily::V4).is_empty());
        assert!(nft.elems_of("isolated_br").is_empty());
    }
}
