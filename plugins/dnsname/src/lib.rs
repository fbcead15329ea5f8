//! `dnsname`: containers of one network resolve each other by name.
//!
//! Chained after `bridge` or `internal-bridge`, with the keys of podman's dnsname plugin
//! (`domainName`, capability `aliases`). ADD records the container's name (`K8S_POD_NAME` in
//! `CNI_ARGS`, as podman and CRI runtimes pass it; none: no name of its own) and its aliases (`runtimeConfig.aliases[<network>]`) with
//! the pod's addresses, makes sure the network's resolver runs on the gateway (see
//! [`serve`]), and adds the gateway as `dns.nameservers` and `domainName` as `dns.search` to
//! the result. DEL removes the entry (the last one stops the resolver), GC drops the entries
//! of attachments that are gone, CHECK verifies the entry and that the resolver is up.

pub mod daemon;
pub mod forward;
pub mod names;
pub mod serve;
pub mod store;
pub mod wire;
pub mod zone;

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use cni_core::{CniError, CniResult, ErrorCode, Plugin, Request};
use serde::Deserialize;

use crate::store::{DaemonConfig, Entry, NetDir};

/// podman's default `domainName`.
pub const DEFAULT_DOMAIN: &str = "dns.podman";

/// Where the upstream resolvers are read (`CNIRS_DNS_RESOLV_CONF` overrides it: tests).
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

pub struct DnsName;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    domain_name: Option<String>,
    /// Forward other names to the host's resolvers (default true). `false` for an
    /// internal network: its pods then cannot use DNS as a way out.
    forward: Option<bool>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    /// network name -> aliases of this container on it (podman's `--network-alias`).
    #[serde(default)]
    aliases: HashMap<String, Vec<String>>,
}

/// Everything ADD and CHECK need, validated before the first side effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub network: String,
    pub domain: String,
    pub entry: Entry,
    pub bridge: String,
    pub gateways: Vec<IpAddr>,
    pub forward: bool,
}

/// `domainName`, defaulting to podman's, as a validated lower-case name.
fn domain_of(conf: &Conf) -> Result<String, CniError> {
    let d = conf.domain_name.as_deref().unwrap_or(DEFAULT_DOMAIN);
    names::name(d).map_err(|e| CniError::config("domainName", e))
}

impl Spec {
    pub fn from_request(req: &Request) -> Result<Self, CniError> {
        let conf: Conf = req.parse_conf()?;
        let domain = domain_of(&conf)?;
        // Without a name (a runtime that passes none, e.g. nerdctl) the pod still gets the
        // resolver, and answers to its aliases only.
        let name = match req.args.get("K8S_POD_NAME") {
            None | Some("") => String::new(),
            Some(raw) => {
                names::label(raw).map_err(|e| CniError::config("CNI_ARGS K8S_POD_NAME", e))?
            }
        };
        let mut aliases = Vec::new();
        if let Some(list) = conf.runtime_config.aliases.get(&req.conf.name) {
            for (i, a) in list.iter().enumerate() {
                let a = names::name(a).map_err(|e| {
                    CniError::config(&format!("runtimeConfig.aliases.{}[{i}]", req.conf.name), e)
                })?;
                if a != name && !aliases.contains(&a) {
                    aliases.push(a);
                }
            }
        }
        let prev = req.require_prev_result()?;
        let bridge = prev
            .interfaces
            .iter()
            .find(|i| i.sandbox.is_empty())
            .map(|i| i.name.clone())
            .ok_or_else(|| {
                CniError::config(
                    "prevResult.interfaces",
                    "no host-side interface: dnsname must follow bridge or internal-bridge",
                )
            })?;
        let mut gateways: Vec<IpAddr> = Vec::new();
        for g in prev.ips.iter().filter_map(|ip| ip.gateway) {
            if !gateways.contains(&g) {
                gateways.push(g);
            }
        }
        if gateways.is_empty() {
            return Err(CniError::config(
                "prevResult.ips",
                "no gateway: the resolver listens on the network's gateway (set isGateway on the bridge)",
            ));
        }
        let ips: Vec<IpAddr> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
        Ok(Self {
            network: req.conf.name.clone(),
            domain,
            entry: Entry {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                name,
                aliases,
                ips,
            },
            bridge,
            gateways,
            forward: conf.forward.unwrap_or(true),
        })
    }

    pub fn daemon_config(&self) -> DaemonConfig {
        let resolv_conf = std::env::var_os("CNIRS_DNS_RESOLV_CONF")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLV_CONF));
        let mut listen = self.gateways.clone();
        listen.sort();
        DaemonConfig {
            network: self.network.clone(),
            domain: self.domain.clone(),
            listen,
            port: 53,
            device: Some(self.bridge.clone()),
            resolv_conf,
            forward: self.forward,
        }
    }

    /// `prev` with our nameservers first and our search domain first.
    pub fn result(&self, mut prev: CniResult) -> CniResult {
        let mut ns: Vec<String> = self.gateways.iter().map(IpAddr::to_string).collect();
        ns.extend(
            prev.dns
                .nameservers
                .iter()
                .filter(|n| !ns.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        prev.dns.nameservers = ns;
        prev.dns.search.retain(|s| *s != self.domain);
        prev.dns.search.insert(0, self.domain.clone());
        prev
    }
}

fn check_failed(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, msg)
}

impl Plugin for DnsName {
    fn name(&self) -> &'static str {
        "dnsname"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let spec = Spec::from_request(req)?;
        let prev = req.require_prev_result()?;
        let dir = NetDir::for_network(&spec.network)?;
        let _lock = dir.lock(true)?;
        let before = dir.entries()?;
        let mut entries = before.clone();
        entries.upsert(spec.entry.clone());
        dir.write_entries(&entries)?;
        if let Err(e) = daemon::ensure(&dir, &spec.daemon_config()) {
            // Undo: the entry goes (and the directory, if this was the network's first).
            let undo = if before.entries.is_empty() {
                daemon::stop(&dir).and_then(|()| dir.remove())
            } else {
                dir.write_entries(&before)
            };
            if let Err(u) = undo {
                log::error!("{}: undoing the entry: {u}", req.tag());
            }
            return Err(e);
        }
        Ok(spec.result(prev))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let dir = NetDir::for_network(&req.conf.name)?;
        let Some(_lock) = dir.lock(false)? else {
            return Ok(());
        };
        let mut entries = dir.entries()?;
        entries.remove(&req.container_id, &req.ifname);
        settle(&dir, &entries)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let spec = Spec::from_request(req)?;
        let dir = NetDir::for_network(&spec.network)?;
        let Some(_lock) = dir.lock(false)? else {
            return Err(check_failed(format!(
                "dnsname: network {} has no names",
                spec.network
            )));
        };
        let entries = dir.entries()?;
        match entries.find(&req.container_id, &req.ifname) {
            Some(e) if *e == spec.entry => {}
            Some(e) => {
                return Err(check_failed(format!(
                    "dnsname: {} is recorded as {:?} {:?} {:?}, expected {:?} {:?} {:?}",
                    req.tag(),
                    e.name,
                    e.aliases,
                    e.ips,
                    spec.entry.name,
                    spec.entry.aliases,
                    spec.entry.ips
                )))
            }
            None => {
                return Err(check_failed(format!(
                    "dnsname: no name recorded for {}",
                    req.tag()
                )))
            }
        }
        if daemon::running(&dir)?.is_none() {
            return Err(check_failed(format!(
                "dnsname: the resolver of network {} is not running",
                spec.network
            )));
        }
        if dir.config()? != Some(spec.daemon_config()) {
            return Err(check_failed(format!(
                "dnsname: the resolver of network {} runs with another config",
                spec.network
            )));
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let dir = NetDir::for_network(&req.conf.name)?;
        let Some(_lock) = dir.lock(false)? else {
            return Ok(());
        };
        let mut entries = dir.entries()?;
        let gone = entries.retain_valid(req.valid_attachments());
        log::info!("{}: GC dropped {gone} names", req.conf.name);
        settle(&dir, &entries)
    }
}

/// After DEL or GC: no entries left -> stop the resolver and remove the directory; else write
/// them and tell the resolver.
fn settle(dir: &NetDir, entries: &store::Entries) -> Result<(), CniError> {
    if entries.entries.is_empty() {
        daemon::stop(dir)?;
        return dir.remove();
    }
    dir.write_entries(entries)?;
    if let Some(pid) = daemon::running(dir)? {
        daemon::hup(pid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
