//! `netpol`: a chained plugin (after `bridge`, `internal-bridge` or `overlay`) that makes the pod's
//! addresses subject to the Kubernetes NetworkPolicies in force on this host before its ADD
//! returns. The pod is named by `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in `CNI_ARGS` (as
//! containerd's CRI passes them); its labels and named ports come from the Pod objects given
//! to `cnirs policy apply`. The ADD records the attachment and applies the compiled elements
//! in one transaction; if that fails the ADD fails (the runtime tears the pod down): a pod a
//! policy isolates never answers success reachable. DEL forgets it (idempotent), CHECK wants
//! every element the policies in force give its addresses, GC forgets attachments the
//! runtime no longer lists. See docs/netpol.md.
//!
//! Across hosts (chained after `overlay`): with `etcdEndpoints` (and `etcdCACertFile`,
//! `etcdCertFile`, `etcdKeyFile`, `etcdPrefix`, the overlay's `ipam` keys) on this entry, the
//! objects are read from etcd and the attachment is published there for the other hosts
//! (`<prefix>/netpol/endpoints/<node>/...`, node from `CNIRS_NODE_NAME` or the hostname).

use std::{net::IpAddr, path::Path, sync::Arc};

use cni_core::{error::from_classified, CniError, CniResult, ErrorCode, Plugin, Request};
use netpol::{cluster::EtcdSource, PodAttachment, PolicyError, Store};
use serde::Deserialize;

pub struct Netpol;

/// The plugin's errors, each with its cause; CNI codes are chosen once, in the `From` below.
#[derive(Debug, thiserror::Error)]
pub enum NetpolError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{count} NetworkPolicy element(s) missing for {pod}: {list}")]
    Missing {
        pod: String,
        count: usize,
        list: String,
    },
    #[error(
        "netpol: traffic between pods of one bridge would not be filtered: {sysctl} is {found} \
         (the bridge's netfilter hook, through which same-bridge traffic reaches the policies); \
         run `modprobe br_netfilter` and `sysctl -w net.bridge.bridge-nf-call-iptables=1 \
         net.bridge.bridge-nf-call-ip6tables=1` on the host"
    )]
    BridgeHookOff { sysctl: String, found: String },
}

impl From<NetpolError> for CniError {
    fn from(e: NetpolError) -> CniError {
        match e {
            NetpolError::Cni(c) => c,
            NetpolError::Policy(PolicyError::Nft(f)) => from_classified(f.class(), &f, None),
            NetpolError::Policy(p @ (PolicyError::Io { .. } | PolicyError::State { .. })) => {
                CniError::new(ErrorCode::Io, p.to_string())
            }
            NetpolError::Policy(PolicyError::Etcd(e)) if e.is_config() => {
                CniError::config("etcdEndpoints", e)
            }
            NetpolError::Policy(p @ (PolicyError::Etcd(_) | PolicyError::Record { .. })) => {
                CniError::new(ErrorCode::TryAgainLater, p.to_string())
            }
            NetpolError::Policy(p) => CniError::new(ErrorCode::InvalidConfig, p.to_string()),
            m @ (NetpolError::Missing { .. } | NetpolError::BridgeHookOff { .. }) => {
                CniError::new(ErrorCode::Firewall, m.to_string())
            }
        }
    }
}

/// The etcd keys of this plugin's entry (all optional: without `etcdEndpoints`, one host).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    etcd_prefix: Option<String>,
    #[serde(rename = "etcdCACertFile")]
    etcd_ca_cert_file: Option<String>,
    etcd_cert_file: Option<String>,
    etcd_key_file: Option<String>,
}

/// The store: one host's (no `etcdEndpoints`), or the cluster's objects in etcd. Nothing is
/// contacted yet.
fn open(req: &Request) -> Result<Store, NetpolError> {
    let conf: Conf = req.parse_conf()?;
    if conf.etcd_endpoints.is_empty() {
        return Ok(Store::open()?);
    }
    let tls = etcd::tls_from_conf(
        &conf.etcd_endpoints,
        [
            conf.etcd_ca_cert_file.as_deref(),
            conf.etcd_cert_file.as_deref(),
            conf.etcd_key_file.as_deref(),
        ],
    )
    .map_err(|e| CniError::config(e.key, e.message))?;
    let prefix = conf
        .etcd_prefix
        .unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/') {
        return Err(
            CniError::config("etcdPrefix", format!("{prefix:?} does not start with /")).into(),
        );
    }
    let client = etcd::Client::with_options(
        &conf.etcd_endpoints,
        etcd::Options {
            tls,
            ..etcd::Options::default()
        },
    )
    .map_err(|e| CniError::config("etcdEndpoints", e))?;
    let node = cluster::schema::node_name();
    let src = EtcdSource::new(Arc::new(client), &prefix, &node);
    Ok(Store::open_with(Box::new(src))?)
}

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`: both required (without them the pod cannot be
/// matched by any selector, and letting it through unfiltered would fail open).
fn pod_of(req: &Request) -> Result<(String, String), CniError> {
    let get = |k: &str| {
        req.args
            .get(k)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                CniError::env(
                    "CNI_ARGS",
                    format!(
                        "netpol needs {k} (K8S_POD_NAMESPACE and K8S_POD_NAME, as CRI passes them)"
                    ),
                )
            })
    };
    Ok((get("K8S_POD_NAMESPACE")?, get("K8S_POD_NAME")?))
}

/// The pod's addresses from the previous result.
fn pod_ips(prev: &CniResult) -> Result<Vec<IpAddr>, CniError> {
    let ips: Vec<IpAddr> = prev.ips.iter().map(|c| c.address.ip()).collect();
    if ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "netpol: prevResult has no ips (chain it after bridge, internal-bridge or overlay)",
        ));
    }
    Ok(ips)
}

/// The bridge's netfilter hook for each family of `ips`, read under `proc_sys` (the
/// runtime's netns, where the pod's bridge is): `Err` names the first one that is off or
/// missing (`br_netfilter` not loaded). Same-bridge traffic is switched, not routed: without
/// the hook it never crosses `inet cnirs`, and the pod's policies would not hold against its
/// bridge neighbours, so ADD and CHECK refuse (fail closed).
fn bridge_hook_on(proc_sys: &Path, ips: &[IpAddr]) -> Result<(), NetpolError> {
    let hooks = [
        (false, "net/bridge/bridge-nf-call-iptables"),
        (true, "net/bridge/bridge-nf-call-ip6tables"),
    ];
    for (v6, key) in hooks {
        if !ips.iter().any(|ip| ip.is_ipv6() == v6) {
            continue;
        }
        let found = match std::fs::read_to_string(proc_sys.join(key)) {
            Ok(v) if v.trim() == "1" => continue,
            Ok(v) => v.trim().to_owned(),
            Err(e) => format!("unreadable ({e})"),
        };
        return Err(NetpolError::BridgeHookOff {
            sysctl: key.replace('/', "."),
            found,
        });
    }
    Ok(())
}

const PROC_SYS: &str = "/proc/sys";

fn add(req: &Request) -> Result<CniResult, NetpolError> {
    let prev = req.require_prev_result()?;
    let (namespace, name) = pod_of(req)?;
    let ips = pod_ips(&prev)?;
    bridge_hook_on(Path::new(PROC_SYS), &ips)?;
    open(req)?.attach(PodAttachment {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        namespace,
        name,
        ips,
    })?;
    Ok(prev)
}

fn check(req: &Request) -> Result<(), NetpolError> {
    let prev = req.require_prev_result()?;
    let (namespace, name) = pod_of(req)?;
    let ips = pod_ips(&prev)?;
    bridge_hook_on(Path::new(PROC_SYS), &ips)?;
    let (_, missing) = open(req)?.missing_for(&ips)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(NetpolError::Missing {
        pod: format!("{namespace}/{name}"),
        count: missing.len(),
        list: missing
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

impl Plugin for Netpol {
    fn name(&self) -> &'static str {
        "netpol"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let del = || -> Result<(), NetpolError> {
            Ok(open(req)?.detach(&req.conf.name, &req.container_id, &req.ifname)?)
        };
        Ok(del()?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let gc = || -> Result<(), NetpolError> {
            Ok(open(req)?.gc(&req.conf.name, &req.valid_pairs())?)
        };
        Ok(gc()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `/proc/sys` with the two hooks set to `v4`, `v6` (`None`: no file).
    fn proc_sys(v4: Option<&str>, v6: Option<&str>) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "netpol-hook-{}-{}-{}",
            std::process::id(),
            v4.unwrap_or("none"),
            v6.unwrap_or("none")
        ));
        let bridge = dir.join("net/bridge");
        std::fs::create_dir_all(&bridge).unwrap();
        for (name, v) in [
            ("bridge-nf-call-iptables", v4),
            ("bridge-nf-call-ip6tables", v6),
        ] {
            if let Some(v) = v {
                std::fs::write(bridge.join(name), format!("{v}\n")).unwrap();
            }
        }
        dir
    }

    fn check(v4: Option<&str>, v6: Option<&str>, ips: &[IpAddr]) -> Result<(), NetpolError> {
        let dir = proc_sys(v4, v6);
        let r = bridge_hook_on(&dir, ips);
        std::fs::remove_dir_all(dir).unwrap();
        r
    }

    #[test]
    fn the_bridge_hook_of_each_family_of_the_pod_must_be_on() {
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert!(check(Some("1"), Some("1"), &[v4, v6]).is_ok());
        // Only the families the pod has count.
        assert!(check(Some("1"), Some("0"), &[v4]).is_ok());
        let e = check(Some("1"), Some("0"), &[v4, v6]).unwrap_err();
        assert!(
            e.to_string()
                .contains("net.bridge.bridge-nf-call-ip6tables is 0"),
            "{e}"
        );
        let e = check(Some("0"), Some("1"), &[v4]).unwrap_err();
        assert_eq!(CniError::from(e).code, ErrorCode::Firewall);
        // br_netfilter not loaded: no file.
        let e = check(None, None, &[v6]).unwrap_err();
        assert!(
            e.to_string()
                .contains("net.bridge.bridge-nf-call-ip6tables is unreadable"),
            "{e}"
        );
    }
}
