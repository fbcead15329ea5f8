//! `netpol`: a chained plugin (after `bridge` or `internal-bridge`) that makes the pod's
//! addresses subject to the Kubernetes NetworkPolicies in force on this host before its ADD
//! returns. The pod is named by `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in `CNI_ARGS` (as
//! containerd's CRI passes them); its labels and named ports come from the Pod objects given
//! to `cnirs policy apply`. The ADD records the attachment and applies the compiled elements
//! in one transaction; if that fails the ADD fails (the runtime tears the pod down): a pod a
//! policy isolates never answers success reachable. DEL forgets it (idempotent), CHECK wants
//! every element the policies in force give its addresses, GC forgets attachments the
//! runtime no longer lists. See docs/netpol.md.

use std::net::IpAddr;

use cni_core::{error::from_classified, CniError, CniResult, ErrorCode, Plugin, Request};
use netpol::{PodAttachment, PolicyError, Store};

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
}

impl From<NetpolError> for CniError {
    fn from(e: NetpolError) -> CniError {
        match e {
            NetpolError::Cni(c) => c,
            NetpolError::Policy(PolicyError::Nft(f)) => from_classified(f.class(), &f, None),
            NetpolError::Policy(p @ (PolicyError::Io { .. } | PolicyError::State { .. })) => {
                CniError::new(ErrorCode::Io, p.to_string())
            }
            NetpolError::Policy(p) => CniError::new(ErrorCode::InvalidConfig, p.to_string()),
            m @ NetpolError::Missing { .. } => CniError::new(ErrorCode::Firewall, m.to_string()),
        }
    }
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
            "netpol: prevResult has no ips (chain it after bridge or internal-bridge)",
        ));
    }
    Ok(ips)
}

fn add(req: &Request) -> Result<CniResult, NetpolError> {
    let prev = req.require_prev_result()?;
    let (namespace, name) = pod_of(req)?;
    let ips = pod_ips(&prev)?;
    Store::open()?.attach(PodAttachment {
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
    let (_, missing) = Store::open()?.missing_for(&ips)?;
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
            Ok(Store::open()?.detach(&req.conf.name, &req.container_id, &req.ifname)?)
        };
        Ok(del()?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let gc = || -> Result<(), NetpolError> {
            Ok(Store::open()?.gc(&req.conf.name, &req.valid_pairs())?)
        };
        Ok(gc()?)
    }
}
