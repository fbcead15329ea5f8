//! The overlay plugin's own keys (`vni`, `underlay`, `internal`, `mtu`, and the etcd location
//! and ranges from the `ipam` section), validated before any side effect, and the bridge spec
//! the overlay's plan is built from (the bridge plugin's keys, with the overlay's bridge name,
//! MTU and gateway).

use bridge_plugin::config::{BridgeSpec, Mode};
use cni_core::{args::validate_ifname, CniError, IfName, Request};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Over an IPv6 underlay: 70 (outer IPv6 40).
pub const VXLAN6_OVERHEAD: u32 = 70;
/// Shared with etcd-ipam and the agent: the `etcdPrefix` default, the VNI range, the device
/// names and the derived addresses.
pub use cluster::{gateway_mac, vni_of_name, vxlan_name, DEFAULT_PREFIX, VNI_MAX};

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
    is_default_gateway: bool,
    #[serde(default)]
    ipam: Option<RawIpam>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    etcd_endpoints: Option<Vec<String>>,
    #[serde(default)]
    etcd_prefix: Option<String>,
    #[serde(default, rename = "etcdCACertFile")]
    etcd_ca_cert_file: Option<String>,
    #[serde(default)]
    etcd_cert_file: Option<String>,
    #[serde(default)]
    etcd_key_file: Option<String>,
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
    /// TLS to etcd (`ipam.etcdCACertFile`, `etcdCertFile`, `etcdKeyFile`), loaded and checked.
    pub etcd_tls: Option<etcd::Tls>,
    /// Set by [`parse_for_del`] when the TLS keys are wrong: DEL still cleans up the host,
    /// and reports this for its etcd step.
    pub etcd_tls_error: Option<(String, String)>,
    /// The subnets of the IPAM's ranges (`ipam.ranges`, `ipam.subnet`): the network's range
    /// on every host (its table's local route, its rules, its seal).
    pub subnets: Vec<IpNetwork>,
    /// `isDefaultGateway` (the pod's default route via the gateway; else only the range).
    pub default_gateway: bool,
}

/// `cnirsbr<vni>`: the default bridge of an overlay.
pub fn default_bridge(vni: u32) -> String {
    format!("cnirsbr{vni}")
}

/// Parse and validate everything (ADD, CHECK, STATUS, GC).
pub fn parse(req: &Request) -> Result<OverlaySpec, CniError> {
    parse_with(req, true)
}

/// For DEL: a TLS problem does not stop the host-side cleanup; it is kept in
/// [`OverlaySpec::etcd_tls_error`] and fails the etcd step only.
pub fn parse_for_del(req: &Request) -> Result<OverlaySpec, CniError> {
    parse_with(req, false)
}

fn parse_with(req: &Request, strict_tls: bool) -> Result<OverlaySpec, CniError> {
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
        kind: None,
        etcd_endpoints: None,
        etcd_prefix: None,
        etcd_ca_cert_file: None,
        etcd_cert_file: None,
        etcd_key_file: None,
    });
    if let Some(k) = ipam.kind.as_deref().filter(|k| *k != "etcd-ipam") {
        return Err(CniError::config(
            "ipam.type",
            format!(
                "{k:?}: the overlay routes each node's blocks, which only etcd-ipam hands out \
                 (use \"etcd-ipam\")"
            ),
        ));
    }
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
                format!("{e:?} is not an http:// or https:// URL"),
            ));
        }
    }
    // The same keys etcd-ipam reads: files read and checked now, before any side effect.
    let (etcd_tls, etcd_tls_error) = match etcd::tls_from_conf(
        &endpoints,
        [
            ipam.etcd_ca_cert_file.as_deref(),
            ipam.etcd_cert_file.as_deref(),
            ipam.etcd_key_file.as_deref(),
        ],
    ) {
        Ok(t) => (t, None),
        Err(e) if strict_tls => {
            return Err(CniError::config(&format!("ipam.{}", e.key), e.message))
        }
        Err(e) => (None, Some((format!("ipam.{}", e.key), e.message))),
    };
    let prefix = ipam
        .etcd_prefix
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let subnets = range_subnets(req)?;
    let default_gateway = !raw.internal && raw.is_default_gateway;
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
        etcd_tls,
        etcd_tls_error,
        subnets,
        default_gateway,
    })
}

/// The ranges' subnets, each once, parsed by the code etcd-ipam uses (crates/ipamconf).
fn range_subnets(req: &Request) -> Result<Vec<IpNetwork>, CniError> {
    let cfg = ipamconf::config::parse(&req.stdin, req.version, &req.args)?;
    let mut out: Vec<IpNetwork> = Vec::new();
    for set in &cfg.range_sets {
        for r in &set.0 {
            if !out.contains(&r.subnet) {
                out.push(r.subnet);
            }
        }
    }
    Ok(out)
}

/// The bridge attachment's spec: the bridge plugin's keys from the same config, with the
/// overlay's bridge, the pod MTU, and a gateway on every host (`isGateway` is implied: a pod
/// reaches everything outside its block through its own host).
pub fn bridge_spec(req: &Request, spec: &OverlaySpec, mtu: u32) -> Result<BridgeSpec, CniError> {
    let mode = if spec.internal {
        Mode::Internal
    } else {
        Mode::External
    };
    let mut b = bridge_plugin::config::parse(req, mode)?;
    b.bridge = IfName::new(&spec.bridge).map_err(|e| CniError::config("bridge", e))?;
    b.mtu = Some(mtu);
    b.is_gateway = true;
    Ok(b)
}

#[cfg(test)]
mod tests;
