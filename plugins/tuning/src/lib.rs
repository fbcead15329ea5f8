//! `tuning`: a drop-in for the reference tuning plugin. Chained after an interface-creating
//! plugin, it sets sysctls inside the pod's netns and link attributes of the pod interface
//! (`mac`, `mtu`, `promisc`, `allmulti`, `txQLen`), saves what it changed and restores it on
//! DEL while the interface exists. Only `net.*` sysctls of the pod's own netns are allowed;
//! an interface-scoped key must name the pod's interface (or `all`/`default`).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use cni_core::{conf::parse_value, gokeys, CniError, CniResult, ErrorCode, Plugin, Request};
use netops::{Kernel, Link, MacAddr, NetNs, NetopsError, SysctlKey};
use serde::{Deserialize, Serialize};

pub struct Tuning;

const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    sysctl: BTreeMap<String, String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default, rename = "txQLen")]
    tx_qlen: Option<u32>,
    #[serde(default)]
    allmulti: Option<bool>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    args: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

/// The validated tuning request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub sysctls: Vec<(SysctlKey, String)>,
    pub mac: Option<MacAddr>,
    pub promisc: Option<bool>,
    pub mtu: Option<u32>,
    pub txqlen: Option<u32>,
    pub allmulti: Option<bool>,
    pub data_dir: PathBuf,
}

/// What the interface had before ADD, in the reference plugin's backup format.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct Backup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allmulti: Option<bool>,
    #[serde(default, rename = "TxQLen", skip_serializing_if = "Option::is_none")]
    txqlen: Option<u32>,
}

/// `net.ipv{4,6}.{conf,neigh}.IF.leaf` name an interface between the third part and the leaf
/// (the name may contain dots: `br.100`).
fn interface_named(parts: &[&str]) -> Option<String> {
    match parts {
        ["net", "ipv4" | "ipv6", "conf" | "neigh", .., _] if parts.len() >= 5 => {
            Some(parts[3..parts.len() - 1].join("."))
        }
        _ => None,
    }
}

pub fn validate_sysctl(key: &str, value: &str, ifname: &str) -> Result<SysctlKey, CniError> {
    let field = format!("sysctl.{key}");
    // The reference accepts '/'-separated keys too; the IFNAME placeholder names the pod's
    // interface.
    let dotted = key.replace('/', ".");
    let parts: Vec<&str> = dotted.split('.').collect();
    let parts: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if *p == "IFNAME" && i == 3 {
                ifname.to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    let joined = parts.join(".");
    let parsed = SysctlKey::parse(&joined).map_err(|e| CniError::config(&field, e))?;
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    if let Some(iface) = interface_named(&refs) {
        if iface != ifname && iface != "all" && iface != "default" {
            return Err(CniError::config(
                &field,
                format!("names interface {iface:?}: only the pod's own interface {ifname:?}, all or default"),
            ));
        }
    }
    if value.contains(['\n', '\0']) || value.len() > 4096 {
        return Err(CniError::config(
            &field,
            "value contains a newline or NUL, or is too long",
        ));
    }
    Ok(parsed)
}

pub fn parse(req: &Request) -> Result<Spec, CniError> {
    let raw: RawConf = req.parse_conf()?;
    let mut sysctls = Vec::new();
    for (k, v) in &raw.sysctl {
        sysctls.push((validate_sysctl(k, v, &req.ifname)?, v.clone()));
    }
    // MAC: conf, then CNI_ARGS MAC, args.cni.mac, runtimeConfig.mac (reference precedence).
    let mut mac: Option<(String, String)> = raw.mac.clone().map(|m| (m, "mac".to_string()));
    if let Some(m) = req.args.get("MAC") {
        mac = Some((m.to_string(), "CNI_ARGS MAC".into()));
    }
    if let Some(m) = raw
        .args
        .as_ref()
        .and_then(|a| gokeys::pointer(a, &["cni", "mac"]))
        .and_then(|v| v.as_str())
    {
        mac = Some((m.to_string(), "args.cni.mac".into()));
    }
    if let Some(rc) = &raw.runtime_config {
        let rc: RuntimeConfig = parse_value(rc, "runtimeConfig")?;
        if let Some(m) = rc.mac {
            mac = Some((m, "runtimeConfig.mac".into()));
        }
    }
    let mac = match mac {
        None => None,
        Some((s, field)) => {
            let m: MacAddr = s
                .parse()
                .map_err(|_| CniError::config(&field, format!("{s:?} is not a MAC address")))?;
            if m.0[0] & 1 == 1 {
                return Err(CniError::config(
                    &field,
                    format!("{s} is a multicast address"),
                ));
            }
            Some(m)
        }
    };
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::config(
                "mtu",
                format!("{mtu} is outside 68..65535"),
            ));
        }
    }
    let data_dir = raw
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(CniError::config("dataDir", "must be an absolute path"));
    }
    Ok(Spec {
        sysctls,
        mac,
        promisc: raw.promisc,
        mtu: raw.mtu,
        txqlen: raw.tx_qlen,
        allmulti: raw.allmulti,
        data_dir,
    })
}

fn backup_path(data_dir: &Path, req: &Request) -> PathBuf {
    // container id and ifname are validated (no '/', no '..') by cni-core.
    data_dir.join(format!("{}-{}.json", req.container_id, req.ifname))
}

/// Where the backups live, read leniently: DEL must work on a config its ADD refused (a bad
/// sysctl key), or the runtime's cleanup stops here and the interface below leaks.
fn lenient_data_dir(req: &Request) -> PathBuf {
    serde_json::from_slice::<serde_json::Value>(&req.stdin)
        .ok()
        .and_then(|v| {
            gokeys::pointer(&v, &["dataDir"])
                .and_then(|d| d.as_str())
                .map(PathBuf::from)
        })
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

fn save_backup(path: &Path, b: &Backup) -> Result<(), CniError> {
    if path.exists() {
        return Ok(()); // a repeated ADD keeps the original values
    }
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CniError::io(format!("creating {}", dir.display()), &e))?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(b).map_err(|e| CniError::new(ErrorCode::Io, e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| CniError::io(format!("writing {}", path.display()), &e))
}

cni_core::plugin_error! {
    /// The plugin's errors, each with its cause; CNI codes are chosen once, by the macro's
    /// `From<TuningError> for CniError`.
    pub enum TuningError {
        Kernel(NetopsError),
    }
}

fn mac_of(l: &Link) -> String {
    l.mac.map(|m| m.to_string()).unwrap_or_default()
}

fn apply(spec: &Spec, req: &Request) -> Result<Link, TuningError> {
    let ns = NetNs::open(req.netns()?)?;
    for (k, v) in &spec.sysctls {
        netops::sysctl::write_in(&ns, k, v)?;
    }
    let kernel = Kernel::new()?;
    let pod = kernel.pod(&ns)?;
    let link = pod.require_link(&req.ifname)?;
    save_backup(
        &backup_path(&spec.data_dir, req),
        &Backup {
            mac: spec.mac.map(|_| mac_of(&link)),
            promisc: spec.promisc.map(|_| link.promisc),
            mtu: spec.mtu.map(|_| link.mtu),
            allmulti: spec.allmulti.map(|_| link.allmulti),
            txqlen: spec.txqlen.map(|_| link.txqlen),
        },
    )?;
    set_link(
        &pod,
        &link,
        spec.mac,
        spec.mtu,
        spec.promisc,
        spec.allmulti,
        spec.txqlen,
    )?;
    Ok(pod.require_link(&req.ifname)?)
}

fn set_link(
    pod: &netops::Netlink<'_>,
    link: &Link,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
    promisc: Option<bool>,
    allmulti: Option<bool>,
    txqlen: Option<u32>,
) -> Result<(), NetopsError> {
    if let Some(m) = mac {
        pod.set_mac(link, m)?;
    }
    if let Some(m) = mtu {
        pod.set_mtu(link, m)?;
    }
    if let Some(p) = promisc {
        pod.set_promisc(link, p)?;
    }
    if let Some(a) = allmulti {
        pod.set_allmulti(link, a)?;
    }
    if let Some(q) = txqlen {
        pod.set_txqlen(link, q)?;
    }
    Ok(())
}

impl Plugin for Tuning {
    fn name(&self) -> &'static str {
        "tuning"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["MAC"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Ok(del(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Ok(check(req)?)
    }
}

fn add(req: &Request) -> Result<CniResult, TuningError> {
    {
        let spec = parse(req)?;
        let mut prev = req.require_prev_result()?;
        let link = apply(&spec, req)?;
        // Chained: pass the previous result on, with the pod interface's new MAC and MTU.
        if let Some(i) = prev.sandbox_interface(&req.ifname) {
            prev.interfaces[i].mac = mac_of(&link);
            if prev.interfaces[i].mtu.is_some() || spec.mtu.is_some() {
                prev.interfaces[i].mtu = Some(link.mtu);
            }
        }
        Ok(prev)
    }
}

fn del(req: &Request) -> Result<(), TuningError> {
    {
        let data_dir = match parse(req) {
            Ok(spec) => spec.data_dir,
            Err(e) => {
                log::info!(
                    "{}: DEL with a config ADD would refuse ({e}); restoring anyway",
                    req.tag()
                );
                lenient_data_dir(req)
            }
        };
        let path = backup_path(&data_dir, req);
        let backup: Option<Backup> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(_) => None,
        };
        if let (Some(b), Some(nspath)) = (&backup, &req.netns) {
            match NetNs::open(nspath) {
                Ok(ns) => {
                    let kernel = Kernel::new()?;
                    let pod = kernel.pod(&ns)?;
                    if let Some(link) = pod.link(&req.ifname)? {
                        let mac = b.mac.as_deref().and_then(|m| m.parse().ok());
                        set_link(&pod, &link, mac, b.mtu, b.promisc, b.allmulti, b.txqlen)?;
                    }
                }
                Err(NetopsError::NetnsNotFound { .. } | NetopsError::NotANetns { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io(format!("removing {}", path.display()), &e).into())
            }
            _ => Ok(()),
        }
    }
}

fn check(req: &Request) -> Result<(), TuningError> {
    {
        let spec = parse(req)?;
        req.require_prev_result()?;
        let ns = NetNs::open(req.netns()?)?;
        let differs = |what: &str, want: String, have: String| {
            TuningError::from(CniError::new(
                ErrorCode::CheckFailed,
                format!("{what} of {} is {have}, tuning set {want}", req.ifname),
            ))
        };
        for (k, v) in &spec.sysctls {
            let have = netops::sysctl::read_in(&ns, k)?;
            if have.trim() != v.trim() {
                return Err(differs(
                    &format!("sysctl {k}"),
                    v.clone(),
                    have.trim().to_string(),
                ));
            }
        }
        let kernel = Kernel::new()?;
        let link = kernel.pod(&ns)?.require_link(&req.ifname)?;
        if let Some(m) = spec.mac {
            if link.mac != Some(m) {
                return Err(differs("MAC", m.to_string(), mac_of(&link)));
            }
        }
        if let Some(m) = spec.mtu.filter(|m| *m != link.mtu) {
            return Err(differs("MTU", m.to_string(), link.mtu.to_string()));
        }
        if let Some(p) = spec.promisc.filter(|p| *p != link.promisc) {
            return Err(differs("promisc", p.to_string(), link.promisc.to_string()));
        }
        if let Some(a) = spec.allmulti.filter(|a| *a != link.allmulti) {
            return Err(differs(
                "allmulti",
                a.to_string(),
                link.allmulti.to_string(),
            ));
        }
        if let Some(q) = spec.txqlen.filter(|q| *q != link.txqlen) {
            return Err(differs("txQLen", q.to_string(), link.txqlen.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
