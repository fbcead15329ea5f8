//! The overlay plugin's own keys (`vni`, `underlay`, `internal`, `mtu`, and the etcd location
//! from the `ipam` section), validated before any side effect; and the pure derivations from
//! them: device names, the anycast gateway MAC, the config handed to the bridge code.

use cni_core::{args::validate_ifname, CniError, Request};
use serde::Deserialize;
use serde_json::Value;

/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Shared with etcd-ipam and the agent: the `etcdPrefix` default, the VNI range, and the
/// VXLAN device name the agent finds the devices by.
pub use cluster::{vni_of_name, vxlan_name, DEFAULT_PREFIX, VNI_MAX};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    vni: Option<Value>,
    #[serde(default)]
    underlay: Option<String>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    ipam: Option<RawIpam>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    etcd_endpoints: Option<Vec<String>>,
    #[serde(default)]
    etcd_prefix: Option<String>,
}

/// A validated overlay config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    pub network: String,
    pub vni: u32,
    /// `underlay`; `None` = the interface of the default route.
    pub underlay: Option<String>,
    pub internal: bool,
    /// `mtu`; `None` = underlay MTU - 50.
    pub mtu: Option<u32>,
    pub bridge: String,
    pub vxlan: String,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
}

/// `cnirsbr<vni>`: the default bridge of an overlay.
pub fn default_bridge(vni: u32) -> String {
    format!("cnirsbr{vni}")
}

/// The gateway MAC every host gives the network's bridge: `02:63:6e:` + the VNI. The bridges
/// of one overlay share one L2 segment and, with `isGateway`, one gateway address; with one MAC
/// too, a pod's gateway is always its own host (an ARP answer from a remote host names the same
/// MAC, which never leaves the local bridge), so egress and masquerade happen where the pod is.
pub fn gateway_mac(vni: u32) -> [u8; 6] {
    let v = vni.to_be_bytes();
    [0x02, 0x63, 0x6e, v[1], v[2], v[3]]
}

pub fn parse(req: &Request) -> Result<OverlaySpec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let vni = match &raw.vni {
        None | Some(Value::Null) => return Err(CniError::config("vni", "missing (1..16777215)")),
        Some(v) => v
            .as_u64()
            .filter(|v| (1..=u64::from(VNI_MAX)).contains(v))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| CniError::config("vni", format!("{v} is outside 1..16777215")))?,
    };
    if let Some(u) = &raw.underlay {
        validate_ifname(u).map_err(|e| CniError::config("underlay", e.msg))?;
    }
    if let Some(m) = raw.mtu {
        if !(68..=65535).contains(&m) {
            return Err(CniError::config("mtu", format!("{m} is outside 68..65535")));
        }
    }
    let bridge = raw.bridge.clone().unwrap_or_else(|| default_bridge(vni));
    validate_ifname(&bridge).map_err(|e| CniError::config("bridge", e.msg))?;
    let ipam = raw.ipam.unwrap_or(RawIpam {
        etcd_endpoints: None,
        etcd_prefix: None,
    });
    let endpoints = ipam.etcd_endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(CniError::config(
            "ipam.etcdEndpoints",
            "missing: the overlay registers its pods in etcd (use the etcd-ipam plugin)",
        ));
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(CniError::config(
                "ipam.etcdEndpoints",
                format!("{e:?} is not an http:// URL"),
            ));
        }
    }
    let prefix = ipam
        .etcd_prefix
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(CniError::config(
            "ipam.etcdPrefix",
            format!("{prefix:?} does not start with /"),
        ));
    }
    Ok(OverlaySpec {
        network: req.conf.name.clone(),
        vni,
        underlay: raw.underlay,
        internal: raw.internal,
        mtu: raw.mtu,
        bridge,
        vxlan: vxlan_name(vni),
        etcd_endpoints: endpoints,
        etcd_prefix: prefix.trim_end_matches('/').to_string(),
    })
}

/// The config the bridge code sees: ours with `bridge` and `mtu` filled in (the pod MTU is the
/// overlay's, not the bridge plugin's default). Everything else passes through unchanged.
pub fn bridge_stdin(req: &Request, spec: &OverlaySpec, mtu: u32) -> Result<Vec<u8>, CniError> {
    let mut v: Value = serde_json::from_slice(&req.stdin)
        .map_err(|e| CniError::new(cni_core::ErrorCode::Decode, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("bridge".into(), Value::from(spec.bridge.clone()));
        o.insert("mtu".into(), Value::from(mtu));
    }
    serde_json::to_vec(&v).map_err(|e| CniError::new(cni_core::ErrorCode::Decode, e.to_string()))
}

#[cfg(test)]
mod tests {
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
            "ipam": {"type": "etcd-ipam", "etcdEndpoints": ["http://10.240.0.1:2379"]}})
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
        assert_eq!(gateway_mac(0x01_02_03), [2, 0x63, 0x6e, 1, 2, 3]);
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
        let mut c = base();
        c["underlay"] = serde_json::json!("a-very-long-interface");
        assert!(parse(&req(c)).unwrap_err().msg.contains("underlay"));
        let mut c = base();
        c["mtu"] = serde_json::json!(20);
        assert!(parse(&req(c)).is_err());
    }

    #[test]
    fn bridge_sees_our_bridge_and_mtu() {
        let mut c = base();
        c["ipMasq"] = serde_json::json!(true);
        let r = req(c);
        let s = parse(&r).unwrap();
        let v: Value = serde_json::from_slice(&bridge_stdin(&r, &s, 1450).unwrap()).unwrap();
        assert_eq!(v["bridge"], "cnirsbr42");
        assert_eq!(v["mtu"], 1450);
        assert_eq!(v["ipMasq"], true);
        assert_eq!(v["ipam"]["type"], "etcd-ipam");
    }
}
