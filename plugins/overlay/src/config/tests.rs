use super::*;
use cni_core::Command;

fn req(conf: Value) -> Request {
    Request::build(
        Command::Add,
        "c1",
        Some("/x"),
        "eth0",
        conf.to_string().as_bytes(),
    )
    .unwrap()
}

fn base() -> Value {
    serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "type": "overlay", "vni": 42,
            "ipam": {"type": "etcd-ipam", "etcdEndpoints": ["http://10.240.0.1:2379"],
                     "ranges": [[{"subnet": "10.64.0.0/12"}]]}})
}

#[test]
fn defaults_derive_from_the_vni() {
    let s = parse(&req(base())).unwrap();
    assert_eq!(s.vni, 42);
    assert_eq!(s.bridge, "cnirsbr42");
    assert_eq!(s.vxlan, "cnirsvx42");
    assert_eq!(s.etcd_prefix, "/cnirs");
    assert_eq!(s.mtu, None);
    assert!(!s.internal);
    assert_eq!(vni_of_name("cnirsvx42"), Some(42));
    assert_eq!(vxlan_name(VNI_MAX).len(), 15);
    assert_eq!(default_bridge(VNI_MAX).len(), 15);
}

#[test]
fn vni_edges_and_bad_values_are_refused_naming_the_field() {
    for (vni, ok) in [
        (serde_json::json!(1), true),
        (serde_json::json!(16_777_215), true),
        (serde_json::json!(0), false),
        (serde_json::json!(16_777_216), false),
        (serde_json::json!(-1), false),
        (serde_json::json!("42"), false),
        (Value::Null, false),
    ] {
        let mut c = base();
        c["vni"] = vni.clone();
        let r = parse(&req(c));
        assert_eq!(r.is_ok(), ok, "{vni}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code, cni_core::ErrorCode::InvalidConfig);
            assert!(e.msg.contains("vni"), "{}", e.msg);
        }
    }
}

#[test]
fn etcd_endpoints_are_required_and_checked() {
    let mut c = base();
    c["ipam"] = serde_json::json!({"type": "etcd-ipam"});
    assert!(parse(&req(c)).unwrap_err().msg.contains("etcdEndpoints"));
    let mut c = base();
    c["ipam"]["etcdEndpoints"] = serde_json::json!(["10.0.0.1:2379"]);
    assert!(parse(&req(c)).is_err());
    // TLS keys are checked before any side effect, naming the key.
    let mut c = base();
    c["ipam"]["etcdEndpoints"] = serde_json::json!(["https://10.240.0.1:2379"]);
    let e = parse(&req(c.clone())).unwrap_err();
    assert!(e.msg.contains("ipam.etcdCACertFile"), "{}", e.msg);
    c["ipam"]["etcdCACertFile"] = serde_json::json!("/nonexistent/ca.pem");
    let e = parse(&req(c.clone())).unwrap_err();
    assert!(e.msg.contains("/nonexistent/ca.pem"), "{}", e.msg);
    c["ipam"]["etcdCertFile"] = serde_json::json!("/nonexistent/c.pem");
    let e = parse(&req(c)).unwrap_err();
    assert!(e.msg.contains("ipam.etcdKeyFile"), "{}", e.msg);
    let mut c = base();
    c["ipam"]["etcdCACertFile"] = serde_json::json!("/nonexistent/ca.pem");
    let e = parse(&req(c)).unwrap_err();
    assert!(e.msg.contains("ipam.etcdEndpoints"), "{}", e.msg);
    let mut c = base();
    c["underlay"] = serde_json::json!("a-very-long-interface");
    assert!(parse(&req(c)).unwrap_err().msg.contains("underlay"));
    let mut c = base();
    c["mtu"] = serde_json::json!(20);
    assert!(parse(&req(c)).is_err());
}

#[test]
fn the_bridge_spec_is_the_bridge_keys_with_our_bridge_mtu_and_a_gateway() {
    let mut c = base();
    c["ipMasq"] = serde_json::json!(true);
    c["ipam"]["ranges"] =
        serde_json::json!([[{"subnet": "10.64.0.0/12"}], [{"subnet": "fd64::/64"}]]);
    let r = req(c);
    let s = parse(&r).unwrap();
    assert_eq!(
        s.subnets.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["10.64.0.0/12", "fd64::/64"]
    );
    assert!(!s.default_gateway);
    let b = bridge_spec(&r, &s, 1450).unwrap();
    assert_eq!(b.bridge.as_str(), "cnirsbr42");
    assert_eq!(b.mtu, Some(1450));
    assert!(b.is_gateway && b.ip_masq);
    let mut c = base();
    c["internal"] = serde_json::json!(true);
    c["isDefaultGateway"] = serde_json::json!(true);
    let r = req(c);
    let s = parse(&r).unwrap();
    assert!(
        !s.default_gateway,
        "an internal network has no default route"
    );
    assert!(bridge_spec(&r, &s, 1450).unwrap().is_gateway);
}
