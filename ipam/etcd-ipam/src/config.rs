//! The `ipam` section: host-local's `ranges`/`routes` (and `subnet`..., `resolvConf`, requested
//! `ips`), parsed by the code host-local uses (crates/ipamconf), plus `etcdEndpoints`, `etcdPrefix` and the TLS
//! files `etcdCACertFile`, `etcdCertFile`, `etcdKeyFile` (read and checked here, before any
//! side effect).

use cni_core::{CniError, Request};
use ipamconf::IpamConfig;
use serde::Deserialize;

pub use cluster::DEFAULT_PREFIX;

#[derive(Debug, Default, Deserialize)]
struct RawNet {
    ipam: Option<RawIpam>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    etcd_endpoints: Option<serde_json::Value>,
    etcd_prefix: Option<String>,
    #[serde(rename = "etcdCACertFile")]
    etcd_ca_cert_file: Option<String>,
    etcd_cert_file: Option<String>,
    etcd_key_file: Option<String>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ranges, routes, requested addresses: as host-local reads them (`dataDir` is ignored).
    pub ipam: IpamConfig,
    /// `http://host:port`, normalized.
    pub endpoints: Vec<String>,
    /// No trailing `/`.
    pub prefix: String,
    /// The network name, usable in a key.
    pub network: String,
    /// TLS for `https://` endpoints, loaded and checked.
    pub tls: Option<etcd::Tls>,
}

impl Config {
    /// `<prefix>/ipam/<network>/`.
    pub fn network_prefix(&self) -> String {
        cluster::ipam::network_prefix(&self.prefix, &self.network)
    }
}

/// Parse and validate; every problem is code 7 naming the field.
pub fn parse(req: &Request) -> Result<Config, CniError> {
    let ipam = ipamconf::config::parse(&req.stdin, req.version, &req.args)?;
    let raw: RawNet = cni_core::conf::parse(&req.stdin)?;
    let raw = raw.ipam.unwrap_or_default();
    let endpoints = endpoints(raw.etcd_endpoints.as_ref())?;
    let prefix = prefix(raw.etcd_prefix.as_deref())?;
    let tls = etcd::tls_from_conf(
        &endpoints,
        [
            raw.etcd_ca_cert_file.as_deref(),
            raw.etcd_cert_file.as_deref(),
            raw.etcd_key_file.as_deref(),
        ],
    )
    .map_err(|e| CniError::config(&format!("ipam.{}", e.key), e.message))?;
    let network = req.conf.name.clone();
    if network.is_empty() || network.contains('/') {
        return Err(CniError::config(
            "name",
            format!("{network:?}: want a name without '/'"),
        ));
    }
    if ipam.range_sets.is_empty() {
        return Err(CniError::config("ipam.ranges", "no range given"));
    }
    Ok(Config {
        ipam,
        endpoints,
        prefix,
        network,
        tls,
    })
}

/// The `ipam` key naming a TLS file.
pub fn tls_field(file: etcd::TlsFile) -> String {
    format!("ipam.{}", file.conf_key())
}

fn endpoints(v: Option<&serde_json::Value>) -> Result<Vec<String>, CniError> {
    const FIELD: &str = "ipam.etcdEndpoints";
    let list = match v {
        None | Some(serde_json::Value::Null) => {
            return Err(CniError::config(
                FIELD,
                "missing: want a list of http://host:port",
            ))
        }
        Some(serde_json::Value::Array(a)) if !a.is_empty() => a,
        Some(other) => {
            return Err(CniError::config(
                FIELD,
                format!("{other}: want a non-empty list of http://host:port"),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let s = e.as_str().ok_or_else(|| {
                CniError::config(&format!("{FIELD}[{i}]"), format!("{e}: want a string"))
            })?;
            etcd::parse_endpoint(s).map_err(|err| CniError::config(&format!("{FIELD}[{i}]"), err))
        })
        .collect()
}

fn prefix(p: Option<&str>) -> Result<String, CniError> {
    let Some(p) = p.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(DEFAULT_PREFIX.to_string());
    };
    let trimmed = p.trim_end_matches('/');
    if !p.starts_with('/') || trimmed.is_empty() || trimmed.contains("//") {
        return Err(CniError::config(
            "ipam.etcdPrefix",
            format!("{p:?}: want an absolute key prefix such as /cnirs"),
        ));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
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
}
