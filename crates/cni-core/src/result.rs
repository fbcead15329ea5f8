//! The ADD result in every spec version.
//!
//! One internal form (the 1.1 shape) and two conversions: [`CniResult::to_json`] prints it in
//! the version the config asked for, [`CniResult::from_json`] reads any version's form (a
//! delegated IPAM plugin's answer or a `prevResult`). Conversions follow the reference
//! (`types/100`, `types/040`, `types/020`): pre-0.3 results keep the first IPv4 and the first
//! IPv6 address as `ip4`/`ip6` and split the routes between them by family.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::{
    error::{CniError, ErrorCode},
    version::Version,
};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// 1.1 only.
    pub mtu: Option<u32>,
    /// The netns path for a container-side interface, empty for a host-side one.
    pub sandbox: String,
    /// 1.1 only.
    pub socket_path: Option<String>,
    /// 1.1 only.
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix length (host bits kept: `10.1.0.5/24`).
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// 1.1 only, like the four below.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    /// Whether a kernel route to `dst` via `gw` is this one, for CHECK: the same network and
    /// prefix, and the same gateway when this one names a gateway.
    pub fn is_met_by(&self, dst: &IpNetwork, gw: Option<IpAddr>) -> bool {
        dst.network() == self.dst.network()
            && dst.prefix() == self.dst.prefix()
            && (self.gw.is_none() || gw == self.gw)
    }

    /// `DST[ via GW]`, as CHECK names a route.
    pub fn describe(&self) -> String {
        match self.gw {
            Some(g) => format!("{} via {g}", self.dst),
            None => self.dst.to_string(),
        }
    }

    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

fn route_json(r: &Route, v: Version) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    if v >= Version::V1_1_0 {
        for (k, val) in [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope),
        ] {
            if let Some(x) = val {
                m.insert(k.into(), json!(x));
            }
        }
    }
    Value::Object(m)
}

fn dns_json(d: &Dns) -> Value {
    serde_json::to_value(d).unwrap_or_else(|_| json!({}))
}

impl CniResult {
    /// The result as the given spec version prints it (with `cniVersion`).
    pub fn to_json(&self, v: Version) -> Value {
        if v.is_legacy_result() {
            return self.to_legacy_json(v);
        }
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), json!(i.mac));
                }
                if v >= Version::V1_1_0 {
                    if let Some(mtu) = i.mtu {
                        m.insert("mtu".into(), json!(mtu));
                    }
                }
                if !i.sandbox.is_empty() {
                    m.insert("sandbox".into(), json!(i.sandbox));
                }
                if v >= Version::V1_1_0 {
                    if let Some(s) = &i.socket_path {
                        m.insert("socketPath".into(), json!(s));
                    }
                    if let Some(p) = &i.pci_id {
                        m.insert("pciID".into(), json!(p));
                    }
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if v < Version::V1_0_0 {
                    m.insert(
                        "version".into(),
                        json!(if ip.address.is_ipv4() { "4" } else { "6" }),
                    );
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(m)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(v.to_string()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert(
                "routes".into(),
                Value::Array(self.routes.iter().map(|r| route_json(r, v)).collect()),
            );
        }
        out.insert("dns".into(), dns_json(&self.dns));
        Value::Object(out)
    }

    fn to_legacy_json(&self, v: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(v.to_string()));
        for (key, want_v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|ip| ip.address.is_ipv4() == want_v4) else {
                continue;
            };
            let mut m = Map::new();
            m.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                m.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == want_v4)
                .map(|r| route_json(r, v))
                .collect();
            if !routes.is_empty() {
                m.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(m));
        }
        out.insert("dns".into(), dns_json(&self.dns));
        Value::Object(out)
    }

    /// Read a result in any version's form. `what` names it in errors (e.g. `prevResult`).
    pub fn from_json(value: &Value, what: &str) -> Result<Self, CniError> {
        let obj = value
            .as_object()
            .ok_or_else(|| decode_err(what, "not a JSON object".to_string()))?;
        let mut res = CniResult::default();
        if let Some(d) = obj.get("dns") {
            res.dns = serde_json::from_value(d.clone())
                .map_err(|e| decode_err(&format!("{what}.dns"), e.to_string()))?;
        }
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            for key in ["ip4", "ip6"] {
                let Some(ipc) = obj.get(key) else { continue };
                let field = format!("{what}.{key}");
                let address = get_net(ipc, "ip", &field)?
                    .ok_or_else(|| decode_err(&field, "missing \"ip\"".to_string()))?;
                let gateway = get_ip(ipc, "gateway", &field)?;
                res.ips.push(IpConfig {
                    address,
                    gateway,
                    interface: None,
                });
                if let Some(routes) = ipc.get("routes") {
                    res.routes
                        .extend(parse_routes(routes, &format!("{field}.routes"))?);
                }
            }
            return Ok(res);
        }
        if let Some(ifs) = obj.get("interfaces") {
            let arr = ifs
                .as_array()
                .ok_or_else(|| decode_err(&format!("{what}.interfaces"), "not an array".into()))?;
            for (n, i) in arr.iter().enumerate() {
                let field = format!("{what}.interfaces[{n}]");
                res.interfaces.push(Interface {
                    name: get_str(i, "name", &field)?.unwrap_or_default(),
                    mac: get_str(i, "mac", &field)?.unwrap_or_default(),
                    mtu: get_u32(i, "mtu", &field)?,
                    sandbox: get_str(i, "sandbox", &field)?.unwrap_or_default(),
                    socket_path: get_str(i, "socketPath", &field)?,
                    pci_id: get_str(i, "pciID", &field)?,
                });
            }
        }
        if let Some(ips) = obj.get("ips") {
            let arr = ips
                .as_array()
                .ok_or_else(|| decode_err(&format!("{what}.ips"), "not an array".into()))?;
            for (n, ip) in arr.iter().enumerate() {
                let field = format!("{what}.ips[{n}]");
                let address = get_net(ip, "address", &field)?
                    .ok_or_else(|| decode_err(&field, "missing \"address\"".to_string()))?;
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(x) => {
                        let i = x.as_u64().ok_or_else(|| {
                            decode_err(&format!("{field}.interface"), "not an index".into())
                        })?;
                        let i = usize::try_from(i).map_err(|_| {
                            decode_err(&format!("{field}.interface"), "out of range".into())
                        })?;
                        if i >= res.interfaces.len() {
                            return Err(decode_err(
                                &format!("{field}.interface"),
                                format!("index {i} but only {} interfaces", res.interfaces.len()),
                            ));
                        }
                        Some(i)
                    }
                };
                res.ips.push(IpConfig {
                    address,
                    gateway: get_ip(ip, "gateway", &field)?,
                    interface,
                });
            }
        }
        if let Some(routes) = obj.get("routes") {
            res.routes = parse_routes(routes, &format!("{what}.routes"))?;
        }
        Ok(res)
    }

    /// The host-side bridge the pod hangs off: the first host interface of the result
    /// (`bridge` and `internal-bridge` list the bridge first, like the reference bridge plugin).
    /// Code 7 when there is none (the plugin is chained after something else) or its name is
    /// not an interface name.
    pub fn bridge(&self) -> Result<netbase::IfName, crate::CniError> {
        let name = self
            .interfaces
            .iter()
            .find(|i| i.sandbox.is_empty())
            .map(|i| i.name.as_str())
            .ok_or_else(|| {
                crate::CniError::config(
                    "prevResult.interfaces",
                    "no host-side interface: this plugin must follow bridge or internal-bridge",
                )
            })?;
        netbase::IfName::new(name).map_err(|e| crate::CniError::config("prevResult.interfaces", e))
    }

    /// Index of the container-side interface named `ifname` (sandbox set), as the reference
    /// portmap picks the container's addresses.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
    }

    /// The addresses that belong to the container interface `ifname`. Results without
    /// interface indexes (IPAM results, pre-0.3 results) count every address as the container's.
    pub fn container_ips(&self, ifname: &str) -> Vec<&IpConfig> {
        match self.sandbox_interface(ifname) {
            Some(idx) => self
                .ips
                .iter()
                .filter(|ip| ip.interface == Some(idx))
                .collect(),
            None if self.interfaces.is_empty() => self.ips.iter().collect(),
            None => Vec::new(),
        }
    }
}

fn decode_err(field: &str, problem: String) -> CniError {
    CniError::new(ErrorCode::Decode, format!("decoding {field}: {problem}"))
}

fn get_str(v: &Value, key: &str, field: &str) -> Result<Option<String>, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(decode_err(&format!("{field}.{key}"), "not a string".into())),
    }
}

fn get_u32(v: &Value, key: &str, field: &str) -> Result<Option<u32>, CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| decode_err(&format!("{field}.{key}"), "not a 32-bit number".into())),
    }
}

fn get_ip(v: &Value, key: &str, field: &str) -> Result<Option<IpAddr>, CniError> {
    match get_str(v, key, field)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            decode_err(
                &format!("{field}.{key}"),
                format!("{s:?} is not an IP address"),
            )
        }),
    }
}

fn get_net(v: &Value, key: &str, field: &str) -> Result<Option<IpNetwork>, CniError> {
    match get_str(v, key, field)? {
        None => Ok(None),
        Some(s) => parse_cidr(&s)
            .map(Some)
            .ok_or_else(|| decode_err(&format!("{field}.{key}"), format!("{s:?} is not a CIDR"))),
    }
}

/// `a.b.c.d/n` or `x::y/n`, prefix required (a bare address is not a CIDR).
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    if !s.contains('/') {
        return None;
    }
    s.parse().ok()
}

fn parse_routes(v: &Value, field: &str) -> Result<Vec<Route>, CniError> {
    let arr = v
        .as_array()
        .ok_or_else(|| decode_err(field, "not an array".into()))?;
    arr.iter()
        .enumerate()
        .map(|(n, r)| {
            let f = format!("{field}[{n}]");
            Ok(Route {
                dst: get_net(r, "dst", &f)?
                    .ok_or_else(|| decode_err(&f, "missing \"dst\"".to_string()))?,
                gw: get_ip(r, "gw", &f)?,
                mtu: get_u32(r, "mtu", &f)?,
                advmss: get_u32(r, "advmss", &f)?,
                priority: get_u32(r, "priority", &f)?,
                table: get_u32(r, "table", &f)?,
                scope: get_u32(r, "scope", &f)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::SUPPORTED;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    mtu: Some(1500),
                    sandbox: "/run/netns/x".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.0.1".parse().unwrap()),
                ),
                Route::new("::/0".parse().unwrap(), None),
            ],
            dns: Dns {
                nameservers: vec!["10.1.0.1".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v1_round_trips() {
        let r = sample();
        let j = r.to_json(Version::V1_1_0);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(CniResult::from_json(&j, "r").unwrap(), r);
    }

    #[test]
    fn v1_0_drops_1_1_fields() {
        let j = sample().to_json(Version::V1_0_0);
        assert!(j["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn v04_has_ip_versions() {
        let j = sample().to_json(Version::V0_4_0);
        assert_eq!(j["ips"][0]["version"], "4");
        assert_eq!(j["ips"][1]["version"], "6");
        let mut back = CniResult::from_json(&j, "r").unwrap();
        back.interfaces[1].mtu = Some(1500);
        assert_eq!(back, sample());
    }

    #[test]
    fn legacy_form_splits_routes_by_family() {
        let j = sample().to_json(Version::new(0, 2, 0));
        assert_eq!(j["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(j["ip4"]["gateway"], "10.1.0.1");
        assert_eq!(j["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(j["ip6"]["routes"][0]["dst"], "::/0");
        assert!(j.get("interfaces").is_none());
        let back = CniResult::from_json(&j, "r").unwrap();
        assert_eq!(back.ips.len(), 2);
        assert_eq!(back.routes.len(), 2);
        assert_eq!(back.ips[0].interface, None);
    }

    #[test]
    fn every_version_prints_and_reads_back_addresses() {
        for s in SUPPORTED {
            let v = Version::parse(s).unwrap();
            let j = sample().to_json(v);
            assert_eq!(j["cniVersion"], *s);
            let back = CniResult::from_json(&j, "r").unwrap();
            let addrs: Vec<_> = back.ips.iter().map(|i| i.address).collect();
            assert_eq!(
                addrs,
                vec![sample().ips[0].address, sample().ips[1].address],
                "{s}"
            );
        }
    }

    #[test]
    fn bad_results_are_decode_errors_naming_the_field() {
        let cases = [
            (
                json!({"ips": [{"address": "10.0.0.1"}]}),
                "prevResult.ips[0].address",
            ),
            (
                json!({"ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
                "ips[0].interface",
            ),
            (
                json!({"routes": [{"gw": "1.2.3.4"}]}),
                "prevResult.routes[0]",
            ),
            (json!({"ip4": {"gateway": "1.2.3.4"}}), "prevResult.ip4"),
            (json!([1, 2]), "prevResult"),
        ];
        for (v, field) in cases {
            let e = CniResult::from_json(&v, "prevResult").unwrap_err();
            assert_eq!(e.code(), 6, "{v}");
            assert!(e.msg.contains(field), "{} should name {field}", e.msg);
        }
    }

    #[test]
    fn container_ips_follow_the_interface_index() {
        let mut r = sample();
        r.ips[1].interface = Some(0);
        let ips = r.container_ips("eth0");
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].address.to_string(), "10.1.0.5/24");
        assert!(r.container_ips("eth1").is_empty());
    }
}
