//! Cluster-wide allocation by blocks that belong to nodes: etcd decides who holds a block,
//! the node's own host decides who holds an address of it ([`crate::local`]).
//!
//! A node claims a block (/25 for IPv4, /121 for IPv6, or the whole subnet when smaller) with
//! one transaction that creates `<prefix>/blocks/<net>/<cidr>` (the key the agents watch: who
//! routes the block) and `ipam/<net>/nodes/<node>/<cidr>` (its own index) only if the first is
//! absent. Every address a node hands out lies in one of its blocks: the overlay routes a
//! block to its node, so an address elsewhere would not be reachable. There is no borrowing
//! from other nodes' blocks, and a requested address in another node's block is refused (103).
//!
//! An ADD takes the host's lock on the network's leases, and hands out a free address of a
//! block that this node holds in etcd (a read, or the agent's file: [`NodeView`]) and that
//! this host recorded claiming; it writes nothing to etcd unless it claims a block. No two
//! hosts hand out addresses of one block (etcd's claim), no two calls on a host hand out one
//! address (the lock): an address is never held twice. DEL, GC and CHECK work on the host's
//! leases; GC gives back to etcd the blocks left empty.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use cluster::{
    ipam::{block_prefix, parse_node_key, IpRecord, Keys, NodeBlock},
    schema::{self, BlockRecord},
};
use etcd::{Compare, CompareOp, EtcdError, Kv, Op, TxnResponse};
use ipamconf::{
    range::{from_u128, to_u128, RangeSet},
    ConfigError, Requested,
};
use ipnetwork::IpNetwork;

use crate::{
    error::Error,
    local::Local,
    store::{gets, Store},
};

mod blocks;
mod reclaim;

pub use blocks::{addresses_in_block, block_count};
use blocks::{bits, block_in, block_of_set, spans};
pub use reclaim::{reclaim_dead_nodes, Reclaimed};

/// This node's blocks, as etcd or the agent's file gave them.
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// This node's blocks -> create revision of their `nodes/` key (0 when not read).
    pub blocks: BTreeMap<IpNetwork, i64>,
    /// Addresses etcd still records under the blocks (the layout before December 2026, when
    /// every address was a key): taken as leases by a host with no record of its blocks.
    pub legacy: BTreeMap<IpAddr, IpRecord>,
    /// Read from etcd now (`false`: from the agent's file, which can lag a claim).
    pub from_etcd: bool,
}

impl NodeView {
    /// The blocks of the agent's file.
    pub fn from_agent(blocks: &BTreeSet<IpNetwork>) -> Self {
        NodeView {
            blocks: blocks.iter().map(|b| (*b, 0)).collect(),
            ..NodeView::default()
        }
    }

    fn absorb(&mut self, node_prefix: &str, kv: &Kv) {
        let key = kv.key_str();
        let Some((block, ip)) = key.strip_prefix(node_prefix).and_then(parse_node_key) else {
            log::warn!("ignoring key {key}");
            return;
        };
        match ip {
            None => {
                self.blocks.insert(block, kv.create_revision);
            }
            Some(ip) => {
                if let Ok(rec) = serde_json::from_slice::<IpRecord>(&kv.value) {
                    self.legacy.insert(ip, rec);
                }
            }
        }
    }
}

/// An address this call got (or found the attachment holding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub ip: IpAddr,
    /// The range's subnet prefix length and gateway, to answer with.
    pub prefix: u8,
    pub gateway: IpAddr,
    /// The node's block that holds it.
    pub block: IpNetwork,
    /// True when this call created it (false: the attachment already held it).
    pub fresh: bool,
}

/// FNV-1a: a stable hash (the same on every node and every build) to spread starting points.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How many unclaimed blocks one ADD tries before it reads the whole network's blocks.
const BLIND_CLAIMS: usize = 12;

/// One node's allocator over a store.
pub struct Allocator<'a> {
    pub store: &'a dyn Store,
    pub keys: Keys,
    /// The etcd prefix (for `<prefix>/blocks/` and `<prefix>/hosts/`).
    pub prefix: String,
    pub network: String,
    pub node: &'a str,
}

impl Allocator<'_> {
    fn node_prefix(&self) -> String {
        self.keys.node_blocks(self.node)
    }

    /// This node's blocks (and any address recorded under them by the old layout): one read.
    pub fn read(&self) -> Result<NodeView, EtcdError> {
        let ops = crate::read_ops(&self.keys, self.node);
        Ok(self.view(&self.store.txn(&[], &ops, &[])?))
    }

    /// What the answers to [`crate::read_ops`] say (`r`: a read-only transaction of exactly
    /// those operations, or their answers cut out of a larger one).
    pub fn view(&self, r: &TxnResponse) -> NodeView {
        let np = self.node_prefix();
        let mut v = NodeView {
            from_etcd: true,
            ..NodeView::default()
        };
        for kv in gets(r).first().copied().unwrap_or_default() {
            v.absorb(&np, kv);
        }
        v
    }

    fn got(set: &RangeSet, ip: IpAddr, block: IpNetwork, fresh: bool) -> Option<Got> {
        set.range_for(ip).map(|(_, r)| Got {
            ip,
            prefix: r.subnet.prefix(),
            gateway: r.gateway,
            block,
            fresh,
        })
    }

    /// A free address of `set` in this node's blocks, starting at a hash of (id, ifname) so a
    /// node's parallel ADDs rarely try the same one.
    fn pick(
        usable: &BTreeSet<IpNetwork>,
        set: &RangeSet,
        id: &str,
        ifname: &str,
        taken: &BTreeSet<IpAddr>,
    ) -> Option<(IpAddr, IpNetwork)> {
        for b in usable.iter().filter(|b| block_of_set(set, **b)) {
            let mut free: Vec<IpAddr> = addresses_in_block(set, *b)
                .into_iter()
                .filter(|ip| !taken.contains(ip))
                .collect();
            if free.is_empty() {
                continue;
            }
            let start = (fnv(&format!("{id}/{ifname}")) % free.len() as u64) as usize;
            free.rotate_left(start);
            return Some((free[0], *b));
        }
        None
    }

    /// Blocks to try claiming for `set`, best first: the buddies of this node's blocks (the
    /// other half of the smallest aligned prefix holding one of them, then of the next larger,
    /// so a node's blocks merge into few routes), then even-numbered blocks from a hash of the
    /// node name (leaving each first block's buddy free for its node), then the odd ones.
    fn candidates(&self, v: &NodeView, set: &RangeSet, limit: usize) -> Vec<IpNetwork> {
        let mut out: Vec<IpNetwork> = Vec::new();
        let push = |b: IpNetwork, out: &mut Vec<IpNetwork>| {
            if !v.blocks.contains_key(&b) && !out.contains(&b) && block_of_set(set, b) {
                out.push(b);
            }
        };
        for (r, _, _, size) in spans(set) {
            let bp = block_prefix(r.subnet);
            let own: Vec<u128> = v
                .blocks
                .keys()
                .filter(|b| b.prefix() == bp && r.subnet.contains(b.network()))
                .map(|b| to_u128(b.network()))
                .collect();
            for level in (r.subnet.prefix()..bp).rev() {
                let span = 1u128 << (bits(&r.start) - u32::from(level));
                for o in &own {
                    let base = o & !(span - 1);
                    let mut k = 0u128;
                    while k < span / size && out.len() < limit {
                        if let Ok(b) = IpNetwork::new(from_u128(base + k * size, r.start), bp) {
                            push(b, &mut out);
                        }
                        k += 1;
                    }
                }
                if out.len() >= limit {
                    return out;
                }
            }
        }
        let spans = spans(set);
        let total: u128 = spans.iter().fold(0, |a, s| a.saturating_add(s.2));
        if total == 0 {
            return out;
        }
        let start = u128::from(fnv(self.node)) % total;
        for parity in [0u128, 1] {
            let mut k = 0u128;
            while k < total && out.len() < limit && k < (limit as u128) * 64 {
                let mut idx = (start + k) % total;
                k += 1;
                for (r, first, n, size) in &spans {
                    if idx < *n {
                        let block_no = (first / size) + idx;
                        if block_no % 2 == parity {
                            if let Ok(b) = IpNetwork::new(
                                from_u128(first + idx * size, r.start),
                                block_prefix(r.subnet),
                            ) {
                                push(b, &mut out);
                            }
                        }
                        break;
                    }
                    idx -= n;
                }
            }
        }
        out
    }

    /// Claim `block` for this node: creates `blocks/<net>/<cidr>` and `nodes/<node>/<cidr>`
    /// if the first is absent. `Ok(Some(create revision))` when the node holds it now.
    fn claim(&self, block: IpNetwork) -> Result<Option<i64>, EtcdError> {
        let global = schema::block_key(&self.prefix, &self.network, block);
        let mine = self.keys.node_block(self.node, block);
        let value = serde_json::to_vec(&BlockRecord {
            node: self.node.to_string(),
        })
        .unwrap_or_default();
        let r = self.store.txn(
            &[Compare::absent(&global)],
            &[
                Op::put(&global, &value, None),
                Op::put(
                    &mine,
                    serde_json::to_vec(&NodeBlock {}).unwrap_or_default(),
                    None,
                ),
            ],
            &[Op::get(&global), Op::get(&mine)],
        )?;
        if r.succeeded {
            log::info!(
                "node {} claimed block {block} of {}",
                self.node,
                self.network
            );
            return Ok(Some(r.revision));
        }
        // Ours already (an earlier try whose answer was lost, or a parallel ADD of this node).
        let g = gets(&r);
        let holder = g
            .first()
            .and_then(|k| k.first())
            .and_then(|kv| serde_json::from_slice::<BlockRecord>(&kv.value).ok());
        match (holder, g.get(1).and_then(|k| k.first())) {
            (Some(h), Some(kv)) if h.node == self.node => Ok(Some(kv.create_revision)),
            _ => Ok(None),
        }
    }

    /// The holder of `block` in the network, if any.
    fn holder(&self, block: IpNetwork) -> Result<Option<String>, EtcdError> {
        let key = schema::block_key(&self.prefix, &self.network, block);
        let r = self.store.txn(&[], &[Op::get(&key)], &[])?;
        Ok(gets(&r)
            .first()
            .and_then(|k| k.first())
            .and_then(|kv| serde_json::from_slice::<BlockRecord>(&kv.value).ok())
            .map(|b| b.node))
    }

    /// A new block for `set`: blind tries first, then (the range filling up) from the list of
    /// every claimed block. None when the range set has no unclaimed block left.
    fn claim_for(
        &self,
        v: &NodeView,
        set: &RangeSet,
    ) -> Result<Option<(IpNetwork, i64)>, EtcdError> {
        for b in self.candidates(v, set, BLIND_CLAIMS) {
            if let Some(rev) = self.claim(b)? {
                return Ok(Some((b, rev)));
            }
        }
        let (kvs, _) = self
            .store
            .list(&schema::network_blocks_prefix(&self.prefix, &self.network))?;
        let claimed: BTreeSet<IpNetwork> = kvs
            .iter()
            .filter_map(|kv| {
                let k = kv.key_str();
                schema::parse_cidr_key(k.rsplit('/').next().unwrap_or_default())
            })
            .collect();
        for (r, first, n, size) in spans(set) {
            let mut tries = 0;
            let mut k = 0u128;
            while k < n && tries < BLIND_CLAIMS {
                let Ok(b) =
                    IpNetwork::new(from_u128(first + k * size, r.start), block_prefix(r.subnet))
                else {
                    k += 1;
                    continue;
                };
                k += 1;
                if claimed.contains(&b) || v.blocks.contains_key(&b) || !block_of_set(set, b) {
                    continue;
                }
                tries += 1;
                if let Some(rev) = self.claim(b)? {
                    return Ok(Some((b, rev)));
                }
            }
        }
        Ok(None)
    }

    /// What the attachment holds, as answers for the range sets (an ADD repeated).
    fn held(
        held: &[IpAddr],
        sets: &[RangeSet],
        requested: &[Option<&Requested>],
    ) -> Result<Vec<Got>, Error> {
        let mut out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let found = held
                .iter()
                .find_map(|ip| set.range_for(*ip).map(|(_, r)| (*ip, block_in(r, *ip))));
            let Some((ip, Some(block))) = found else {
                return Err(Error::Stale {
                    what: format!("the attachment holds no address of range set {i} ({set})"),
                });
            };
            if let Some(r) = requested[i].filter(|r| r.ip != ip) {
                return Err(Error::AlreadyHolds {
                    held: ip,
                    requested: r.ip,
                });
            }
            out.extend(Self::got(set, ip, block, false));
        }
        Ok(out)
    }

    /// The blocks whose addresses this host may hand out: this node's in `v` that the host
    /// recorded claiming. A host with no record yet takes etcd's word (and the addresses the
    /// old layout recorded in them); from the agent's file it has no say (`None`: read etcd).
    fn usable(
        &self,
        v: &NodeView,
        local: &mut Local,
    ) -> Result<Option<BTreeSet<IpNetwork>>, Error> {
        let in_view: BTreeSet<IpNetwork> = v.blocks.keys().copied().collect();
        let Some(mine) = local.blocks() else {
            if !v.from_etcd {
                return Ok(None);
            }
            for (ip, rec) in &v.legacy {
                log::info!(
                    "taking {ip} ({}/{}) over from etcd as a lease of this host",
                    rec.container_id,
                    rec.ifname
                );
                local.reserve(&rec.container_id, &rec.ifname, *ip, 0)?;
            }
            local.set_blocks(in_view.clone())?;
            return Ok(Some(in_view));
        };
        Ok(Some(mine.intersection(&in_view).copied().collect()))
    }

    /// Record a block claimed now as the host's.
    fn record_claim(local: &mut Local, block: IpNetwork) -> Result<(), Error> {
        let mut blocks = local.blocks().cloned().unwrap_or_default();
        blocks.insert(block);
        local.set_blocks(blocks)
    }

    /// One address per range set for (id, ifname): see the module doc. `Ok(Err(index))` for
    /// a range set with no address left (no free address in this node's blocks and no block
    /// left to claim). `ahead`: this node's blocks as the caller read them (from etcd, maybe a
    /// serializable read, or from the agent's file); `None`: read now. Runs under `local`'s
    /// lock: nothing else on this host hands out an address meanwhile.
    pub fn allocate(
        &self,
        sets: &[RangeSet],
        id: &str,
        ifname: &str,
        requested: &[Option<&Requested>],
        ahead: Option<NodeView>,
        local: &mut Local,
    ) -> Result<Result<Vec<Got>, usize>, Error> {
        let held = local.held(id, ifname);
        if !held.is_empty() {
            return Ok(Ok(Self::held(&held, sets, requested)?));
        }
        let mut taken = local.taken();
        let mut v = match ahead {
            Some(v) => v,
            None => self.read()?,
        };
        let mut usable = self.usable(&v, local)?;
        // The agent's file can lag this host's last claim: before a claim, etcd is read.
        let short = |u: &BTreeSet<IpNetwork>| {
            sets.iter().enumerate().any(|(i, set)| {
                requested[i].is_none() && Self::pick(u, set, id, ifname, &taken).is_none()
            })
        };
        if !v.from_etcd && usable.as_ref().is_none_or(short) {
            v = self.read()?;
            usable = self.usable(&v, local)?;
        }
        let mut usable = usable.unwrap_or_default();
        let mut picks: Vec<(IpAddr, IpNetwork, usize)> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let pick = match requested[i] {
                Some(r) => self.requested(&mut usable, set, r, local)?,
                None => match Self::pick(&usable, set, id, ifname, &taken) {
                    Some(p) => p,
                    None => match self.claim_for(&v, set)? {
                        Some((b, rev)) => {
                            Self::record_claim(local, b)?;
                            v.blocks.insert(b, rev);
                            usable.insert(b);
                            match Self::pick(&usable, set, id, ifname, &taken) {
                                Some(p) => p,
                                None => return Ok(Err(i)),
                            }
                        }
                        None => return Ok(Err(i)),
                    },
                },
            };
            taken.insert(pick.0);
            picks.push((pick.0, pick.1, i));
        }
        let mut done: Vec<IpAddr> = Vec::new();
        for (ip, _, i) in &picks {
            let r = local.reserve(id, ifname, *ip, *i);
            if !matches!(r, Ok(true)) {
                for d in &done {
                    let _ = local.release_ip(*d);
                }
                r?;
                return Err(Error::Contention {
                    node: self.node.to_string(),
                });
            }
            done.push(*ip);
        }
        Ok(Ok(picks
            .iter()
            .filter_map(|(ip, block, i)| Self::got(&sets[*i], *ip, *block, true))
            .collect()))
    }

    /// A requested address: free in one of this node's blocks, or in an unclaimed block
    /// (claimed now). In another node's block it is refused: the overlay routes that block to
    /// its node.
    fn requested(
        &self,
        usable: &mut BTreeSet<IpNetwork>,
        set: &RangeSet,
        r: &Requested,
        local: &mut Local,
    ) -> Result<(IpAddr, IpNetwork), Error> {
        if !set.is_allocatable(r.ip) {
            return Err(ConfigError::new(
                r.field.clone(),
                format!("{} is the gateway, network or broadcast address", r.ip),
            )
            .into());
        }
        let Some(block) = set
            .range_for(r.ip)
            .and_then(|(_, range)| block_in(range, r.ip))
        else {
            return Err(
                ConfigError::new(r.field.clone(), format!("{} lies in no range", r.ip)).into(),
            );
        };
        if !usable.contains(&block) {
            // Claimed now, or found ours already in etcd (the claim answers so).
            if self.claim(block)?.is_none() {
                let node = self.holder(block)?.unwrap_or_default();
                return Err(Error::OtherNodesBlock {
                    ip: r.ip,
                    block,
                    node,
                });
            }
            Self::record_claim(local, block)?;
            usable.insert(block);
        }
        if let Some(o) = local.holder(r.ip) {
            return Err(Error::Taken {
                ip: r.ip,
                owner: format!("{o} on {}", self.node),
            });
        }
        Ok((r.ip, block))
    }

    /// Give back to etcd this node's blocks that hold no address on this host (each only if
    /// its key is the one read; under `local`'s lock, so no ADD of this host takes an address
    /// of it meanwhile), with whatever the old layout recorded under them.
    pub fn release_empty_blocks(&self, local: &mut Local) -> Result<Vec<IpNetwork>, Error> {
        let v = self.read()?;
        let held: BTreeSet<IpNetwork> = local
            .taken()
            .into_iter()
            .flat_map(|ip| v.blocks.keys().filter(move |b| b.contains(ip)).copied())
            .collect();
        let empty: Vec<(IpNetwork, i64)> = v
            .blocks
            .iter()
            .filter(|(b, _)| !held.contains(b))
            .map(|(b, c)| (*b, *c))
            .collect();
        // Off this host's record first: a block given back is never handed out from again,
        // even if the agent's file still lists it (a release that fails leaves a block in etcd
        // that this host does not use: the next GC gives it back).
        if let Some(mine) = local.blocks() {
            let left = mine
                .iter()
                .filter(|b| !empty.iter().any(|(e, _)| e == *b))
                .copied()
                .collect();
            local.set_blocks(left)?;
        }
        let mut out = Vec::new();
        for (b, created) in &empty {
            let mine = self.keys.node_block(self.node, *b);
            let r = self.store.txn(
                &[Compare::create_revision(&mine, CompareOp::Equal, *created)],
                &[
                    Op::delete(&mine),
                    Op::delete_prefix(self.keys.block_ips(self.node, *b)),
                    Op::delete(schema::block_key(&self.prefix, &self.network, *b)),
                ],
                &[],
            )?;
            if r.succeeded {
                log::info!(
                    "node {} released empty block {b} of {}",
                    self.node,
                    self.network
                );
                out.push(*b);
            }
        }
        Ok(out)
    }
}
