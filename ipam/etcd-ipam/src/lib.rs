//! etcd-ipam: host-local's `ranges`/`routes`, with addresses unique across a cluster through
//! etcd (`etcdEndpoints`, `etcdPrefix`), handed out from blocks that belong to nodes. Keys
//! (crates/cluster, docs/DESIGN-etcd-ipam.md):
//!
//! ```text
//! <prefix>/blocks/<network>/<cidr>                   {"node"}                 a node's block (the agents watch these)
//! <prefix>/ipam/<network>/nodes/<node>/<cidr>        {}                       the same, under the node
//! <prefix>/ipam/<network>/nodes/<node>/<cidr>/<ip>   {"containerId","ifname"} an address held
//! <prefix>/ipam/<network>/att/<id>/<ifname>          {"node","ips"}           what an attachment holds
//! ```
//!
//! - [`config`]: the `ipam` section (host-local's keys through crates/ipamconf, plus etcd's);
//! - [`alloc`]: blocks, addresses, the dead-node rule, over a [`store::Store`];
//! - [`store`]: the store trait, implemented by `etcd::Client` and an in-memory fake.

pub mod alloc;
pub mod config;
pub mod error;
/// The store trait and its in-memory fake (crates/etcd).
pub use etcd::store;

use std::net::IpAddr;

use cni_core::{CniError, CniResult, ErrorCode, IpConfig, Plugin, Request};
use etcd::TxnResponse;
use ipnetwork::IpNetwork;

pub use crate::alloc::{reclaim_dead_nodes, Got, Reclaimed};
use crate::{alloc::Allocator, config::Config, error::Error, store::Store};

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

/// The operations of [`Allocator::read`] (`node`'s blocks and addresses, the attachment's
/// index), for a caller that folds them into its own read transaction and hands the answers
/// to [`Allocator::view`].
pub fn read_ops(keys: &cluster::ipam::Keys, node: &str, id: &str, ifname: &str) -> Vec<etcd::Op> {
    vec![
        etcd::Op::get_prefix(keys.node_blocks(node)),
        etcd::Op::get(keys.att(id, ifname)),
    ]
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

/// ADD: one address per range set, in this node's blocks (one read, one write; a block claim
/// when the node's blocks are full). When a range set has nothing left, dead nodes' blocks
/// are reclaimed ([`reclaim_dead_nodes`]) and the ADD tries once more.
pub fn add(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<Got>, CniError> {
    add_from(store, cfg, node, id, ifname, None)
}

/// [`add`], its first read answered by `ahead` when the caller did it ([`EtcdIpam::add_reads`]).
fn add_from(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
    ahead: Option<&TxnResponse>,
) -> Result<Vec<Got>, CniError> {
    let requested = cfg.ipam.requested_per_set()?;
    let a = allocator(store, cfg, node);
    let sets = &cfg.ipam.range_sets;
    let first = ahead.map(|r| a.view(r));
    let mut result = a.allocate(sets, id, ifname, &requested, first)?;
    if result.is_err() {
        let r = reclaim_dead_nodes(store, &cfg.prefix, &cfg.network, node).map_err(Error::from)?;
        if !r.blocks.is_empty() {
            log::warn!(
                "range full: reclaimed blocks {:?} ({} addresses) of dead nodes {:?}",
                r.blocks,
                r.ips.len(),
                r.nodes
            );
            result = a.allocate(sets, id, ifname, &requested, None)?;
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

/// DEL: releases every address (id, ifname) holds in the network. Idempotent.
pub fn del(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, CniError> {
    Ok(allocator(store, cfg, node)
        .release(id, ifname)
        .map_err(Error::from)?)
}

/// CHECK: (id, ifname) holds an address in every range set, each still recorded under its
/// node's block.
pub fn check(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, CniError> {
    let a = allocator(store, cfg, node);
    let v = a.read(id, ifname).map_err(Error::from)?;
    let not_held = |index: usize| Error::NotHeld {
        container: id.into(),
        ifname: ifname.into(),
        network: cfg.network.clone(),
        index,
        ranges: cfg.ipam.range_sets[index].to_string(),
    };
    let Some((att, _)) = v.att else {
        return Err(not_held(0).into());
    };
    let mut out = Vec::new();
    for (index, set) in cfg.ipam.range_sets.iter().enumerate() {
        let h = att
            .ips
            .iter()
            .find(|h| set.contains(h.ip))
            .ok_or_else(|| not_held(index))?;
        let key = a.keys.ip(&att.node, h.block, h.ip);
        let r = store
            .txn(&[], &[etcd::Op::get(&key)], &[])
            .map_err(Error::from)?;
        let rec = store::gets(&r)
            .first()
            .and_then(|k| k.first())
            .and_then(|kv| serde_json::from_slice::<cluster::ipam::IpRecord>(&kv.value).ok());
        if !rec.is_some_and(|r| r.is(id, ifname)) {
            return Err(Error::Stale {
                what: format!(
                    "{id}/{ifname} is recorded as holding {} but {key} does not name it",
                    h.ip
                ),
            }
            .into());
        }
        out.push(h.ip);
    }
    Ok(out)
}

/// GC: releases this node's attachments that are not in `valid`, then this node's blocks
/// that hold no address any more (a later ADD claims again). Goes on past failures.
pub fn gc(
    store: &dyn Store,
    cfg: &Config,
    node: &str,
    valid: &[cni_core::Attachment],
) -> Result<Vec<IpAddr>, CniError> {
    let a = allocator(store, cfg, node);
    let (kvs, _) = store.list(&a.keys.node_blocks(node)).map_err(Error::from)?;
    let mut stale: Vec<(String, String)> = Vec::new();
    for kv in &kvs {
        let k = kv.key_str();
        let is_ip = k
            .strip_prefix(&a.keys.node_blocks(node))
            .and_then(cluster::ipam::parse_node_key)
            .is_some_and(|(_, ip)| ip.is_some());
        if !is_ip {
            continue;
        }
        let Ok(rec) = serde_json::from_slice::<cluster::ipam::IpRecord>(&kv.value) else {
            continue;
        };
        let is_valid = valid.iter().any(|v| rec.is(&v.container_id, &v.ifname));
        let pair = (rec.container_id.clone(), rec.ifname.clone());
        if !is_valid && !stale.contains(&pair) {
            stale.push(pair);
        }
    }
    let mut released = Vec::new();
    let mut errors = Vec::new();
    for (id, ifname) in &stale {
        match a.release(id, ifname) {
            Ok(r) => released.extend(r),
            Err(e) => errors.push(CniError::from(Error::from(e))),
        }
    }
    if let Err(e) = a.release_empty_blocks() {
        errors.push(Error::from(e).into());
    }
    cni_core::error::combine(errors)?;
    Ok(released)
}

/// STATUS: etcd answers, and every range set has a free address in this node's blocks or a
/// block left to claim.
pub fn status(store: &dyn Store, cfg: &Config, node: &str) -> Result<(), CniError> {
    let unavailable = |e: String| CniError::new(ErrorCode::NotAvailable, e);
    let a = allocator(store, cfg, node);
    let v = a.read("", "").map_err(|e| unavailable(e.to_string()))?;
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
                .any(|ip| !v.ips.contains_key(ip))
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
        let (cfg, client) = self.open(req)?;
        self.del_with(req, &cfg, &client)
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
    /// The reads an ADD of `req` starts with (this node's blocks and addresses, the
    /// attachment's index), for a caller that folds them into its own read transaction: the
    /// overlay's preflight, one round trip less per ADD. Their answers go to [`Self::run_with`].
    pub fn add_reads(&self, req: &Request) -> Result<Vec<etcd::Op>, CniError> {
        let cfg = config::parse_without_tls(req)?;
        let keys = cluster::ipam::Keys::new(&cfg.network_prefix());
        Ok(read_ops(
            &keys,
            self.node()?,
            &req.container_id,
            &req.ifname,
        ))
    }

    /// ADD, DEL or CHECK over a store the caller already holds: the overlay plugin runs
    /// etcd-ipam in its own process over its own etcd connection (one TLS handshake per ADD,
    /// not two; the overlay takes no other IPAM; its config checked the TLS keys, so they are
    /// not read again here). The same steps and answers as the plugin's. `ahead`: for ADD, the
    /// answers to [`Self::add_reads`] (only those operations, read by the caller): the first
    /// round starts from them instead of reading.
    pub fn run_with(
        &self,
        req: &Request,
        cmd: cni_core::Command,
        store: &dyn Store,
        ahead: Option<&TxnResponse>,
    ) -> Result<Option<CniResult>, CniError> {
        let cfg = config::parse_without_tls(req)?;
        match cmd {
            cni_core::Command::Add => self.add_with(req, &cfg, store, ahead).map(Some),
            cni_core::Command::Del => self.del_with(req, &cfg, store).map(|()| None),
            cni_core::Command::Check => {
                check(store, &cfg, self.node()?, &req.container_id, &req.ifname).map(|_| None)
            }
            other => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("etcd-ipam in process: {other:?} is not run this way"),
            )),
        }
    }

    fn del_with(&self, req: &Request, cfg: &Config, store: &dyn Store) -> Result<(), CniError> {
        let released = del(store, cfg, &self.node, &req.container_id, &req.ifname)?;
        log::info!("{}: released {released:?}", req.tag());
        Ok(())
    }

    fn add_with(
        &self,
        req: &Request,
        cfg: &Config,
        store: &dyn Store,
        ahead: Option<&TxnResponse>,
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
