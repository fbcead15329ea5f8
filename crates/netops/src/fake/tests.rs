use super::*;
use crate::{apply, ops::Reversible, session::SessionExec};

fn n(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn plan() -> Vec<Op> {
    vec![
        Op::CreateBridge {
            name: n("br0"),
            mtu: None,
            mcast_snooping: false,
        },
        Op::CreateVeth {
            host: n("veth1"),
            peer: n("eth0"),
            netns: "/run/netns/p".into(),
            mtu: None,
            peer_mac: None,
        },
        Op::SetMaster {
            link: n("veth1"),
            bridge: n("br0"),
        },
        Op::AddAddr {
            ns: Ns::Pod,
            link: n("eth0"),
            cidr: "10.1.0.2/24".parse().unwrap(),
            dad: false,
        },
    ]
}

#[test]
fn ops_change_the_fake_as_the_kernel_would_and_a_failure_leaves_nothing() {
    let mut k = FakeNet::new();
    k.add_pod("/run/netns/p");
    k.open_pod(Path::new("/run/netns/p")).unwrap();
    apply(&plan(), &mut SessionExec(&mut k)).unwrap();
    let br = k.host.links["br0"].index;
    assert_eq!(k.host.links["veth1"].master, Some(br));
    assert_eq!(k.pod("/run/netns/p").addrs["eth0"].len(), 1);

    let mut k = FakeNet::new();
    k.add_pod("/run/netns/p");
    k.open_pod(Path::new("/run/netns/p")).unwrap();
    k.fail_matching("addr add");
    let f = apply(&plan(), &mut SessionExec(&mut k)).unwrap_err();
    assert_eq!(f.step, 3);
    assert_eq!(k.host.names(), ["lo"], "veth and bridge undone");
    assert_eq!(
        k.pod("/run/netns/p").names(),
        ["lo"],
        "the peer went with the veth"
    );
    assert!(plan()[1].inverse().is_some());
}

#[test]
fn an_existing_peer_is_refused_and_a_missing_netns_is_not_found() {
    let mut k = FakeNet::new();
    assert!(matches!(
        k.open_pod(Path::new("/run/netns/x")),
        Err(NetopsError::NetnsNotFound { .. })
    ));
    k.add_pod("/run/netns/p");
    k.open_pod(Path::new("/run/netns/p")).unwrap();
    k.put_link(Ns::Pod, "eth0", None);
    assert!(matches!(
        k.exec(&plan()[1]),
        Err(NetopsError::PeerExists { .. })
    ));
}

#[test]
fn seals_are_listed_until_every_rule_is_there() {
    let mut k = FakeNet::new();
    let subnets: Vec<IpNetwork> = vec!["10.9.0.0/24".parse().unwrap()];
    assert_eq!(k.missing_seal("br0", &subnets).unwrap().len(), 2);
    k.exec(&Op::SealBridge {
        name: n("br0"),
        subnets: subnets.clone(),
    })
    .unwrap();
    assert!(k.missing_seal("br0", &subnets).unwrap().is_empty());
    k.exec(&Op::UnsealBridge {
        name: n("br0"),
        subnets: vec![],
    })
    .unwrap();
    assert_eq!(k.missing_seal("br0", &subnets).unwrap().len(), 1);
}
