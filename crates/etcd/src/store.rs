//! The two calls the cluster's users need from etcd (etcd-ipam's allocator, the overlay's
//! preflight), behind a trait with an in-memory fake: a transaction and a prefix read. [`MemStore`] keeps etcd's semantics (one revision per writing txn,
//! create/mod revisions, range compares that hold when the range is empty) and counts the
//! writing transactions (raft proposals) so tests can hold the ADD path to its write budget.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use crate::{
    Client, Compare, CompareOp, CompareTarget, EtcdError, Kv, Op, OpResponse, TxnResponse,
};

/// One transaction: if every compare holds, `success` runs, else `failure` (atomically).
#[derive(Debug, Clone, Copy)]
pub struct Txn<'a> {
    pub compares: &'a [Compare],
    pub success: &'a [Op],
    pub failure: &'a [Op],
}

pub trait Store {
    /// Every key under `prefix`, and the revision it was read at.
    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError>;
    /// Run one transaction.
    fn run(&self, txn: Txn<'_>) -> Result<TxnResponse, EtcdError>;
    /// If every compare holds, run `success`, else `failure` (atomically): [`Store::run`].
    fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, EtcdError> {
        self.run(Txn {
            compares,
            success,
            failure,
        })
    }
    /// A read of `ops` (gets) that may lag the cluster by what the member has not applied
    /// yet (etcd's serializable read; the fake's is exact).
    fn read_serializable(&self, ops: &[Op]) -> Result<TxnResponse, EtcdError> {
        self.txn(&[], ops, &[])
    }
}

impl Store for Client {
    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.range_prefix(prefix)
    }

    fn run(&self, t: Txn<'_>) -> Result<TxnResponse, EtcdError> {
        Client::txn(self, t.compares, t.success, t.failure)
    }

    fn read_serializable(&self, ops: &[Op]) -> Result<TxnResponse, EtcdError> {
        Client::read_serializable(self, ops)
    }
}

/// The `Get` answers of a txn, in order.
pub fn gets(r: &TxnResponse) -> Vec<&[Kv]> {
    r.responses
        .iter()
        .filter_map(|o| match o {
            OpResponse::Get(kvs) => Some(kvs.as_slice()),
            _ => None,
        })
        .collect()
}

/// An in-memory store with etcd's revision semantics (unit tests; shared across threads to
/// play several nodes).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<(i64, BTreeMap<Vec<u8>, Kv>)>,
    writes: AtomicU64,
    calls: AtomicU64,
}

fn in_range(k: &[u8], key: &[u8], end: &Option<Vec<u8>>) -> bool {
    match end {
        None => k == key,
        // etcd: "\0" as range end means every key >= key.
        Some(e) if e.as_slice() == [0] => k >= key,
        Some(e) => k >= key && k < e.as_slice(),
    }
}

fn holds(c: &Compare, kv: &Kv) -> bool {
    use std::cmp::Ordering as O;
    let ord = match &c.target {
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::CreateRevision(n) => kv.create_revision.cmp(n),
        CompareTarget::ModRevision(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.op {
        CompareOp::Equal => ord == O::Equal,
        CompareOp::NotEqual => ord != O::Equal,
        CompareOp::Greater => ord == O::Greater,
        CompareOp::Less => ord == O::Less,
    }
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, (i64, BTreeMap<Vec<u8>, Kv>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `key` outside any txn (a test's setup; counted as a write).
    pub fn put(&self, key: &str, value: &[u8]) {
        let _ = Store::txn(self, &[], &[Op::put(key, value, None)], &[]);
    }

    /// Deletes `key` (a test's setup; counted as a write).
    pub fn delete(&self, key: &str) {
        let _ = Store::txn(self, &[], &[Op::delete(key)], &[]);
    }

    /// Writing transactions so far (what etcd counts as raft proposals).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Calls so far, reads and writes (what a client pays in round trips).
    pub fn round_trips(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The keys under `prefix`, as text (tests).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.list(prefix)
            .map(|(kvs, _)| kvs.iter().map(Kv::key_str).collect())
            .unwrap_or_default()
    }
}

impl Store for MemStore {
    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let g = self.lock();
        let p = prefix.as_bytes();
        Ok((
            g.1.range(p.to_vec()..)
                .take_while(|(k, _)| k.starts_with(p))
                .map(|(_, v)| v.clone())
                .collect(),
            g.0,
        ))
    }

    fn run(&self, t: Txn<'_>) -> Result<TxnResponse, EtcdError> {
        let Txn {
            compares,
            success,
            failure,
        } = t;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut g = self.lock();
        let ok = compares.iter().all(|c| {
            let matching: Vec<&Kv> =
                g.1.iter()
                    .filter(|(k, _)| in_range(k, &c.key, &c.range_end))
                    .map(|(_, v)| v)
                    .collect();
            if matching.is_empty() {
                // etcd compares an absent key as a zero KeyValue (a value compare fails).
                return !matches!(c.target, CompareTarget::Value(_)) && holds(c, &Kv::default());
            }
            matching.into_iter().all(|kv| holds(c, kv))
        });
        let ops = if ok { success } else { failure };
        let writing = success
            .iter()
            .chain(failure)
            .any(|o| !matches!(o, Op::Get { .. }));
        if writing {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let rev = if ops.iter().any(|o| !matches!(o, Op::Get { .. })) {
            g.0 + 1
        } else {
            g.0
        };
        let mut responses = Vec::new();
        for o in ops {
            match o {
                Op::Get { key, range_end } => responses.push(OpResponse::Get(
                    g.1.iter()
                        .filter(|(k, _)| in_range(k, key, range_end))
                        .map(|(_, v)| v.clone())
                        .collect(),
                )),
                Op::Put { key, value, lease } => {
                    let prior = g.1.get(key).cloned();
                    g.1.insert(
                        key.clone(),
                        Kv {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prior.as_ref().map_or(rev, |p| p.create_revision),
                            mod_revision: rev,
                            version: prior.map_or(1, |p| p.version + 1),
                            lease: lease.unwrap_or(0),
                        },
                    );
                    responses.push(OpResponse::Put);
                }
                Op::Delete { key, range_end } => {
                    let gone: Vec<Vec<u8>> =
                        g.1.keys()
                            .filter(|k| in_range(k, key, range_end))
                            .cloned()
                            .collect();
                    for k in &gone {
                        g.1.remove(k);
                    }
                    responses.push(OpResponse::Delete(gone.len() as i64));
                }
            }
        }
        g.0 = rev;
        Ok(TxnResponse {
            succeeded: ok,
            revision: rev,
            responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_keeps_etcds_revisions_and_compares() {
        let s = MemStore::default();
        let r = s
            .txn(&[Compare::absent("a")], &[Op::put("a", "1", None)], &[])
            .unwrap();
        assert!(r.succeeded);
        let again = s
            .txn(
                &[Compare::absent("a")],
                &[Op::put("a", "2", None)],
                &[Op::get("a")],
            )
            .unwrap();
        assert!(!again.succeeded);
        assert_eq!(gets(&again)[0][0].value, b"1");
        // A range compare holds on an empty range, and fails once a newer key is in it.
        let (_, rev) = s.list("p/").unwrap();
        let c = Compare::prefix_mod_revision("p/", CompareOp::Less, rev + 1);
        assert!(s.txn(std::slice::from_ref(&c), &[], &[]).unwrap().succeeded);
        s.put("p/x", b"x");
        assert!(!s.txn(&[c], &[], &[]).unwrap().succeeded);
        // Reads do not count as writes; every writing txn does, successful or not.
        let w = s.writes();
        s.txn(&[], &[Op::get_prefix("p/")], &[]).unwrap();
        assert_eq!(s.writes(), w);
        s.txn(&[Compare::absent("a")], &[Op::put("a", "3", None)], &[])
            .unwrap();
        assert_eq!(s.writes(), w + 1);
        assert_eq!(s.keys(""), ["a", "p/x"]);
    }
}
