//! The three operations the allocator needs from etcd, behind a trait with an in-memory fake.

use std::{collections::BTreeMap, sync::Mutex};

use etcd::{Compare, CompareOp, Created, EtcdError, Kv, Op};

pub trait Store {
    /// Every key under `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError>;
    /// Puts `key` only if absent (create revision 0); else what it holds.
    fn create(&self, key: &str, value: &[u8]) -> Result<Created, EtcdError>;
    /// Deletes `key` only if it was not changed since `mod_revision`; true when deleted.
    fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError>;
}

impl Store for etcd::Client {
    fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        Ok(self.range_prefix(prefix)?.0)
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<Created, EtcdError> {
        self.create_or_get(key, value, None)
    }

    fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let r = self.txn(
            &[Compare::mod_revision(key, CompareOp::Equal, mod_revision)],
            &[Op::delete(key)],
            &[],
        )?;
        Ok(r.succeeded)
    }
}

/// An in-memory store with etcd's revision semantics (unit tests; shared across threads to
/// play several nodes).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<(i64, BTreeMap<String, Kv>)>,
}

impl MemStore {
    pub fn put(&self, key: &str, value: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let rev = g.0;
        g.1.insert(
            key.to_string(),
            Kv {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
        );
    }

    pub fn delete(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(key);
    }
}

impl Store for MemStore {
    fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.1
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<Created, EtcdError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kv) = g.1.get(key) {
            return Ok(Created::Exists(kv.clone()));
        }
        g.0 += 1;
        let rev = g.0;
        g.1.insert(
            key.to_string(),
            Kv {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
        );
        Ok(Created::Created { revision: rev })
    }

    fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1
            .get(key)
            .is_some_and(|kv| kv.mod_revision == mod_revision)
        {
            g.0 += 1;
            g.1.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
}
