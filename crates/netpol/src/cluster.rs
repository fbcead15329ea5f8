//! The objects in etcd, shared by every host of an overlay (`--etcd-endpoints`), and the
//! agent's loop that keeps this host's elements equal to them (docs/netpol.md, "Across
//! hosts"). Keys, values JSON:
//!
//! ```text
//! <prefix>/netpol/namespaces/<name>                              Namespace   cnirs policy apply
//! <prefix>/netpol/pods/<namespace>/<name>                        Pod         cnirs policy apply
//! <prefix>/netpol/policies/<namespace>/<name>                    NetworkPolicy
//! <prefix>/netpol/endpoints/<node>/<network>/<container>/<ifname> PodAttachment  netpol ADD on <node>
//! ```
//! One watch per host on `<prefix>/netpol/`; any event re-reads the prefix (one range read),
//! recompiles and moves this host's elements in one nftables transaction ([`run`]).

use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicBool, atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use etcd::{store::Store as Kv, Client, Op};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    source::{ObjectStore, Snapshot},
    store::{Objects, PodAttachment},
    PolicyError,
};

/// `<prefix>/netpol/`.
pub fn netpol_prefix(prefix: &str) -> String {
    format!("{}/netpol/", prefix.trim_end_matches('/'))
}

/// The objects and the attachments in etcd, seen from host `node`.
pub struct EtcdSource {
    kv: Arc<dyn Kv + Send + Sync>,
    root: String,
    node: String,
}

impl EtcdSource {
    /// Over `kv` (a [`Client`], or a `MemStore` in tests) under `<prefix>/netpol/`, for the
    /// host `node` (`CNIRS_NODE_NAME`, as the overlay names it).
    pub fn new(kv: Arc<dyn Kv + Send + Sync>, prefix: &str, node: &str) -> Self {
        EtcdSource {
            kv,
            root: netpol_prefix(prefix),
            node: node.to_owned(),
        }
    }

    fn endpoint_key(&self, network: &str, cid: &str, ifname: &str) -> String {
        format!(
            "{}endpoints/{}/{network}/{cid}/{ifname}",
            self.root, self.node
        )
    }

    /// Every object's key and JSON value.
    fn keyed(&self, o: &Objects) -> Result<BTreeMap<String, Vec<u8>>, PolicyError> {
        let mut m = BTreeMap::new();
        for (name, n) in &o.namespaces {
            m.insert(format!("{}namespaces/{name}", self.root), to_json(n)?);
        }
        for (k, p) in &o.pods {
            m.insert(format!("{}pods/{k}", self.root), to_json(p)?);
        }
        for (k, p) in &o.policies {
            m.insert(format!("{}policies/{k}", self.root), to_json(p)?);
        }
        Ok(m)
    }

    fn txn(&self, ops: &[Op]) -> Result<(), PolicyError> {
        if !ops.is_empty() {
            self.kv.txn(&[], ops, &[])?;
        }
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, PolicyError> {
    serde_json::to_vec(v).map_err(|source| PolicyError::Record {
        key: String::new(),
        source,
    })
}

fn from_json<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, PolicyError> {
    serde_json::from_slice(v).map_err(|source| PolicyError::Record {
        key: key.to_owned(),
        source,
    })
}

impl ObjectStore for EtcdSource {
    fn load(&self) -> Result<Snapshot, PolicyError> {
        let (kvs, _) = self.kv.list(&self.root)?;
        let mut s = Snapshot::default();
        let mine = format!("endpoints/{}/", self.node);
        for kv in kvs {
            let key = kv.key_str();
            let Some(rest) = key.strip_prefix(&self.root) else {
                continue;
            };
            let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
            match kind {
                "namespaces" => {
                    s.objects
                        .namespaces
                        .insert(name.to_owned(), from_json(&key, &kv.value)?);
                }
                "pods" => {
                    s.objects
                        .pods
                        .insert(name.to_owned(), from_json(&key, &kv.value)?);
                }
                "policies" => {
                    s.objects
                        .policies
                        .insert(name.to_owned(), from_json(&key, &kv.value)?);
                }
                // This host's own come from its state (the authority for its kernel).
                "endpoints" if !rest.starts_with(&mine) => {
                    s.remote.push(from_json(&key, &kv.value)?);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    fn save(&self, old: &Objects, new: &Objects) -> Result<(), PolicyError> {
        let (old, new) = (self.keyed(old)?, self.keyed(new)?);
        let mut ops: Vec<Op> = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| Op::put(k, v, None))
            .collect();
        ops.extend(old.keys().filter(|k| !new.contains_key(*k)).map(Op::delete));
        self.txn(&ops)
    }

    fn shared(&self) -> bool {
        true
    }

    fn publish(&self, att: &PodAttachment) -> Result<(), PolicyError> {
        let key = self.endpoint_key(&att.network, &att.container_id, &att.ifname);
        self.txn(&[Op::put(&key, to_json(att)?, None)])
    }

    fn withdraw(&self, network: &str, cid: &str, ifname: &str) -> Result<(), PolicyError> {
        self.txn(&[Op::delete(self.endpoint_key(network, cid, ifname))])
    }

    fn retain(&self, network: &str, valid: &[(String, String)]) -> Result<(), PolicyError> {
        let prefix = format!("{}endpoints/{}/{network}/", self.root, self.node);
        let (kvs, _) = self.kv.list(&prefix)?;
        let ops: Vec<Op> = kvs
            .iter()
            .filter(|kv| {
                let key = kv.key_str();
                let rest = key.strip_prefix(&prefix).unwrap_or_default();
                !valid.iter().any(|(c, i)| rest == format!("{c}/{i}"))
            })
            .map(|kv| Op::delete(&kv.key))
            .collect();
        self.txn(&ops)
    }
}

/// With no news, the loop reads and enforces again this often (a missed event, a record
/// fixed by hand); after a failed pass, after [`RETRY`]. A flushed table is not this loop's
/// business: the watcher beside it (`cnirs watch`) restores the recorded elements at once.
pub const RESYNC: Duration = Duration::from_secs(30);
/// See [`RESYNC`].
pub const RETRY: Duration = Duration::from_secs(1);
/// How long news is gathered before one pass.
pub const COALESCE: Duration = Duration::from_millis(20);

/// The agent's netpol loop until `stop`: this host's elements kept equal to the objects and
/// endpoints under `<prefix>/netpol/` (through `client`, as host `node`): enforced at start,
/// after every change (a watch; events gathered for [`COALESCE`]) and every [`RESYNC`]. Each
/// pass is [`crate::Store::sync`]: under this netns's lock, one read of the prefix (never a
/// cached one: a pass ordered after an ADD's must not enforce an older view than the ADD
/// did), one compile, one nftables transaction (nothing when nothing changed).
pub fn run(
    client: &Client,
    prefix: &str,
    node: &str,
    stop: &AtomicBool,
) -> Result<(), PolicyError> {
    let src = EtcdSource::new(Arc::new(client.clone()), prefix, node);
    let store = crate::Store::open_with(Box::new(src))?;
    let (tx, rx) = mpsc::channel::<()>();
    let root = netpol_prefix(prefix);
    let c = client.clone();
    let watching = std::thread::Builder::new()
        .name("netpol-watch".into())
        .spawn(move || watch(&c, &root, &tx));
    if let Err(e) = watching {
        log::error!("netpol: starting the watch: {e}");
    }
    let mut last_err = String::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match store.sync() {
            Ok((0, 0)) => last_err.clear(),
            Ok((added, removed)) => {
                last_err.clear();
                log::info!(
                    "netpol: {added} element(s) added, {removed} removed ({} ms)",
                    t.elapsed().as_millis()
                );
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_err {
                    log::warn!("netpol: enforcing the policies: {msg}");
                }
                last_err = msg;
            }
        }
        let wait = if last_err.is_empty() { RESYNC } else { RETRY };
        if rx.recv_timeout(wait).is_ok() {
            std::thread::sleep(COALESCE);
            while rx.try_recv().is_ok() {}
        }
    }
    Ok(())
}

/// Send one `()` per event under `root`, forever (lists again after a compaction).
fn watch(client: &Client, root: &str, tx: &mpsc::Sender<()>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let rev = match client.range_prefix(root) {
            Ok((_, rev)) => rev,
            Err(e) => {
                log::info!("netpol: listing {root}: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Something may have changed while no watch ran.
        if tx.send(()).is_err() {
            return;
        }
        let w = match client.watch_prefix(root, rev + 1) {
            Ok(w) => w,
            Err(e) => {
                log::info!("netpol: watching {root}: {e}");
                std::thread::sleep(backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        for ev in w {
            match ev {
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    log::info!("netpol: watch: {e}");
                    std::thread::sleep(backoff);
                }
            }
        }
    }
}
