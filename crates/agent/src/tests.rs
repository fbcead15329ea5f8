use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn args_parse_with_defaults_and_refusals() {
    let a = parse_args(&s(&[
        "--etcd-endpoints",
        "http://10.240.0.1:2379,http://10.240.0.2:2379",
        "--underlay=ul0",
        "--node-name",
        "h1",
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(a.endpoints.len(), 2);
    assert_eq!(a.underlay, "ul0");
    assert_eq!(a.node, "h1");
    assert_eq!(a.prefix, "/cnirs");
    assert_eq!(a.node_source, "--node-name");
    assert!(a.tls.is_empty());
    assert_eq!(parse_args(&s(&["--help"])).unwrap(), None);
    assert!(parse_args(&s(&["--underlay", "ul0"])).is_err());
    assert!(parse_args(&s(&["--etcd-endpoints", "http://x:1"])).is_err());
    assert!(parse_args(&s(&["--etcd-endpoints", "http://x:1", "--underlay"])).is_err());
    assert!(parse_args(&s(&[
        "--etcd-endpoints",
        "http://x:1",
        "--underlay",
        "ul0",
        "--bogus"
    ]))
    .is_err());
    assert!(parse_args(&s(&[
        "--etcd-endpoints",
        "http://x:1",
        "--underlay",
        "an-interface-name-too-long"
    ]))
    .is_err());
}

#[test]
fn tls_files_and_node_name_come_from_flags_else_the_environment() {
    let env = |k: &str| match k {
        "CNIRS_ETCD_CAFILE" => Some("/env/ca.pem".to_string()),
        "CNIRS_ETCD_CERTFILE" => Some("/env/c.pem".to_string()),
        "CNIRS_ETCD_KEYFILE" => Some("/env/k.pem".to_string()),
        "CNIRS_NODE_NAME" => Some("from-env".to_string()),
        _ => None,
    };
    let base = ["--etcd-endpoints", "https://x:1", "--underlay", "ul0"];
    let a = parse_args_env(&s(&base), &env).unwrap().unwrap();
    assert_eq!(
        a.tls.ca.as_deref(),
        Some(std::path::Path::new("/env/ca.pem"))
    );
    assert_eq!(
        a.tls.key.as_deref(),
        Some(std::path::Path::new("/env/k.pem"))
    );
    assert_eq!(
        (a.node.as_str(), a.node_source),
        ("from-env", "CNIRS_NODE_NAME")
    );
    let mut with_flags = base.to_vec();
    with_flags.extend(["--etcd-cafile=/flag/ca.pem", "--node-name", "n1"]);
    let a = parse_args_env(&s(&with_flags), &env).unwrap().unwrap();
    assert_eq!(
        a.tls.ca.as_deref(),
        Some(std::path::Path::new("/flag/ca.pem"))
    );
    assert_eq!(
        a.tls.cert.as_deref(),
        Some(std::path::Path::new("/env/c.pem"))
    );
    assert_eq!(a.node, "n1");
    let none = |_: &str| None;
    let a = parse_args_env(&s(&base), &none).unwrap().unwrap();
    assert!(a.tls.is_empty());
    assert_eq!(a.node_source, "the hostname");
}

#[test]
fn the_taken_message_names_the_node_both_vteps_and_the_flag() {
    let m = taken_message(
        "/cnirs/hosts/h1",
        "h1",
        "--node-name",
        Some("10.240.0.1".parse().unwrap()),
        "10.240.0.3".parse().unwrap(),
    );
    for want in [
        "\"h1\"",
        "10.240.0.1",
        "10.240.0.3",
        "--node-name",
        "/cnirs/hosts/h1",
    ] {
        assert!(m.contains(want), "{want}: {m}");
    }
}

#[test]
fn a_device_of_an_unlisted_network_reads_networks_at_once_and_then_once_a_resync() {
    let (resync, soon) = (RESYNC, Duration::from_millis(100));
    assert!(!read_networks_now(0, 0, resync, resync), "nothing unknown");
    assert!(
        read_networks_now(1, 0, soon, resync),
        "a new device: at once"
    );
    assert!(
        !read_networks_now(1, 1, soon, resync),
        "the same one: not again so soon"
    );
    assert!(
        read_networks_now(1, 1, resync, resync),
        "again after a resync period"
    );
    assert!(
        read_networks_now(2, 1, soon, resync),
        "a second new device: at once"
    );
}
