use cni_core::{Command, ErrorCode};

use super::*;

fn req(ipam: serde_json::Value) -> Request {
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "net1", "type": "bridge",
            "ipam": ipam});
    Request::build(
        Command::Add,
        "c1",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap()
}

fn ranges() -> serde_json::Value {
    serde_json::json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd09::/64"}]])
}

#[test]
fn parses_endpoints_prefix_and_host_local_ranges() {
    let c = parse(&req(
        serde_json::json!({"type": "etcd-ipam", "ranges": ranges(),
            "etcdEndpoints": ["http://10.0.0.1:2379/", "http://[fd00::1]:2379"],
            "etcdPrefix": "/k8s/cni/", "routes": [{"dst": "0.0.0.0/0"}]}),
    ))
    .unwrap();
    assert_eq!(
        c.endpoints,
        ["http://10.0.0.1:2379", "http://[fd00::1]:2379"]
    );
    assert_eq!(c.prefix, "/k8s/cni");
    assert_eq!(c.network_prefix(), "/k8s/cni/ipam/net1/");
    assert_eq!(c.ipam.range_sets.len(), 2);
    assert_eq!(c.ipam.routes.len(), 1);
}

#[test]
fn prefix_defaults_to_cnirs() {
    let c = parse(&req(serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["http://127.0.0.1:2379"]})))
    .unwrap();
    assert_eq!(c.prefix, "/cnirs");
}

#[test]
fn missing_or_bad_endpoints_and_prefixes_are_code_7_naming_the_field() {
    let https_no_ca = serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["https://a:1"]});
    let cert_no_key = serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["https://a:1"], "etcdCACertFile": "/nonexistent/ca.pem",
            "etcdCertFile": "/nonexistent/c.pem"});
    let http_with_ca = serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["http://a:1"], "etcdCACertFile": "/nonexistent/ca.pem"});
    let relative = serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["https://a:1"], "etcdCACertFile": "ca.pem"});
    let unreadable = serde_json::json!({"ranges": ranges(),
            "etcdEndpoints": ["https://a:1"], "etcdCACertFile": "/nonexistent/ca.pem"});
    for (ipam, field) in [
        (https_no_ca, "ipam.etcdCACertFile"),
        (cert_no_key, "ipam.etcdKeyFile"),
        (http_with_ca, "ipam.etcdEndpoints"),
        (relative, "ipam.etcdCACertFile"),
        (unreadable, "/nonexistent/ca.pem"),
        (
            serde_json::json!({"ranges": ranges()}),
            "ipam.etcdEndpoints",
        ),
        (
            serde_json::json!({"ranges": ranges(), "etcdEndpoints": []}),
            "ipam.etcdEndpoints",
        ),
        (
            serde_json::json!({"ranges": ranges(), "etcdEndpoints": "http://a:1"}),
            "ipam.etcdEndpoints",
        ),
        (
            serde_json::json!({"ranges": ranges(), "etcdEndpoints": ["ftp://a:1"]}),
            "ipam.etcdEndpoints[0]",
        ),
        (
            serde_json::json!({"ranges": ranges(), "etcdEndpoints": ["http://a:1", 5]}),
            "ipam.etcdEndpoints[1]",
        ),
        (
            serde_json::json!({"ranges": ranges(), "etcdEndpoints": ["http://a:1"],
                    "etcdPrefix": "cnirs"}),
            "ipam.etcdPrefix",
        ),
        (
            serde_json::json!({"ranges": [[{"subnet": "10.9.0.1/24"}]],
                    "etcdEndpoints": ["http://a:1"]}),
            "ipam.ranges[0][0].subnet",
        ),
    ] {
        let e = parse(&req(ipam.clone())).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidConfig.as_u32(), "{ipam}");
        assert!(e.to_string().contains(field), "{ipam}: {e}");
    }
}
