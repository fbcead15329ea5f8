//! etcd-ipam: host-local's `ranges`/`routes`, with addresses unique across a cluster: etcd
//! (`etcdEndpoints`, `etcdPrefix`) hands out blocks to nodes, each node hands out the addresses
//! of its own blocks on its host. Keys (crates/cluster, docs/DESIGN-etcd-ipam.md):
//!
//! ```text
//! <prefix>/blocks/<network>/<cidr>                   {"node"}                 a node's block (the agents watch these)
//! <prefix>/ipam/<network>/nodes/<node>/<cidr>        {}                       the same, under the node
//! ```
//!
//! and on each host, under `$CNIRS_RUN_DIR/cluster/<prefix>/<node>/ipam/<network>/`, its
//! leases (host-local's files) and the blocks it claimed ([`local`]).
//!
//! - [`config`]: the `ipam` section (host-local's keys through crates/ipamconf, plus etcd's);
//! - [`alloc`]: blocks, addresses, the dead-node rule, over a [`store::Store`] and [`local`];
//! - [`store`]: the store trait, implemented by `etcd::Client` and an in-memory fake.

pub mod alloc;
pub mod config;
pub mod error;
pub mod local;
/// The store trait and its in-memory fake (crates/etcd).
pub use etcd::store;

use std::net::IpAddr;

use cni_core::{CniError, CniResult, ErrorCode, IpConfig, Plugin, Request};
use etcd::TxnResponse;
use ipnetwork::IpNetwork;

pub use crate::alloc::{reclaim_dead_nodes, Got, NodeView, Reclaimed};
use crate::{alloc::Allocator, config::Config, error::Error, local::Local, store::Store};

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
    /// Root of the host's state ([`Config::run_dir`]): `$CNIRS_RUN_DIR` for the plugin.
    pub run_dir: std::path::PathBuf,
}

impl EtcdIpam {
    /// Node name from the environment ([`NODE_ENV`], else the hostname), default timeouts.
    pub fn from_env() -> Self {
        EtcdIpam {
            node: node_name(std::env::var(NODE_ENV).ok()),
            options: etcd::Options::default(),
            run_dir: cluster::node_state::run_root(),
        }
    }

    /// The config, its host state under [`Self::run_dir`]; the TLS files read when `tls`.
    fn config(&self, req: &Request, tls: bool) -> Result<Config, CniError> {
        let mut cfg = match tls {
            true => config::parse(req)?,
            false => config::parse_without_tls(req)?,
        };
        cfg.run_dir.clone_from(&self.run_dir);
        Ok(cfg)
    }

    fn node(&self) -> Result<&str, CniError> {
        // It names a key component in etcd and this host's directory of leases.
        if !cni_core::conf::is_safe_name(&self.node) {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "{NODE_ENV}={:?}: a node name is letters, digits, '_', '.' and '-', \
                     starting with a letter or digit",
                    self.node
                ),
            ));
        }
        Ok(&self.node)
    }

    fn open(&self, req: &Request) -> Result<(Config, etcd::Client), CniError> {
        let cfg = self.config(req, true)?;
        let opts = etcd::Options {
            tls: cfg.tls.clone(),
            ..self.options.clone()
        };
        let client = etcd::Client::with_options(&cfg.endpoints, opts)
            .map_err(|e| CniError::config("ipam.etcdEndpoints", e))?;
        Ok((cfg, client))
    }
}

/// The operations of [`Allocator::read`] (`node`'s blocks), for a caller that folds them into
/// its own read transaction and hands the answers to [`Allocator::view`].
pub fn read_ops(keys: &cluster::ipam::Keys, node: &str) -> Vec<etcd::Op> {
    vec![etcd::Op::get_prefix(keys.node_blocks(node))]
}

/// What an ADD's caller read ahead of it: the answers to [`read_ops`], or the blocks of the
/// agent's file ([`cluster::node_state`]).
#[derive(Debug, Clone)]
pub enum Ahead {
    Etcd(TxnResponse),
    Agent(std::collections::BTreeSet<IpNetwork>),
}

fn allocator<'a>(store: &'a dyn Store, cfg: &Config, node: &'a str) -> Allocator<'a> {
    Allocator {
        store,
        keys: cluster::ipam::Keys::new(&cfg.network_prefix()),
        prefix: cfg.prefix.clone(),
        network: cfg.network.clone(),
        node,
    }
}

/// ADD: one address per range set, in this node's blocks, on this host's leases (one etcd
/// read, and a block claim when the node's blocks are full). When a range set has nothing
/// left, dead nodes' blocks are reclaimed ([`reclaim_dead_nodes`]) and the ADD tries once more.
pub fn add(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<Got>, CniError> {
    add_from(store, cfg, node, id, ifname, None)
}

/// [`add`], starting from what the caller read ahead ([`EtcdIpam::add_reads`], or the agent's
/// file): no etcd read when it suffices.
fn add_from(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
    ahead: Option<&Ahead>,
) -> Result<Vec<Got>, CniError> {
    let requested = cfg.ipam.requested_per_set()?;
    let a = allocator(store, cfg, node);
    let sets = &cfg.ipam.range_sets;
    // Read before the host's lock is taken (etcd down: nothing created on the host); a view
    // grown old meanwhile only proposes (see `Allocator::allocate`).
    let first = match ahead {
        Some(Ahead::Etcd(r)) => a.view(r),
        Some(Ahead::Agent(blocks)) => NodeView::from_agent(blocks),
        None => a.read().map_err(Error::from)?,
    };
    let mut local = Local::open(cfg, node)?;
    let mut result = a.allocate(sets, id, ifname, &requested, Some(first), &mut local)?;
    if result.is_err() {
        let r = reclaim_dead_nodes(store, &cfg.prefix, &cfg.network, node).map_err(Error::from)?;
        if !r.blocks.is_empty() {
            log::warn!(
                "range full: reclaimed blocks {:?} ({} addresses) of dead nodes {:?}",
                r.blocks,
                r.ips.len(),
                r.nodes
            );
            result = a.allocate(sets, id, ifname, &requested, None, &mut local)?;
        }
    }
    match result {
        Ok(got) => Ok(got),
        Err(index) => Err(Error::from(ipamconf::Exhausted {
            network: cfg.network.clone(),
            index,
            ranges: sets[index].to_string(),
        })
        .into()),
    }
}

/// DEL: releases every address (id, ifname) holds in the network on this host. Idempotent;
/// no etcd call (the block stays the node's: a pod that comes back soon costs no claim).
pub fn del(cfg: &Config, node: &str, id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
    match Local::open_existing(cfg, node)? {
        Some(mut l) => Ok(l.release(id, ifname)?),
        None => Ok(Vec::new()),
    }
}

/// CHECK: (id, ifname) holds an address in every range set on this host, each in a block
/// that etcd still says is this node's.
pub fn check(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, CniError> {
    let not_held = |index: usize| Error::NotHeld {
        container: id.into(),
        ifname: ifname.into(),
        network: cfg.network.clone(),
        index,
        ranges: cfg.ipam.range_sets[index].to_string(),
    };
    let held = match Local::open_existing(cfg, node)? {
        Some(l) => l.held(id, ifname),
        None => Vec::new(),
    };
    let v = allocator(store, cfg, node).read().map_err(Error::from)?;
    let mut out = Vec::new();
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        let ip = *held
            .iter()
            .find(|ip| set.contains(**ip))
            .ok_or_else(|| not_held(index))?;
        if !v.blocks.keys().any(|b| b.contains(ip)) {
            return Err(Error::Stale {
                what: format!(
                    "{id}/{ifname} holds {ip} on this host, but no block of node {node} in etcd \
                     holds it (released, or reclaimed from a node judged dead)"
                ),
            }
            .into());
        }
        out.push(ip);
    }
    Ok(out)
}

/// GC: releases this host's addresses whose attachment is not in `valid`, then gives back
/// this node's blocks that hold no address any more (a later ADD claims again). Goes on past
/// failures.
pub fn gc(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    valid: &[cni_core::Attachment],
) -> Result<Vec<IpAddr>, CniError> {
    let Some(mut local) = Local::open_existing(cfg, node)? else {
        return Ok(Vec::new());
    };
    let mut released = Vec::new();
    let mut errors = Vec::new();
    for (ip, owner) in local.leases() {
        let ifname = owner.ifname.as_deref().unwrap_or_default();
        if valid
            .iter()
            .any(|v| v.container_id == owner.container_id && v.ifname == ifname)
        {
            continue;
        }
        match local.release_ip(ip) {
            Ok(()) => released.push(ip),
            Err(e) => errors.push(CniError::from(e)),
        }
    }
    // Without a record of its blocks the host cannot tell an empty block from one whose
    // addresses the old layout kept in etcd: it gives nothing back.
    if local.blocks().is_some() {
        if let Err(e) = allocator(store, cfg, node).release_empty_blocks(&mut local) {
            errors.push(e.into());
        }
    }
    cni_core::error::combine(errors)?;
    Ok(released)
}

/// STATUS: etcd answers, and every range set has a free address in this node's blocks or a
/// block left to claim.
pub fn status(store: &dyn Store, cfg: &Config, node: &str) -> Result<(), CniError> {
    let unavailable = |e: String| CniError::new(ErrorCode::NotAvailable, e);
    let a = allocator(store, cfg, node);
    let v = a.read().map_err(|e| unavailable(e.to_string()))?;
    let taken = match Local::open_existing(cfg, node) {
        Ok(Some(l)) => l.taken(),
        Ok(None) => Default::default(),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let (blocks, _) = store
        .list(&cluster::schema::network_blocks_prefix(
            &cfg.prefix,
            &cfg.network,
        ))
        .map_err(|e| unavailable(e.to_string()))?;
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        let own_free = v.blocks.keys().any(|b| {
            alloc::addresses_in_block(set, *b)
                .iter()
                .any(|ip| !taken.contains(ip) && !v.legacy.contains_key(ip))
        });
        let claimed = blocks
            .iter()
            .filter_map(|kv| {
                cluster::schema::parse_cidr_key(kv.key_str().rsplit('/').next().unwrap_or_default())
            })
            .filter(|b| set.0.iter().any(|r| r.subnet.contains(b.network())))
            .count() as u128;
        let total = alloc::block_count(set);
        if !own_free && claimed >= total {
            return Err(unavailable(format!(
                "no IP addresses available in range set {index} ({set}) of network {}",
                cfg.network
            )));
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
        let (cfg, client) = self.open(req)?;
        self.add_with(req, &cfg, &client, None)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        // No etcd call: the TLS keys are not read (a DEL goes on when they are broken).
        let cfg = self.config(req, false)?;
        self.del_with(req, &cfg)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let node = self.node()?;
        let (cfg, client) = self.open(req)?;
        check(&client, &cfg, node, &req.container_id, &req.ifname).map(drop)
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
        let node = self.node()?;
        let (cfg, client) = self.open(req)?;
        status(&client, &cfg, node)
    }
}

impl EtcdIpam {
    /// The reads an ADD of `req` starts with (this node's blocks), for a caller that folds
    /// them into its own read transaction: the overlay's preflight, one round trip less per
    /// ADD. Their answers go to [`Self::run_with`] as [`Ahead::Etcd`].
    pub fn add_reads(&self, req: &Request) -> Result<Vec<etcd::Op>, CniError> {
        let cfg = config::parse_without_tls(req)?;
        let keys = cluster::ipam::Keys::new(&cfg.network_prefix());
        Ok(read_ops(&keys, self.node()?))
    }

    /// ADD, DEL or CHECK over a store the caller already holds: the overlay plugin runs
    /// etcd-ipam in its own process over its own etcd connection (one TLS handshake per ADD,
    /// not two; the overlay takes no other IPAM; its config checked the TLS keys, so they are
    /// not read again here). The same steps and answers as the plugin's. `ahead`: for ADD,
    /// this node's blocks as the caller read them ([`Ahead`]): no read of its own when they
    /// do.
    pub fn run_with(
        &self,
        req: &Request,
        cmd: cni_core::Command,
        store: &dyn Store,
        ahead: Option<&Ahead>,
    ) -> Result<Option<CniResult>, CniError> {
        let cfg = self.config(req, false)?;
        match cmd {
            cni_core::Command::Add => self.add_with(req, &cfg, store, ahead).map(Some),
            cni_core::Command::Del => self.del_with(req, &cfg).map(|()| None),
            cni_core::Command::Check => {
                check(store, &cfg, self.node()?, &req.container_id, &req.ifname).map(|_| None)
            }
            other => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("etcd-ipam in process: {other:?} is not run this way"),
            )),
        }
    }

    fn del_with(&self, req: &Request, cfg: &Config) -> Result<(), CniError> {
        let released = del(cfg, self.node()?, &req.container_id, &req.ifname)?;
        log::info!("{}: released {released:?}", req.tag());
        Ok(())
    }

    fn add_with(
        &self,
        req: &Request,
        cfg: &Config,
        store: &dyn Store,
        ahead: Option<&Ahead>,
    ) -> Result<CniResult, CniError> {
        let node = self.node()?;
        let dns = match &cfg.ipam.resolv_conf {
            Some(p) => ipamconf::config::read_resolv_conf(p)?,
            None => Default::default(),
        };
        let got = add_from(store, cfg, node, &req.container_id, &req.ifname, ahead)?;
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
        let label = format!("{} on {node}", req.tag());
        Ok(ipamconf::result(&label, ips, cfg.ipam.routes.clone(), dns))
    }
}

#[cfg(test)]
mod tests;
