//! Cluster-wide allocation over a [`Store`], by blocks that belong to nodes.
//!
//! A node claims a block (/25 for IPv4, /121 for IPv6, or the whole subnet when smaller) with
//! one transaction that creates `<prefix>/blocks/<net>/<cidr>` (the key the agents watch: who
//! routes the block) and `ipam/<net>/nodes/<node>/<cidr>` (its own index) only if the first is
//! absent. Every address a node hands out lies in one of its blocks: the overlay routes a
//! block to its node, so an address elsewhere would not be reachable. There is no borrowing
//! from other nodes' blocks, and a requested address in another node's block is refused (103).
//!
//! An ADD reads `nodes/<node>/` (its blocks and their addresses) and the attachment's index in
//! one read, then writes its addresses (one per range set) and the index in one transaction
//! that holds only if each address is still free and each block still the node's. So an
//! address is never held twice, and a steady ADD is one write. DEL reads the index and deletes
//! it with the addresses in one write.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use cluster::{
    ipam::{block_prefix, parse_node_key, AttRecord, Held, IpRecord, Keys, NodeBlock},
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
    store::{gets, Store},
};

mod blocks;
mod reclaim;

pub use blocks::{addresses_in_block, block_count};
use blocks::{bits, block_in, block_of_set, spans};
pub use reclaim::{reclaim_dead_nodes, Reclaimed};

/// What one node's keys said when read (one transaction).
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// The revision of the read.
    pub rev: i64,
    /// This node's blocks -> create revision of their `nodes/` key.
    pub blocks: BTreeMap<IpNetwork, i64>,
    /// Addresses held in them -> (holder, block, mod revision).
    pub ips: BTreeMap<IpAddr, (IpRecord, IpNetwork, i64)>,
    /// The attachment's index: (record, mod revision), when it holds addresses.
    pub att: Option<(AttRecord, i64)>,
}

impl NodeView {
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
                let rec = serde_json::from_slice::<IpRecord>(&kv.value).unwrap_or(IpRecord {
                    container_id: String::new(),
                    ifname: String::new(),
                });
                self.ips.insert(ip, (rec, block, kv.mod_revision));
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
/// How many times an ADD starts over after a transaction lost a race.
const ROUNDS: usize = 8;

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

    /// This node's blocks and addresses, and the attachment's index: one read.
    pub fn read(&self, id: &str, ifname: &str) -> Result<NodeView, EtcdError> {
        let ops = crate::read_ops(&self.keys, self.node, id, ifname);
        Ok(self.view(&self.store.txn(&[], &ops, &[])?))
    }

    /// What the answers to [`crate::read_ops`] say (`r`: a read-only transaction of exactly
    /// those operations, or their answers cut out of a larger one).
    pub fn view(&self, r: &TxnResponse) -> NodeView {
        let np = self.node_prefix();
        let mut v = NodeView {
            rev: r.revision,
            ..NodeView::default()
        };
        let g = gets(r);
        for kv in g.first().copied().unwrap_or_default() {
            v.absorb(&np, kv);
        }
        if let Some(kv) = g.get(1).and_then(|k| k.first()) {
            match serde_json::from_slice::<AttRecord>(&kv.value) {
                Ok(a) => v.att = Some((a, kv.mod_revision)),
                Err(e) => log::warn!("ignoring {}: {e}", kv.key_str()),
            }
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
        &self,
        v: &NodeView,
        set: &RangeSet,
        id: &str,
        ifname: &str,
        taken: &BTreeSet<IpAddr>,
    ) -> Option<(IpAddr, IpNetwork)> {
        for b in v.blocks.keys().filter(|b| block_of_set(set, **b)) {
            let mut free: Vec<IpAddr> = addresses_in_block(set, *b)
                .into_iter()
                .filter(|ip| !v.ips.contains_key(ip) && !taken.contains(ip))
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
        &self,
        att: &AttRecord,
        sets: &[RangeSet],
        requested: &[Option<&Requested>],
    ) -> Result<Vec<Got>, Error> {
        let mut out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let Some(h) = att.ips.iter().find(|h| set.contains(h.ip)) else {
                return Err(Error::Stale {
                    what: format!("the attachment holds no address of range set {i} ({set})"),
                });
            };
            if let Some(r) = requested[i].filter(|r| r.ip != h.ip) {
                return Err(Error::AlreadyHolds {
                    held: h.ip,
                    requested: r.ip,
                });
            }
            out.extend(Self::got(set, h.ip, h.block, false));
        }
        Ok(out)
    }

    /// One address per range set for (id, ifname): see the module doc. `Ok(None)` for the
    /// index of a range set with no address left (no free address in this node's blocks and
    /// no block left to claim). `ahead`: the first round's view, read earlier by the caller
    /// ([`crate::read_ops`], possibly a serializable read, behind the cluster); the write's
    /// compares hold only if it is still true, and a round that loses reads again
    /// (linearizable), so an old view costs a round, never a duplicate.
    pub fn allocate(
        &self,
        sets: &[RangeSet],
        id: &str,
        ifname: &str,
        requested: &[Option<&Requested>],
        mut ahead: Option<NodeView>,
    ) -> Result<Result<Vec<Got>, usize>, Error> {
        for _ in 0..ROUNDS {
            // An index seen ahead is not trusted: answering it writes nothing, so no compare
            // would catch a view behind a DEL (the caller's read may be serializable).
            let mut v = match ahead.take() {
                Some(v) if v.att.is_none() => v,
                _ => self.read(id, ifname)?,
            };
            if let Some((att, _)) = &v.att {
                return Ok(Ok(self.held(att, sets, requested)?));
            }
            let mut picks: Vec<(IpAddr, IpNetwork, i64, usize)> = Vec::new();
            let mut taken = BTreeSet::new();
            let mut again = false;
            for (i, set) in sets.iter().enumerate() {
                let pick = match requested[i] {
                    Some(r) => self.requested(&mut v, set, r)?,
                    None => match self.pick(&v, set, id, ifname, &taken) {
                        Some(p) => Some(p),
                        None => match self.claim_for(&v, set)? {
                            Some((b, rev)) => {
                                v.blocks.insert(b, rev);
                                self.pick(&v, set, id, ifname, &taken)
                            }
                            None => return Ok(Err(i)),
                        },
                    },
                };
                let Some((ip, block)) = pick else {
                    again = true;
                    break;
                };
                let rev = v.blocks.get(&block).copied().unwrap_or_default();
                taken.insert(ip);
                picks.push((ip, block, rev, i));
            }
            if again {
                continue;
            }
            let rec = serde_json::to_vec(&IpRecord {
                container_id: id.into(),
                ifname: ifname.into(),
            })
            .unwrap_or_default();
            let att = AttRecord {
                node: self.node.to_string(),
                ips: picks
                    .iter()
                    .map(|(ip, block, ..)| Held {
                        ip: *ip,
                        block: *block,
                    })
                    .collect(),
            };
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            for (ip, block, rev, _) in &picks {
                let k = self.keys.ip(self.node, *block, *ip);
                compares.push(Compare::absent(&k));
                compares.push(Compare::create_revision(
                    self.keys.node_block(self.node, *block),
                    CompareOp::Equal,
                    *rev,
                ));
                ops.push(Op::put(k, &rec, None));
            }
            let att_key = self.keys.att(id, ifname);
            compares.push(Compare::absent(&att_key));
            ops.push(Op::put(
                &att_key,
                serde_json::to_vec(&att).unwrap_or_default(),
                None,
            ));
            if self.store.txn(&compares, &ops, &[])?.succeeded {
                return Ok(Ok(picks
                    .iter()
                    .filter_map(|(ip, block, _, i)| Self::got(&sets[*i], *ip, *block, true))
                    .collect()));
            }
            log::debug!("{id}/{ifname}: lost a race for {picks:?}; reading again");
        }
        Err(Error::Contention {
            node: self.node.to_string(),
        })
    }

    /// A requested address: free in one of this node's blocks, or in an unclaimed block
    /// (claimed now). In another node's block it is refused: the overlay routes that block to
    /// its node.
    fn requested(
        &self,
        v: &mut NodeView,
        set: &RangeSet,
        r: &Requested,
    ) -> Result<Option<(IpAddr, IpNetwork)>, Error> {
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
        if let std::collections::btree_map::Entry::Vacant(slot) = v.blocks.entry(block) {
            match self.claim(block)? {
                Some(rev) => {
                    slot.insert(rev);
                }
                None => {
                    let node = self.holder(block)?.unwrap_or_default();
                    return Err(Error::OtherNodesBlock {
                        ip: r.ip,
                        block,
                        node,
                    });
                }
            }
        }
        if let Some((rec, ..)) = v.ips.get(&r.ip) {
            return Err(Error::Taken {
                ip: r.ip,
                owner: format!("{}/{} on {}", rec.container_id, rec.ifname, self.node),
            });
        }
        Ok(Some((r.ip, block)))
    }

    /// Release (id, ifname): its index and addresses, in one write when it holds any.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, EtcdError> {
        let key = self.keys.att(id, ifname);
        for _ in 0..ROUNDS {
            let r = self.store.txn(&[], &[Op::get(&key)], &[])?;
            let Some(kv) = gets(&r).first().and_then(|k| k.first()).cloned() else {
                return Ok(Vec::new());
            };
            let att: AttRecord = match serde_json::from_slice(&kv.value) {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("{key} unreadable ({e}): deleting it");
                    AttRecord {
                        node: String::new(),
                        ips: Vec::new(),
                    }
                }
            };
            let node = if att.node.is_empty() {
                self.node
            } else {
                att.node.as_str()
            };
            let mut ops = vec![Op::delete(&key)];
            for h in &att.ips {
                ops.push(Op::delete(self.keys.ip(node, h.block, h.ip)));
            }
            let done = self
                .store
                .txn(&[Compare::unchanged(&key, kv.mod_revision)], &ops, &[])?;
            if done.succeeded {
                return Ok(att.ips.iter().map(|h| h.ip).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Release this node's empty blocks (each only if no address appeared in it since read).
    pub fn release_empty_blocks(&self) -> Result<Vec<IpNetwork>, EtcdError> {
        let np = self.node_prefix();
        let (kvs, rev) = self.store.list(&np)?;
        let mut v = NodeView::default();
        for kv in &kvs {
            v.absorb(&np, kv);
        }
        let mut out = Vec::new();
        for (b, created) in &v.blocks {
            if v.ips.values().any(|(_, ib, _)| ib == b) {
                continue;
            }
            let mine = self.keys.node_block(self.node, *b);
            let r = self.store.txn(
                &[
                    Compare::create_revision(&mine, CompareOp::Equal, *created),
                    Compare::prefix_mod_revision(
                        self.keys.block_ips(self.node, *b),
                        CompareOp::Less,
                        rev + 1,
                    ),
                ],
                &[
                    Op::delete(&mine),
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
