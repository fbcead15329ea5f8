//! Cluster-wide allocation over a [`Store`].
//!
//! `ips/<ip>` keys are the truth: an address is held exactly when its key exists, and a key is
//! only ever written by a create-revision txn (put if absent), so two ADDs anywhere can never
//! hold one address. `blocks/<cidr>` keys only decide *where a node looks first*: a node
//! claims a block (/26 for IPv4, /122 for IPv6, or the whole subnet when smaller) once, with
//! the same create txn, and allocates inside it, so nodes don't race each other for the same
//! low addresses; within the block a node starts at a hash of (container id, ifname), so its
//! own parallel ADDs rarely collide either. When no block is left to claim, a node borrows a
//! free address anywhere in the range set (still one create txn): a range is exhausted only
//! when every address is held.

use std::{collections::BTreeMap, net::IpAddr};

use etcd::{Created, EtcdError, Kv};
use host_local::{
    allocator::Requested,
    range::{from_u128, to_u128, Range, RangeSet},
};
use ipnetwork::IpNetwork;

pub use cluster::ipam::{BlockRecord, IpRecord, Keys};

use crate::{error::Error, store::Store};

/// What the network's keys said when read, updated as this call writes.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Address -> (holder, mod revision).
    pub ips: BTreeMap<IpAddr, (IpRecord, i64)>,
    /// Block -> (node, mod revision).
    pub blocks: BTreeMap<IpNetwork, (String, i64)>,
}

impl View {
    /// One range read of the whole network's keys.
    pub fn read(store: &dyn Store, keys: &Keys) -> Result<View, EtcdError> {
        let mut v = View::default();
        for kv in store.list(&keys.network_prefix)? {
            v.absorb(keys, &kv);
        }
        Ok(v)
    }

    fn absorb(&mut self, keys: &Keys, kv: &Kv) {
        let key = kv.key_str();
        let Some(rest) = key.strip_prefix(&keys.network_prefix) else {
            return;
        };
        if let Some(ip) = rest.strip_prefix("ips/") {
            match (
                ip.parse::<IpAddr>(),
                serde_json::from_slice::<IpRecord>(&kv.value),
            ) {
                (Ok(ip), Ok(rec)) => {
                    self.ips.insert(ip, (rec, kv.mod_revision));
                }
                // Not ours to judge: the address counts as held by nobody we know.
                (Ok(ip), Err(_)) => {
                    let rec = IpRecord {
                        node: String::new(),
                        container_id: String::new(),
                        ifname: String::new(),
                    };
                    self.ips.insert(ip, (rec, kv.mod_revision));
                }
                _ => log::warn!("ignoring key {key}: not an address"),
            }
        } else if let Some(b) = rest.strip_prefix("blocks/") {
            let net = b.replacen('_', "/", 1).parse::<IpNetwork>();
            let rec = serde_json::from_slice::<BlockRecord>(&kv.value);
            match (net, rec) {
                (Ok(net), Ok(rec)) => {
                    self.blocks.insert(net, (rec.node, kv.mod_revision));
                }
                _ => log::warn!("ignoring key {key}: not a block"),
            }
        }
    }

    /// The address (and its mod revision) `(container_id, ifname)` holds in `set`.
    pub fn held_by(
        &self,
        set: &RangeSet,
        container_id: &str,
        ifname: &str,
    ) -> Option<(IpAddr, i64)> {
        self.ips
            .iter()
            .find(|(ip, (rec, _))| set.contains(**ip) && rec.is(container_id, ifname))
            .map(|(ip, (_, rev))| (*ip, *rev))
    }
}

/// Prefix length of a range's blocks: /26 (IPv4) or /122 (IPv6), 64 addresses, or the
/// subnet itself when it is smaller.
pub fn block_prefix(r: &Range) -> u8 {
    if r.subnet.is_ipv4() {
        r.subnet.prefix().max(26)
    } else {
        r.subnet.prefix().max(122)
    }
}

fn block_size(r: &Range) -> u128 {
    let bits = if r.subnet.is_ipv4() { 32 } else { 128 };
    1u128 << (bits - u32::from(block_prefix(r)))
}

/// The block of `r` with base address `base`.
fn block_at(r: &Range, base: u128) -> Option<IpNetwork> {
    IpNetwork::new(from_u128(base, r.start), block_prefix(r)).ok()
}

/// `[first, last]` block base addresses of a range, and how many blocks.
fn block_span(r: &Range) -> (u128, u128) {
    let size = block_size(r);
    let first = to_u128(r.start) & !(size - 1);
    let last = to_u128(r.end) & !(size - 1);
    (first, (last - first) / size + 1)
}

/// The addresses of `set` that can be handed out and lie in `block`.
pub fn addresses_in_block(set: &RangeSet, block: IpNetwork) -> Vec<IpAddr> {
    let base = to_u128(block.network());
    let bits = if block.is_ipv4() { 32 } else { 128 };
    let size = 1u128 << (bits - u32::from(block.prefix()));
    if size > 1 << 16 {
        return Vec::new(); // not one of our blocks
    }
    (0..size)
        .map(|i| from_u128(base + i, block.network()))
        .filter(|ip| set.is_allocatable(*ip))
        .collect()
}

/// FNV-1a: a stable hash (the same on every node and every build) to spread starting points.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An address this call got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub ip: IpAddr,
    /// The prefix length (from the range's subnet) and gateway to answer with.
    pub prefix: u8,
    pub gateway: IpAddr,
    /// Mod revision of the `ips/` key when this call created it (for rollback); None when the
    /// container already held the address.
    pub fresh: Option<i64>,
}

/// One node's allocator over a store.
pub struct Allocator<'a> {
    pub store: &'a dyn Store,
    pub keys: Keys,
    pub node: &'a str,
    /// `<prefix>/hosts/`, for the dead-node rule.
    pub hosts_prefix: String,
}

/// How many unclaimed blocks one ADD tries to claim before it borrows instead.
const MAX_CLAIMS: usize = 16;
/// How many candidates a borrow walks (huge IPv6 ranges are never full in practice).
const MAX_BORROW_WALK: usize = 1 << 16;

impl Allocator<'_> {
    fn got(set: &RangeSet, ip: IpAddr, fresh: Option<i64>) -> Option<Got> {
        set.range_for(ip).map(|(_, r)| Got {
            ip,
            prefix: r.subnet.prefix(),
            gateway: r.gateway,
            fresh,
        })
    }

    /// Tries to create `ips/<ip>` for the container; Some when it now holds it.
    fn try_ip(
        &self,
        view: &mut View,
        set: &RangeSet,
        ip: IpAddr,
        id: &str,
        ifname: &str,
    ) -> Result<Option<Got>, EtcdError> {
        if view.ips.contains_key(&ip) {
            return Ok(None);
        }
        let rec = IpRecord {
            node: self.node.into(),
            container_id: id.into(),
            ifname: ifname.into(),
        };
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        match self.store.create(&self.keys.ip(ip), &value)? {
            Created::Created { revision } => {
                view.ips.insert(ip, (rec, revision));
                Ok(Self::got(set, ip, Some(revision)))
            }
            Created::Exists(kv) => {
                let theirs: Option<IpRecord> = serde_json::from_slice(&kv.value).ok();
                match theirs {
                    // Our own earlier try, whose answer was lost on a failover.
                    Some(t) if t.is(id, ifname) => {
                        view.ips.insert(ip, (t, kv.mod_revision));
                        Ok(Self::got(set, ip, Some(kv.mod_revision)))
                    }
                    other => {
                        let rec = other.unwrap_or(IpRecord {
                            node: String::new(),
                            container_id: String::new(),
                            ifname: String::new(),
                        });
                        view.ips.insert(ip, (rec, kv.mod_revision));
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Tries the free addresses of one block, starting at a hash of (id, ifname).
    fn try_block(
        &self,
        view: &mut View,
        set: &RangeSet,
        block: IpNetwork,
        id: &str,
        ifname: &str,
    ) -> Result<Option<Got>, EtcdError> {
        let mut free: Vec<IpAddr> = addresses_in_block(set, block)
            .into_iter()
            .filter(|ip| !view.ips.contains_key(ip))
            .collect();
        if free.is_empty() {
            return Ok(None);
        }
        let start = (fnv(&format!("{id}/{ifname}")) % free.len() as u64) as usize;
        free.rotate_left(start);
        for ip in free {
            if let Some(g) = self.try_ip(view, set, ip, id, ifname)? {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// An unclaimed block of `set` with a free address, walking from a hash of the node name.
    fn pick_unclaimed(&self, view: &View, set: &RangeSet) -> Option<IpNetwork> {
        let spans: Vec<(&Range, u128, u128)> = set
            .0
            .iter()
            .map(|r| {
                let (f, n) = block_span(r);
                (r, f, n)
            })
            .collect();
        let total = spans
            .iter()
            .fold(0u128, |a, (_, _, n)| a.saturating_add(*n));
        if total == 0 {
            return None;
        }
        let start = u128::from(fnv(self.node)) % total;
        let walk = total.min(view.blocks.len() as u128 + 4096);
        for k in 0..walk {
            let mut idx = (start + k) % total;
            for (r, first, n) in &spans {
                if idx < *n {
                    let block = block_at(r, first + idx * block_size(r))?;
                    if !view.blocks.contains_key(&block)
                        && addresses_in_block(set, block)
                            .iter()
                            .any(|ip| !view.ips.contains_key(ip))
                    {
                        return Some(block);
                    }
                    break;
                }
                idx -= n;
            }
        }
        None
    }

    /// One address of `set` for (id, ifname); see the module doc for the order.
    pub fn allocate(
        &self,
        view: &mut View,
        set: &RangeSet,
        id: &str,
        ifname: &str,
        requested: Option<&Requested>,
    ) -> Result<Option<Got>, Error> {
        let requested_field = requested.map(|r| r.field.clone());
        let requested = requested.map(|r| r.ip);
        // 0. ADD again for an attachment that holds an address answers that address.
        if let Some((ip, _)) = view.held_by(set, id, ifname) {
            if requested.is_none_or(|r| r == ip) {
                return Ok(Self::got(set, ip, None));
            }
            return Err(Error::AlreadyHolds {
                held: ip,
                requested: requested.unwrap_or(ip),
            });
        }
        // 1. A requested address, wherever it lies.
        if let Some(ip) = requested {
            if !set.is_allocatable(ip) {
                return Err(Error::Config {
                    field: requested_field.unwrap_or_default(),
                    problem: format!("{ip} is the gateway, network or broadcast address"),
                });
            }
            if let Some(g) = self.try_ip(view, set, ip, id, ifname)? {
                return Ok(Some(g));
            }
            let owner = view
                .ips
                .get(&ip)
                .map(|(r, _)| format!("{}/{} on {}", r.container_id, r.ifname, r.node));
            return Err(Error::Taken {
                ip,
                owner: owner.unwrap_or_default(),
            });
        }
        // 2. This node's blocks.
        let own: Vec<IpNetwork> = view
            .blocks
            .iter()
            .filter(|(b, (node, _))| node == self.node && !addresses_in_block(set, **b).is_empty())
            .map(|(b, _)| *b)
            .collect();
        for b in own {
            if let Some(g) = self.try_block(view, set, b, id, ifname)? {
                return Ok(Some(g));
            }
        }
        // 3. Claim a new block (create txn); a block our own parallel ADD just claimed is ours.
        for _ in 0..MAX_CLAIMS {
            let Some(b) = self.pick_unclaimed(view, set) else {
                break;
            };
            let value = serde_json::to_vec(&BlockRecord {
                node: self.node.into(),
            })
            .unwrap_or_default();
            match self.store.create(&self.keys.block(b), &value)? {
                Created::Created { revision } => {
                    log::info!("node {} claimed block {b}", self.node);
                    view.blocks.insert(b, (self.node.into(), revision));
                }
                Created::Exists(kv) => {
                    let node = serde_json::from_slice::<BlockRecord>(&kv.value)
                        .map(|r| r.node)
                        .unwrap_or_default();
                    let ours = node == self.node;
                    view.blocks.insert(b, (node, kv.mod_revision));
                    if !ours {
                        continue;
                    }
                }
            }
            if let Some(g) = self.try_block(view, set, b, id, ifname)? {
                return Ok(Some(g));
            }
        }
        // 4. Borrow any free address of the set (another node's block or an unclaimed corner).
        self.borrow(view, set, id, ifname)
    }

    fn borrow(
        &self,
        view: &mut View,
        set: &RangeSet,
        id: &str,
        ifname: &str,
    ) -> Result<Option<Got>, Error> {
        let free: Vec<IpAddr> = set
            .candidates(None)
            .take(MAX_BORROW_WALK)
            .map(|(_, ip)| ip)
            .filter(|ip| !view.ips.contains_key(ip))
            .collect();
        for ip in free {
            if let Some(g) = self.try_ip(view, set, ip, id, ifname)? {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// Steps 0-4, then, if the set is full, the dead-node rule ([`reclaim_dead_nodes`]) and
    /// one more borrow.
    pub fn allocate_or_reclaim(
        &self,
        view: &mut View,
        set: &RangeSet,
        id: &str,
        ifname: &str,
        requested: Option<&Requested>,
    ) -> Result<Option<Got>, Error> {
        if let Some(g) = self.allocate(view, set, id, ifname, requested)? {
            return Ok(Some(g));
        }
        let r = reclaim_dead_nodes(self.store, &self.hosts_prefix, &self.keys, self.node)?;
        if r.ips.is_empty() {
            return Ok(None);
        }
        log::warn!(
            "range full: reclaimed {:?} from dead nodes {:?}",
            r.ips,
            r.nodes
        );
        for ip in &r.ips {
            view.ips.remove(ip);
        }
        self.borrow(view, set, id, ifname)
    }
}

/// What [`reclaim_dead_nodes`] released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub nodes: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub blocks: Vec<IpNetwork>,
}

/// The dead-node rule: a node is dead when it has no `hosts/<node>` key (the agent's lease
/// expired) *and* the judge has one (so agents run in this cluster and the judge's own agent
/// is alive; without agents nobody is ever declared dead). The dead node's `ips/` and
/// `blocks/` keys of this network are deleted, each only if unchanged since read.
pub fn reclaim_dead_nodes(
    store: &dyn Store,
    hosts_prefix: &str,
    keys: &Keys,
    judge: &str,
) -> Result<Reclaimed, EtcdError> {
    let live: Vec<String> = store
        .list(hosts_prefix)?
        .iter()
        .filter_map(|kv| kv.key_str().strip_prefix(hosts_prefix).map(str::to_string))
        .collect();
    let mut out = Reclaimed::default();
    if !live.iter().any(|n| n == judge) {
        return Ok(out);
    }
    let view = View::read(store, keys)?;
    let dead = |node: &str| !node.is_empty() && !live.iter().any(|n| n == node);
    for (ip, (rec, rev)) in &view.ips {
        if dead(&rec.node) && store.delete_if(&keys.ip(*ip), *rev)? {
            out.ips.push(*ip);
            if !out.nodes.contains(&rec.node) {
                out.nodes.push(rec.node.clone());
            }
        }
    }
    for (b, (node, rev)) in &view.blocks {
        if dead(node) && store.delete_if(&keys.block(*b), *rev)? {
            out.blocks.push(*b);
            if !out.nodes.contains(node) {
                out.nodes.push(node.clone());
            }
        }
    }
    Ok(out)
}
