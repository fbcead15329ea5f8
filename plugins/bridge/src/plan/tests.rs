use super::*;

#[test]
fn veth_names_are_stable_short_and_distinct() {
    let v = |n, c, i| host_veth_name(n, c, i).unwrap();
    let a = v("net", "ctr", "eth0");
    assert_eq!(a, v("net", "ctr", "eth0"));
    assert_eq!(a.len(), 15);
    assert!(a.starts_with("veth"));
    assert_ne!(a, v("net", "ctr", "eth1"));
    assert_ne!(a, v("net2", "ctr", "eth0"));
    // The separator keeps ("ab","c") and ("a","bc") apart.
    assert_ne!(v("ab", "c", "x"), v("a", "bc", "x"));
}

#[test]
fn gateway_defaults_to_first_address() {
    let ip = IpConfig {
        address: "10.4.0.7/24".parse().unwrap(),
        gateway: None,
        interface: None,
    };
    assert_eq!(gateway_for(&ip), "10.4.0.1".parse::<IpAddr>().unwrap());
    let ip6 = IpConfig {
        address: "fd00:4::7/64".parse().unwrap(),
        gateway: None,
        interface: None,
    };
    assert_eq!(gateway_for(&ip6), "fd00:4::1".parse::<IpAddr>().unwrap());
}
