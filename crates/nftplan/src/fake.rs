//! An in-memory nftables for tests without root, in the spirit of knftables' fake (the one
//! the reference portmap tests use): it holds our tables, their sets and elements and the
//! host's FORWARD chains, applies batches with the kernel's semantics and can be dumped.
//!
//! Semantics, as nf_tables has them:
//! - a batch is one transaction: a failing command leaves everything as it was;
//! - elements need their table (the skeleton): without it `add`, `delete` and `get` fail
//!   (ENOENT), which is what sends [`crate::Firewall`] to its skeleton retry;
//! - `add` of an element that is there with the same data is a no-op; with other data, or an
//!   interval overlapping another, it fails (EEXIST);
//! - `delete` and `get` of a missing element fail (ENOENT); `get` compares keys, not data;
//! - loading the skeleton keeps the elements of a table that exists; a table created anew
//!   gets a new handle (what [`NftBackend::probe_table`] answers), as in the kernel, where
//!   handles are never reused.
//!
//! Tests can also break things the way an admin does ([`FakeNft::flush_ruleset`],
//! [`FakeNft::replace_table`], [`FakeNft::remove`]), inject failures
//! ([`FakeNft::fail_next`]) and read what was applied ([`FakeNft::batches`]).

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::{json, Value as Json};

use crate::{
    backend::{NftBackend, TableProbe},
    batch::{Batch, Cmd, IpFamily},
    elem::Elem,
    schema::{Family, Layout, Value, SETS},
    NftError,
};

/// The in-memory table. Share it as `Arc<FakeNft>` (it is an [`NftBackend`]).
#[derive(Debug, Default)]
pub struct FakeNft {
    st: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    kernel: Tables,
    log: Vec<Batch>,
    failures: VecDeque<bool>,
    blind: bool,
}

/// What the kernel holds.
#[derive(Debug, Clone, Default)]
struct Tables {
    /// Our tables that exist, with their handles.
    tables: BTreeMap<Family, u64>,
    /// The elements of each set of an existing table, by key.
    sets: BTreeMap<(Family, &'static str), Set>,
    /// The host's `filter FORWARD` chains.
    forward: BTreeMap<IpFamily, HostChain>,
    last_handle: u64,
}

#[derive(Debug, Clone)]
struct HostChain {
    drop: bool,
    /// (handle, rule text with its comment, comment) in chain order.
    rules: Vec<(u64, String, String)>,
}

type Errno = i32;

/// A set's elements by key.
type Set = BTreeMap<Vec<Value>, Elem>;

impl Tables {
    fn handle(&mut self) -> u64 {
        self.last_handle += 1;
        self.last_handle
    }

    fn set_of(&mut self, e: &Elem) -> Result<(&mut Set, Vec<Value>), Errno> {
        let p = e.parts();
        let set = self
            .sets
            .get_mut(&(p.set.family, p.set.name))
            .ok_or(libc::ENOENT)?;
        Ok((set, p.key))
    }

    fn exec(&mut self, cmd: &Cmd) -> Result<(), Errno> {
        match cmd {
            Cmd::Skeleton => {
                for family in Family::ALL {
                    if !self.tables.contains_key(&family) {
                        let h = self.handle();
                        self.tables.insert(family, h);
                    }
                }
                for d in SETS {
                    self.sets.entry((d.family, d.name)).or_default();
                }
            }
            Cmd::Add(e) => {
                let (set, key) = self.set_of(e)?;
                match set.get(&key) {
                    Some(old) if old == e => {}
                    Some(_) => return Err(libc::EEXIST),
                    None if set.values().any(|o| overlaps(o, e)) => return Err(libc::EEXIST),
                    None => {
                        set.insert(key, e.clone());
                    }
                }
            }
            Cmd::Delete(e) => {
                let (set, key) = self.set_of(e)?;
                set.remove(&key).ok_or(libc::ENOENT)?;
            }
            Cmd::Get(e) => {
                let (set, key) = self.set_of(e)?;
                set.get(&key).ok_or(libc::ENOENT)?;
            }
            Cmd::AllowForward { family, bridge } => {
                // Each `insert` goes on top and takes the next handle.
                let handles: Vec<u64> = (0..3).map(|_| self.handle()).collect();
                let chain = self.forward.get_mut(family).ok_or(libc::ENOENT)?;
                let rules = crate::foreign::allow_rules(bridge).into_iter().rev();
                for (rule, h) in rules.zip(handles) {
                    chain
                        .rules
                        .insert(0, (h, rule, crate::foreign::tag(bridge)));
                }
            }
            Cmd::DeleteForwardRule { family, handle } => {
                let chain = self.forward.get_mut(family).ok_or(libc::ENOENT)?;
                let at = chain
                    .rules
                    .iter()
                    .position(|(h, ..)| h == handle)
                    .ok_or(libc::ENOENT)?;
                chain.rules.remove(at);
            }
        }
        Ok(())
    }
}

/// Two elements of an interval set whose ranges meet: every field's range (a single value,
/// a prefix, an address or port range) meets the other's.
fn overlaps(a: &Elem, b: &Elem) -> bool {
    let (pa, pb) = (a.parts(), b.parts());
    if pa.set.layout() == Layout::Exact || pa.key.len() != pb.key.len() {
        return false;
    }
    pa.key.iter().zip(&pb.key).all(|(x, y)| {
        let ((xl, xh), (yl, yh)) = (x.bounds(), y.bounds());
        xl <= yh && yl <= xh
    })
}

impl FakeNft {
    /// An empty kernel: no table, no host chains.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeNft::default())
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue outcomes for the next batches: `true` = that batch fails (and changes nothing).
    pub fn fail_next(&self, outcomes: &[bool]) {
        self.st().failures.extend(outcomes.iter().copied());
    }

    /// Answer [`TableProbe::Unknown`] (a backend that cannot tell, as nft run elsewhere) or,
    /// by default, the truth.
    pub fn set_blind(&self, blind: bool) {
        self.st().blind = blind;
    }

    /// Every batch applied so far, failed ones included.
    pub fn batches(&self) -> Vec<Batch> {
        self.st().log.clone()
    }

    /// Their nft text.
    pub fn scripts(&self) -> Vec<String> {
        self.st().log.iter().map(Batch::text).collect()
    }

    /// Forget the batches applied so far.
    pub fn clear(&self) {
        self.st().log.clear();
    }

    /// `nft flush ruleset`: every table goes, ours and the host's.
    pub fn flush_ruleset(&self) {
        let mut st = self.st();
        st.kernel.tables.clear();
        st.kernel.sets.clear();
        st.kernel.forward.clear();
    }

    /// Someone else's reload that recreates our tables empty (new handles).
    pub fn replace_table(&self) {
        let mut st = self.st();
        st.kernel.tables.clear();
        st.kernel.sets.clear();
        let _ = st.kernel.exec(&Cmd::Skeleton);
    }

    /// Delete `e` behind our back; false when it was not there.
    pub fn remove(&self, e: &Elem) -> bool {
        self.st().kernel.exec(&Cmd::Delete(e.clone())).is_ok()
    }

    /// The host's `filter FORWARD` chain of `family` (iptables-nft's), with a drop policy
    /// or not.
    pub fn add_forward_chain(&self, family: IpFamily, drop: bool) {
        self.st().kernel.forward.insert(
            family,
            HostChain {
                drop,
                rules: Vec::new(),
            },
        );
    }

    /// The rules of that chain, in order.
    pub fn forward_rules(&self, family: IpFamily) -> Vec<String> {
        self.st()
            .kernel
            .forward
            .get(&family)
            .map(|c| c.rules.iter().map(|(_, r, _)| r.clone()).collect())
            .unwrap_or_default()
    }

    /// Is `e` there (key and data)?
    pub fn contains(&self, e: &Elem) -> bool {
        let st = self.st();
        let p = e.parts();
        st.kernel
            .sets
            .get(&(p.set.family, p.set.name))
            .and_then(|s| s.get(&p.key))
            == Some(e)
    }

    /// Every element, set by set in schema order.
    pub fn elems(&self) -> Vec<Elem> {
        let st = self.st();
        SETS.iter()
            .filter_map(|d| st.kernel.sets.get(&(d.family, d.name)))
            .flat_map(|s| s.values().cloned())
            .collect()
    }

    /// The elements of one set (by name).
    pub fn elems_of(&self, set: &str) -> Vec<Elem> {
        self.elems()
            .into_iter()
            .filter(|e| e.set_name() == set)
            .collect()
    }

    /// What the kernel holds, as the nft commands that would rebuild it: our tables (their
    /// skeleton left out) with every element, set by set in schema order, then the host's
    /// FORWARD chains and their rules.
    pub fn dump(&self) -> String {
        let st = self.st();
        let mut out = String::new();
        for family in Family::ALL {
            if st.kernel.tables.contains_key(&family) {
                out.push_str(&format!("add table {}\n", family.table()));
            }
            for d in SETS.iter().filter(|d| d.family == family) {
                for e in st.kernel.sets.get(&(family, d.name)).into_iter().flatten() {
                    out.push_str(&format!("add element {} {}\n", family.table(), e.1));
                }
            }
        }
        for (family, chain) in &st.kernel.forward {
            let f = family.keyword();
            out.push_str(&format!(
                "add chain {f} filter FORWARD {{ type filter hook forward priority filter; \
                 policy {}; }}\n",
                if chain.drop { "drop" } else { "accept" }
            ));
            for (_, rule, _) in &chain.rules {
                out.push_str(&format!("add rule {f} filter FORWARD {rule}\n"));
            }
        }
        out
    }

    /// `nft -j list chains`: the host's FORWARD chains and ours.
    fn list_chains(t: &Tables) -> Json {
        let mut items = vec![json!({"metainfo": {}})];
        for (family, chain) in &t.forward {
            items.push(json!({"chain": {
                "family": family.keyword(), "table": "filter", "name": "FORWARD",
                "policy": if chain.drop { "drop" } else { "accept" },
            }}));
        }
        for c in crate::skeleton::CHAINS {
            if t.tables.contains_key(&c.family) {
                items.push(json!({"chain": {
                    "family": c.family.keyword(), "table": crate::schema::TABLE_NAME,
                    "name": c.name,
                }}));
            }
        }
        json!({ "nftables": items })
    }

    /// `nft -j -a list chain FAMILY filter FORWARD`.
    fn list_forward(chain: &HostChain, family: IpFamily) -> Json {
        let mut items = vec![json!({"metainfo": {}})];
        for (handle, rule, comment) in &chain.rules {
            items.push(json!({"rule": {
                "family": family.keyword(), "table": "filter", "chain": "FORWARD",
                "handle": handle, "comment": comment, "text": rule,
            }}));
        }
        json!({ "nftables": items })
    }
}

/// The error a failing batch gets, as the real backend reports it: element batches as a
/// netlink errno, the rest as nft's message.
fn failure(batch: &Batch, cmd: &Cmd, errno: Errno) -> NftError {
    let source = io::Error::from_raw_os_error(errno);
    if crate::nlbatch::plan(batch).is_some() {
        return NftError::Netlink {
            what: "element batch",
            source,
        };
    }
    NftError::Nft {
        status: "exit status: 1".to_owned(),
        stderr: format!("Error: Could not process rule: {source}\n{cmd}"),
    }
}

impl NftBackend for FakeNft {
    fn apply(&self, batch: &Batch) -> Result<(), NftError> {
        let mut st = self.st();
        st.log.push(batch.clone());
        if st.failures.pop_front().unwrap_or(false) {
            return Err(NftError::Nft {
                status: "exit status: 1".to_owned(),
                stderr: "fake failure".to_owned(),
            });
        }
        let mut next = st.kernel.clone();
        for cmd in batch.cmds() {
            next.exec(cmd).map_err(|errno| failure(batch, cmd, errno))?;
        }
        st.kernel = next;
        Ok(())
    }

    /// `list chains` and `-a list chain FAMILY filter FORWARD`; nothing else is listed.
    fn query(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        let st = self.st();
        let t = &st.kernel;
        Ok(match args {
            ["list", "chains"] => Some(FakeNft::list_chains(t).to_string()),
            ["-a", "list", "chain", family, "filter", "FORWARD"] => IpFamily::ALL
                .into_iter()
                .find(|f| f.keyword() == *family)
                .and_then(|f| Some(FakeNft::list_forward(t.forward.get(&f)?, f).to_string())),
            _ => None,
        })
    }

    fn probe_table(&self) -> Result<TableProbe, NftError> {
        let st = self.st();
        if st.blind {
            return Ok(TableProbe::Unknown);
        }
        Ok(match st.kernel.tables.get(&Family::Inet) {
            Some(h) => TableProbe::Present(*h),
            None => TableProbe::Missing,
        })
    }
}

#[cfg(test)]
mod tests;
