use cni_core::{IpConfig, Route};

use super::*;

#[test]
fn the_plan_routes_everything_through_the_host_end() {
    let ipam = CniResult {
        ips: vec![
            IpConfig {
                address: "10.1.1.5/24".parse().unwrap(),
                gateway: Some("10.1.1.1".parse().unwrap()),
                interface: None,
            },
            IpConfig {
                address: "fd00:1::5/64".parse().unwrap(),
                gateway: Some("fd00:1::1".parse().unwrap()),
                interface: None,
            },
        ],
        routes: vec![Route::new("0.0.0.0/0".parse().unwrap(), None)],
        ..Default::default()
    };
    let steps = plan(
        &Spec {
            ip_masq: false,
            mtu: Some(1400),
        },
        &IfName::new("veth0123456789a").unwrap(),
        &IfName::new("eth0").unwrap(),
        std::path::Path::new("/run/netns/p"),
        &ipam,
    )
    .unwrap();
    let text: Vec<String> = steps.iter().map(|s| s.command("P")).collect();
    assert_eq!(
            text,
            [
                "sysctl -w net.ipv4.ip_forward=1",
                "sysctl -w net.ipv6.conf.all.forwarding=1",
                "ip link add veth0123456789a mtu 1400 type veth peer name eth0 netns /run/netns/p mtu 1400",
                "nsenter --net=P sysctl -w net.ipv6.conf.lo.disable_ipv6=0  # best effort",
                "nsenter --net=P sysctl -w net.ipv6.conf.eth0.disable_ipv6=0  # best effort",
                "nsenter --net=P sysctl -w net.ipv6.conf.eth0.keep_addr_on_down=1",
                "ip -n P addr add 10.1.1.5/24 dev eth0 noprefixroute",
                "ip -n P route add 10.1.1.1/32 dev eth0 src 10.1.1.5",
                "ip -n P route add 10.1.1.0/24 via 10.1.1.1 dev eth0 src 10.1.1.5",
                "ip -n P addr add fd00:1::5/64 dev eth0 nodad noprefixroute",
                "ip -n P route add fd00:1::1/128 dev eth0 src fd00:1::5",
                "ip -n P route add fd00:1::/64 via fd00:1::1 dev eth0 src fd00:1::5",
                "ip -n P route add default via 10.1.1.1 dev eth0",
                "ip link set veth0123456789a up",
                "ip addr add 10.1.1.1/32 dev veth0123456789a",
                "ip route add 10.1.1.5/32 dev veth0123456789a scope host",
                "ip addr add fd00:1::1/128 dev veth0123456789a nodad",
                "ip route add fd00:1::5/128 dev veth0123456789a scope host",
            ]
        );
}

#[test]
fn an_ipam_result_without_gateway_is_refused() {
    let ipam = CniResult {
        ips: vec![IpConfig {
            address: "10.1.1.5/24".parse().unwrap(),
            gateway: None,
            interface: None,
        }],
        ..Default::default()
    };
    let e = plan(
        &Spec {
            ip_masq: false,
            mtu: None,
        },
        &IfName::new("veth0").unwrap(),
        &IfName::new("eth0").unwrap(),
        std::path::Path::new("/x"),
        &ipam,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no gateway"), "{e}");
}
