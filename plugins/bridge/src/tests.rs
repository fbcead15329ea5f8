//! Plan tests: config + IPAM result + kernel view in, steps out, no kernel. The golden plans
//! are the text of `ip` commands; the rollback tests run every plan over the recording fake
//! with a failure injected at each step.

use cni_core::{args::Command, CniResult, IfName, Request};
use netops::{apply, Recorder, Reversible};

use crate::{
    config::{self, Mode},
    plan::{self, BridgeView, Ids, KernelView, Step},
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

fn ids(r: &Request) -> Ids {
    Ids {
        network: r.conf.name.clone(),
        container_id: r.container_id.clone(),
        ifname: IfName::new(&r.ifname).unwrap(),
        netns: r.netns.clone().unwrap(),
    }
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

/// A fresh host: no bridge, pod `lo` down, forwarding off.
fn fresh() -> KernelView {
    KernelView::default()
}

/// The bridge exists, up, with this network's gateway; forwarding on; pod `lo` up.
fn warm() -> KernelView {
    KernelView {
        bridge: Some(BridgeView {
            kind: Some("bridge".into()),
            up: true,
            promisc: false,
            addrs: vec![
                "10.5.0.1/24".parse().unwrap(),
                "fd00:5::1/64".parse().unwrap(),
                "fe80::1/64".parse().unwrap(),
            ],
        }),
        pod_lo_up: true,
        forward_v4: true,
        forward_v6: true,
        ..Default::default()
    }
}

fn plan_of(conf: &str, mode: Mode, ipam: &CniResult, view: &KernelView) -> plan::Plan {
    let r = req(conf);
    let spec = config::parse(&r, mode).unwrap();
    plan::build(&spec, &ids(&r), ipam, view).unwrap()
}

#[test]
fn golden_first_pod_on_a_fresh_host_creates_everything() {
    let p = plan_of(CONF, Mode::External, &dual(), &fresh());
    let veth = plan::host_veth_name("n1", "ctr1", "eth0").unwrap();
    let want = "\
ip link add br-t type bridge mcast_snooping 0
ip link set br-t address <its own>  # pin
ip rule del iif br-t priority 10 unreachable  # -4 and -6
ip addr add 10.5.0.1/24 dev br-t
ip addr add fd00:5::1/64 dev br-t nodad
ip link add VETH type veth peer name eth0 netns /run/netns/p
sysctl -w net.ipv6.conf.VETH.disable_ipv6=1
ip link set VETH master br-t up
ip link set VETH type bridge_slave hairpin on
ip -n /run/netns/p link set lo up
ip -n /run/netns/p addr add 10.5.0.3/24 dev eth0
ip -n /run/netns/p addr add fd00:5::3/64 dev eth0 nodad
ip -n /run/netns/p route add 192.168.77.0/24 via 10.5.0.1 dev eth0
ip -n /run/netns/p route add default via 10.5.0.1 dev eth0
ip -n /run/netns/p route add default via fd00:5::1 dev eth0
sysctl -w net.ipv4.ip_forward=1
sysctl -w net.ipv6.conf.all.forwarding=1
nft: attach n1/ctr1/eth0 to bridge br-t subnets { 10.5.0.0/24 fd00:5::/64 } masq { 10.5.0.0/24 fd00:5::/64 }
"
    .replace("VETH", &veth);
    assert_eq!(p.text(), want, "\n{}", p.text());
    assert!(p.ips.iter().all(|i| i.interface == Some(2)));
}

#[test]
fn golden_second_pod_on_a_warm_host_only_adds_its_own_parts() {
    let conf = CONF.replace(r#""hairpinMode":true"#, r#""mtu":1400,"enabledad":true"#);
    let p = plan_of(&conf, Mode::External, &dual(), &warm());
    let veth = plan::host_veth_name("n1", "ctr1", "eth0").unwrap();
    let want = "\
ip link add VETH mtu 1400 type veth peer name eth0 netns /run/netns/p mtu 1400
sysctl -w net.ipv6.conf.VETH.disable_ipv6=1
ip link set VETH master br-t up
ip -n /run/netns/p addr add 10.5.0.3/24 dev eth0
ip -n /run/netns/p addr add fd00:5::3/64 dev eth0
ip -n /run/netns/p route add 192.168.77.0/24 via 10.5.0.1 dev eth0
ip -n /run/netns/p route add default via 10.5.0.1 dev eth0
ip -n /run/netns/p route add default via fd00:5::1 dev eth0
nft: attach n1/ctr1/eth0 to bridge br-t subnets { 10.5.0.0/24 fd00:5::/64 } masq { 10.5.0.0/24 fd00:5::/64 }
"
    .replace("VETH", &veth);
    assert_eq!(p.text(), want, "\n{}", p.text());
}

#[test]
fn golden_internal_bridge_drops_default_routes_masquerade_and_forwarding() {
    let conf = CONF.replace(r#""type":"bridge""#, r#""type":"internal-bridge""#);
    let with_default = ipam(serde_json::json!({"cniVersion":"1.0.0",
        "ips":[{"address":"10.6.0.3/24","gateway":"10.6.0.1"}],
        "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.99.0.0/16"}]}));
    let mut view = fresh();
    view.pod_lo_up = true;
    let p = plan_of(&conf, Mode::Internal, &with_default, &view);
    let veth = plan::host_veth_name("n1", "ctr1", "eth0").unwrap();
    let want = "\
ip link add br-t type bridge mcast_snooping 0
ip link set br-t address <its own>  # pin
ip rule add iif br-t priority 10 unreachable  # -4 and -6
ip rule add to 10.6.0.0/24 iif lo priority 9 lookup main; ip rule add to 10.6.0.0/24 priority 10 unreachable
ip link add VETH type veth peer name eth0 netns /run/netns/p
sysctl -w net.ipv6.conf.VETH.disable_ipv6=1
nsenter --net=/run/netns/p sysctl -w net.ipv6.conf.eth0.disable_ipv6=1
ip link set VETH master br-t up
ip link set VETH type bridge_slave hairpin on
ip -n /run/netns/p addr add 10.6.0.3/24 dev eth0
ip -n /run/netns/p route add 10.99.0.0/16 via 10.6.0.1 dev eth0
nft: attach n1/ctr1/eth0 to bridge br-t internal subnets { 10.6.0.0/24 }
"
    .replace("VETH", &veth);
    assert_eq!(p.text(), want, "\n{}", p.text());
}

#[test]
fn a_default_route_the_pod_already_has_is_kept_and_left_out_of_the_result() {
    let mut view = warm();
    view.pod_default_v4 = true;
    let p = plan_of(CONF, Mode::External, &dual(), &view);
    let defaults: Vec<String> = p
        .routes
        .iter()
        .filter(|r| r.dst.prefix() == 0)
        .map(|r| r.dst.to_string())
        .collect();
    assert_eq!(defaults, ["::/0"]);
    assert!(!p.text().contains("default via 10.5.0.1"));
}

#[test]
fn another_networks_ipv4_gateway_on_the_bridge_is_a_conflict_unless_force_address() {
    let mut view = warm();
    view.bridge.as_mut().unwrap().addrs = vec!["10.9.0.1/24".parse().unwrap()];
    let r = req(CONF);
    let spec = config::parse(&r, Mode::External).unwrap();
    let e = plan::build(&spec, &ids(&r), &dual(), &view).unwrap_err();
    assert_eq!(cni_core::CniError::from(e).code(), 103);
    let forced = CONF.replace(r#""ipMasq":true"#, r#""ipMasq":true,"forceAddress":true"#);
    let p = plan_of(&forced, Mode::External, &dual(), &view);
    assert!(
        p.text()
            .contains("ip addr del 10.9.0.1/24 dev br-t\nip addr add 10.5.0.1/24 dev br-t\n"),
        "{}",
        p.text()
    );
}

#[test]
fn taken_ifname_and_a_non_bridge_link_are_refused_before_ipam() {
    let r = req(CONF);
    let spec = config::parse(&r, Mode::External).unwrap();
    let taken = KernelView {
        pod_has_ifname: true,
        ..Default::default()
    };
    let e = plan::preflight(&spec, &ids(&r), &taken).unwrap_err();
    assert_eq!(cni_core::CniError::from(e).code(), 103);
    let not_bridge = KernelView {
        bridge: Some(BridgeView {
            kind: Some("veth".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = plan::preflight(&spec, &ids(&r), &not_bridge).unwrap_err();
    assert_eq!(cni_core::CniError::from(e).code(), 7);
}

/// For every step k of every golden plan: a failure at k runs the inverses of steps k-1..1,
/// newest first, and nothing else.
#[test]
fn a_failure_at_every_step_rolls_back_the_steps_before_it() {
    let internal = CONF.replace(r#""type":"bridge""#, r#""type":"internal-bridge""#);
    let plans = [
        plan_of(CONF, Mode::External, &dual(), &fresh()),
        plan_of(CONF, Mode::External, &dual(), &warm()),
        plan_of(&internal, Mode::Internal, &dual(), &fresh()),
    ];
    for p in &plans {
        for k in 0..p.steps.len() {
            let mut rec = Recorder::<Step>::failing_at(k);
            let f = apply(&p.steps, &mut rec).unwrap_err();
            assert_eq!(f.step, k);
            let undo: Vec<Step> = p.steps[..k]
                .iter()
                .rev()
                .filter_map(Step::inverse)
                .collect();
            assert_eq!(rec.calls[..=k], p.steps[..=k]);
            assert_eq!(
                rec.calls[k + 1..],
                undo[..],
                "failure at step {k}:\n{}",
                p.text()
            );
        }
        // Failure at the firewall step (last): the veth goes, so do the pod's addresses.
        let last = p.steps.len() - 1;
        let mut rec = Recorder::<Step>::failing_at(last);
        apply(&p.steps, &mut rec).unwrap_err();
        let undone: Vec<String> = rec.calls[last + 1..]
            .iter()
            .map(|s| s.command("/run/netns/p"))
            .collect();
        let veth = plan::host_veth_name("n1", "ctr1", "eth0").unwrap();
        assert!(
            undone.contains(&format!("ip link del {veth}")),
            "{undone:?}"
        );
    }
}

#[test]
fn a_created_bridge_is_removed_on_rollback_only_if_unused_and_the_firewall_is_detached() {
    let p = plan_of(CONF, Mode::External, &dual(), &fresh());
    let inverses: Vec<String> = p
        .steps
        .iter()
        .filter_map(Step::inverse)
        .map(|s| s.command("/run/netns/p"))
        .collect();
    assert_eq!(
        inverses.first().unwrap(),
        "ip link del br-t  # if it has no ports"
    );
    assert_eq!(inverses.last().unwrap(), "nft: detach n1/ctr1/eth0");
    assert!(
        !inverses.iter().any(|c| c.contains("sysctl")),
        "forwarding is shared"
    );
}

#[test]
fn bad_values_name_their_field() {
    for (patch, field) in [
        (r#""mtu":10"#, "mtu"),
        (r#""bridge":"a-very-long-bridge-name""#, "bridge"),
        (r#""bridge":"a/b""#, "bridge"),
        (r#""bridge":"br\"x""#, "bridge"),
        (r#""bridge":"brü""#, "bridge"),
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
    let e = plan::build(&spec, &ids(&r), &bad, &fresh()).unwrap_err();
    assert_eq!(cni_core::CniError::from(e).code(), 7);
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
    assert_eq!(
        spec.mac,
        Some(cni_core::MacAddr([0x0a, 0x58, 0x0a, 0, 0, 9]))
    );
    let conf = r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge",
        "RuntimeConfig":{"MAC":"0a:58:0a:00:00:0a"}}"#;
    let spec = config::parse(&req(conf), Mode::External).unwrap();
    assert_eq!(
        spec.mac,
        Some(cni_core::MacAddr([0x0a, 0x58, 0x0a, 0, 0, 0x0a]))
    );
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

#[test]
fn the_pod_interface_loses_ipv6_only_when_ipam_gives_it_ipv4_alone() {
    let pod_off = "nsenter --net=/run/netns/p sysctl -w net.ipv6.conf.eth0.disable_ipv6=1\n";
    let v4 = ipam(serde_json::json!({"cniVersion":"1.0.0",
        "ips":[{"address":"10.5.0.3/24","gateway":"10.5.0.1"}]}));
    let text = plan_of(CONF, Mode::External, &v4, &warm()).text();
    // before the host end comes up: the pod's carrier starts there
    let at = text.find(pod_off).expect(&text);
    assert!(at < text.find(" master br-t up").unwrap(), "{text}");
    assert!(!plan_of(CONF, Mode::External, &dual(), &warm())
        .text()
        .contains(pod_off));
    // no IPAM at all: a plain L2 network keeps IPv6 for an outside router
    let l2 = r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","bridge":"br-t"}"#;
    let empty = ipam(serde_json::json!({"cniVersion":"1.0.0"}));
    let text = plan_of(l2, Mode::External, &empty, &warm()).text();
    assert!(text.contains("type veth peer name eth0"), "{text}");
    assert!(!text.contains(pod_off), "{text}");
}

/// The overlay's use of the plan API: its bridge MAC, the pod's narrower prefix with the
/// gateway reached `onlink`, the range routed through the gateway, its host ops before the
/// veth, its device as a peer of the bridge in the firewall.
#[test]
fn a_shaped_plan_narrows_the_pod_prefix_and_keeps_the_bridges() {
    let r = req(
        r#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","bridge":"br-t",
        "isGateway":true,"ipam":{"type":"host-local"}}"#,
    );
    let spec = config::parse(&r, Mode::External).unwrap();
    let shape = plan::Shape {
        bridge_mac: Some(cni_core::MacAddr([2, 0x63, 0x6e, 0, 0, 7])),
        pod_prefix: Some((26, 122)),
        route_subnets: true,
        host_ops: vec![netops::Op::SetUp {
            ns: netops::Ns::Host,
            link: IfName::new("cnirsvx7").unwrap(),
        }],
        peers: vec![IfName::new("cnirsvx7").unwrap()],
    };
    let ipam = ipam(serde_json::json!({"cniVersion":"1.0.0",
        "ips":[{"address":"10.5.1.3/16","gateway":"10.5.0.1"}]}));
    let p = plan::build_shaped(&spec, &ids(&r), &ipam, &fresh(), &shape).unwrap();
    let text = p.text();
    let pos = |s: &str| {
        text.find(s)
            .unwrap_or_else(|| panic!("{s} missing:\n{text}"))
    };
    assert!(!text.contains("# pin"), "{text}");
    pos("ip link set br-t address 02:63:6e:00:00:07");
    pos("ip addr add 10.5.0.1/16 dev br-t");
    pos("ip -n /run/netns/p addr add 10.5.1.3/26 dev eth0");
    pos("ip -n /run/netns/p route add 10.5.0.0/16 via 10.5.0.1 onlink dev eth0");
    assert!(pos("ip link set cnirsvx7 up") < pos("type veth peer"));
    assert_eq!(p.ips[0].address.to_string(), "10.5.1.3/26");
    let Some(Step::AttachFirewall(f)) = p.steps.last() else {
        panic!("{text}");
    };
    assert_eq!(f.peers, shape.peers);
    assert_eq!(
        f.subnets[0].to_string(),
        "10.5.0.0/16",
        "the range, not the block"
    );
}
