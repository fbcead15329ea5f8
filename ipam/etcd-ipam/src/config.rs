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
    /// Root of this host's local state (`$CNIRS_RUN_DIR`, default `/run/cni-rs`): the
    /// addresses are kept under `cluster/<prefix>/<node>/ipam/<network>/` ([`crate::local`]).
    pub run_dir: std::path::PathBuf,
}

impl Config {
    /// `<prefix>/ipam/<network>/`.
    pub fn network_prefix(&self) -> String {
        cluster::ipam::network_prefix(&self.prefix, &self.network)
    }
}

/// Parse and validate; every problem is code 7 naming the field.
pub fn parse(req: &Request) -> Result<Config, CniError> {
    parse_with(req, true)
}

/// [`parse`] without reading the TLS files (`tls` is `None`): for a caller that hands in its
/// own etcd connection, set up from the same keys (the overlay plugin checks them in its own
/// config before any side effect).
pub fn parse_without_tls(req: &Request) -> Result<Config, CniError> {
    parse_with(req, false)
}

fn parse_with(req: &Request, load_tls: bool) -> Result<Config, CniError> {
    let ipam = ipamconf::config::parse(&req.stdin, req.version, &req.args)?;
    let raw: RawNet = cni_core::conf::parse(&req.stdin)?;
    let raw = raw.ipam.unwrap_or_default();
    let endpoints = endpoints(raw.etcd_endpoints.as_ref())?;
    let prefix = prefix(raw.etcd_prefix.as_deref())?;
    let files = [
        raw.etcd_ca_cert_file.as_deref(),
        raw.etcd_cert_file.as_deref(),
        raw.etcd_key_file.as_deref(),
    ];
    let tls = match load_tls {
        true => etcd::tls_from_conf(&endpoints, files)
            .map_err(|e| CniError::config(&format!("ipam.{}", e.key), e.message))?,
        false => None,
    };
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
        run_dir: cluster::node_state::run_root(),
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
mod tests;
