use super::*;

fn n(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn ops() -> Vec<Op> {
    vec![
        Op::CreateBridge {
            name: n("cni0"),
            mtu: None,
            mcast_snooping: false,
        },
        Op::SetUp {
            ns: Ns::Host,
            link: n("cni0"),
        },
        Op::CreateVeth {
            host: n("veth1"),
            peer: n("eth0"),
            netns: "/run/netns/x".into(),
            mtu: Some(1400),
            peer_mac: None,
        },
        Op::AddAddr {
            ns: Ns::Pod,
            link: n("eth0"),
            cidr: "fd00::2/64".parse().unwrap(),
            dad: false,
        },
        Op::AddRoute {
            ns: Ns::Pod,
            link: n("eth0"),
            route: RouteSpec {
                dst: "::/0".parse().unwrap(),
                gw: Some("fd00::1".parse().unwrap()),
                priority: None,
                onlink: false,
            },
        },
    ]
}

#[test]
fn ops_print_as_ip_commands() {
    let text: Vec<String> = ops().iter().map(|o| o.command("/run/netns/x")).collect();
    assert_eq!(
        text,
        [
            "ip link add cni0 type bridge mcast_snooping 0",
            "ip link set cni0 up",
            "ip link add veth1 mtu 1400 type veth peer name eth0 netns /run/netns/x mtu 1400",
            "ip -n /run/netns/x addr add fd00::2/64 dev eth0 nodad",
            "ip -n /run/netns/x route add default via fd00::1 dev eth0",
        ]
    );
}

#[test]
fn failure_at_every_step_undoes_the_earlier_steps_newest_first() {
    let plan = ops();
    for k in 0..plan.len() {
        let mut rec = Recorder::failing_at(k);
        let f = apply(&plan, &mut rec).unwrap_err();
        assert_eq!(f.step, k);
        assert!(f.undo_errors.is_empty());
        let want: Vec<Op> = plan[..k].iter().rev().filter_map(Op::inverse).collect();
        assert_eq!(rec.calls[..=k], plan[..=k], "step {k}: applied in order");
        assert_eq!(
            rec.calls[k + 1..],
            want[..],
            "step {k}: undone newest first"
        );
    }
}

#[test]
fn an_undo_failure_is_reported_beside_the_original_error() {
    // The route (call 4) fails, then the first undo step (call 5, the address) too.
    let plan = ops();
    let mut rec = Recorder {
        calls: Vec::new(),
        fail_at: vec![4, 5],
    };
    let f = apply(&plan, &mut rec).unwrap_err();
    assert_eq!(f.error, Injected(4));
    assert_eq!(f.undo_errors, [Injected(5)]);
    assert_eq!(
        rec.calls.len(),
        5 + 3,
        "undo went on to the veth and the bridge"
    );
}

#[test]
fn inverses_undo_what_the_attachment_owns_and_keep_shared_settings() {
    assert_eq!(
        ops()[2].inverse(),
        Some(Op::DeleteLink {
            ns: Ns::Host,
            link: n("veth1")
        })
    );
    assert_eq!(ops()[1].inverse(), None, "bridge up is shared");
    assert_eq!(
        ops()[0].inverse(),
        Some(Op::DeleteBridgeIfUnused { name: n("cni0") })
    );
}
