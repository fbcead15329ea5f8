//! etcd-ipam: host-local's `ranges`/`routes`, with addresses unique across a cluster through
//! etcd (`etcdEndpoints`, `etcdPrefix`). Keys (see ETCD-SCHEMA / README):
//!
//! ```text
//! <prefix>/ipam/<network>/blocks/<cidr with / as _>   {"node"}                      claimed once per node
//! <prefix>/ipam/<network>/ips/<ip>                    {"node","containerId","ifname"}
//! ```
//!
//! - [`config`]: the `ipam` section (host-local's parser plus the etcd keys);
//! - [`alloc`]: blocks, addresses, the dead-node rule, over a [`store::Store`];
//! - [`store`]: the store trait, implemented by `etcd::Client` and an in-memory fake.

pub mod alloc;
pub mod config;
pub mod error;
pub mod store;

use std::net::IpAddr;

use cni_core::{CniError, CniResult, ErrorCode, IpConfig, Plugin, Request};
use ipnetwork::IpNetwork;

pub use crate::alloc::{reclaim_dead_nodes, Keys, Reclaimed};
use crate::{
    alloc::{Allocator, Got, View},
    config::Config,
    error::Error,
    store::Store,
};

/// The env var naming this node (tests set one per simulated host); else the hostname.
pub const NODE_ENV: &str = "CNIRS_NODE_NAME";

/// This node's name: `CNIRS_NODE_NAME` if set and non-empty, else the hostname.
pub fn node_name(env_value: Option<String>) -> String {
    env_value
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// The plugin, for `cni_core::skel::run`.
#[derive(Debug, Clone)]
pub struct EtcdIpam {
    pub node: String,
    pub options: etcd::Options,
}

impl EtcdIpam {
    /// Node name from the environment ([`NODE_ENV`], else the hostname), default timeouts.
    pub fn from_env() -> Self {
        EtcdIpam {
            node: node_name(std::env::var(NODE_ENV).ok()),
            options: etcd::Options::default(),
        }
    }

    fn node(&self) -> Result<&str, CniError> {
        if self.node.contains('/') {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("{NODE_ENV}={:?}: a node name cannot contain '/'", self.node),
            ));
        }
        Ok(&self.node)
    }

    fn open(&self, req: &Request) -> Result<(Config, etcd::Client), CniError> {
        let cfg = config::parse(req)?;
        let opts = etcd::Options {
            tls: cfg.tls.clone(),
            ..self.options.clone()
        };
        let client = etcd::Client::with_options(&cfg.endpoints, opts)
            .map_err(|e| CniError::config("ipam.etcdEndpoints", e))?;
        Ok((cfg, client))
    }
}

fn allocator<'a>(store: &'a dyn Store, cfg: &Config, node: &'a str) -> Allocator<'a> {
    Allocator {
        store,
        keys: Keys::new(&cfg.network_prefix()),
        node,
        hosts_prefix: cfg.hosts_prefix(),
    }
}

/// ADD: one address per range set; on failure, releases what this call created.
pub fn add(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<Got>, CniError> {
    let requested = cfg.ipam.requested_per_set()?;
    let a = allocator(store, cfg, node);
    let mut view = View::read(store, &a.keys).map_err(Error::from)?;
    let mut got: Vec<Got> = Vec::new();
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        let res = a
            .allocate_or_reclaim(&mut view, set, id, ifname, requested[index])
            .and_then(|g| {
                g.ok_or_else(|| Error::Exhausted {
                    network: cfg.network.clone(),
                    index,
                    ranges: set.to_string(),
                })
            });
        match res {
            Ok(g) => got.push(g),
            Err(e) => {
                for g in &got {
                    if let Some(rev) = g.fresh {
                        if let Err(re) = store.delete_if(&a.keys.ip(g.ip), rev) {
                            log::warn!("rolling back {}: {re}", g.ip);
                        }
                    }
                }
                return Err(e.into());
            }
        }
    }
    Ok(got)
}

/// DEL: releases every address (id, ifname) holds in the network. Idempotent.
pub fn del(
    store: &dyn Store,
    cfg: &Config,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, CniError> {
    let keys = Keys::new(&cfg.network_prefix());
    let view = View::read(store, &keys).map_err(Error::from)?;
    let mut released = Vec::new();
    for (ip, (rec, rev)) in &view.ips {
        if rec.is(id, ifname) && store.delete_if(&keys.ip(*ip), *rev).map_err(Error::from)? {
            released.push(*ip);
        }
    }
    Ok(released)
}

/// CHECK: (id, ifname) holds an address in every range set.
pub fn check(store: &dyn Store, cfg: &Config, id: &str, ifname: &str) -> Result<(), CniError> {
    let keys = Keys::new(&cfg.network_prefix());
    let view = View::read(store, &keys).map_err(Error::from)?;
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        if view.held_by(set, id, ifname).is_none() {
            return Err(Error::NotHeld {
                container: id.into(),
                ifname: ifname.into(),
                network: cfg.network.clone(),
                index,
                ranges: set.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// GC: releases this node's addresses whose attachment is not in `valid`, then this node's
/// blocks that hold no address any more (a later ADD claims again).
pub fn gc(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    valid: &[cni_core::Attachment],
) -> Result<Vec<IpAddr>, CniError> {
    let keys = Keys::new(&cfg.network_prefix());
    let mut view = View::read(store, &keys).map_err(Error::from)?;
    let mut released = Vec::new();
    for (ip, (rec, rev)) in &view.ips {
        let is_valid = valid.iter().any(|a| rec.is(&a.container_id, &a.ifname));
        if rec.node == node
            && !is_valid
            && store.delete_if(&keys.ip(*ip), *rev).map_err(Error::from)?
        {
            released.push(*ip);
        }
    }
    for ip in &released {
        view.ips.remove(ip);
    }
    let empty: Vec<(IpNetwork, i64)> = view
        .blocks
        .iter()
        .filter(|(b, (n, _))| n == node && !view.ips.keys().any(|ip| b.contains(*ip)))
        .map(|(b, (_, rev))| (*b, *rev))
        .collect();
    for (b, rev) in empty {
        store.delete_if(&keys.block(b), rev).map_err(Error::from)?;
    }
    Ok(released)
}

/// STATUS: etcd answers and every range set has a free address.
pub fn status(store: &dyn Store, cfg: &Config) -> Result<(), CniError> {
    let keys = Keys::new(&cfg.network_prefix());
    let view = View::read(store, &keys)
        .map_err(|e| CniError::new(ErrorCode::NotAvailable, e.to_string()))?;
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        let held = view
            .ips
            .keys()
            .filter(|ip| set.is_allocatable(**ip))
            .count() as u128;
        if set.capacity() <= held {
            return Err(CniError::new(
                ErrorCode::NotAvailable,
                format!(
                    "no IP addresses available in range set {index} ({set}) of network {}",
                    cfg.network
                ),
            ));
        }
    }
    Ok(())
}

impl Plugin for EtcdIpam {
    fn name(&self) -> &'static str {
        "etcd-ipam"
    }

    fn known_args(&self) -> &'static [&'static str] {
        &["IP"]
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let node = self.node()?;
        let (cfg, client) = self.open(req)?;
        let dns = match &cfg.ipam.resolv_conf {
            Some(p) => host_local::config::read_resolv_conf(p)?,
            None => Default::default(),
        };
        let got = add(&client, &cfg, node, &req.container_id, &req.ifname)?;
        let mut ips = Vec::with_capacity(got.len());
        for g in &got {
            let address =
                IpNetwork::new(g.ip, g.prefix).map_err(|e| CniError::config("ipam.ranges", e))?;
            ips.push(IpConfig {
                address,
                gateway: Some(g.gateway),
                interface: None,
            });
        }
        log::info!(
            "{} on {node}: {}",
            req.tag(),
            ips.iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: cfg.ipam.routes,
            dns,
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, client) = self.open(req)?;
        let released = del(&client, &cfg, &req.container_id, &req.ifname)?;
        log::info!("{}: released {released:?}", req.tag());
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, client) = self.open(req)?;
        check(&client, &cfg, &req.container_id, &req.ifname)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let node = self.node()?;
        let (cfg, client) = self.open(req)?;
        let released = gc(&client, &cfg, node, req.valid_attachments())?;
        if !released.is_empty() {
            log::info!("GC {} on {node}: released {released:?}", cfg.network);
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let (cfg, client) = self.open(req)?;
        status(&client, &cfg)
    }
}

#[cfg(test)]
mod tests;
