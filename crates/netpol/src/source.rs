//! Where the objects live ([`ObjectStore`]): this host's file ([`FileSource`], one host) or
//! etcd ([`crate::cluster::EtcdSource`], every host of an overlay). The store
//! ([`crate::Store`]) reads and writes the objects only through this trait; a shared source
//! also carries the pods attached on other hosts (peers) and takes this host's attachments
//! (published at ADD, withdrawn at DEL and GC).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{
    store::{read_json, write_json, Objects, PodAttachment},
    PolicyError,
};

/// The objects in force and the pods attached on other hosts, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Namespaces, Pods, NetworkPolicies.
    pub objects: Objects,
    /// Attachments published by other hosts (empty for one host).
    pub remote: Vec<PodAttachment>,
}

/// The objects' home. `Send + Sync`: the agent's sync loop holds one.
pub trait ObjectStore: Send + Sync {
    /// What is in force now.
    fn load(&self) -> Result<Snapshot, PolicyError>;
    /// Make the objects `new` where they were `old` (as `load` gave them): one write, all or
    /// nothing (a file rename, an etcd transaction). Objects in neither are left alone.
    fn save(&self, old: &Objects, new: &Objects) -> Result<(), PolicyError>;
    /// True when other hosts share these objects: `apply`/`delete` only write them (each
    /// host's agent enforces), and the kernel of this host holds the elements of its own pods
    /// only.
    fn shared(&self) -> bool {
        false
    }
    /// The directory holding the objects' compiled form ([`crate::index`], one host), read
    /// by an ADD or DEL instead of every object; `None`: every object is loaded.
    fn compiled_dir(&self) -> Option<&Path> {
        None
    }
    /// Tell the other hosts about this host's attachment (ADD).
    fn publish(&self, _att: &PodAttachment) -> Result<(), PolicyError> {
        Ok(())
    }
    /// Forget this host's attachment (DEL; idempotent).
    fn withdraw(&self, _network: &str, _cid: &str, _ifname: &str) -> Result<(), PolicyError> {
        Ok(())
    }
    /// Forget this host's attachments of `network` not in `valid` ((container, ifname)).
    fn retain(&self, _network: &str, _valid: &[(String, String)]) -> Result<(), PolicyError> {
        Ok(())
    }
}

/// One host: `objects.json` in the policy dir, kept across reboots.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
}

impl FileSource {
    /// The objects of `dir/objects.json`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSource { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ObjectStore for FileSource {
    fn load(&self) -> Result<Snapshot, PolicyError> {
        Ok(Snapshot {
            objects: read_json(&self.dir.join("objects.json"))?.unwrap_or_default(),
            remote: Vec::new(),
        })
    }

    /// `objects.json`, then its compiled form ([`crate::index`]).
    fn save(&self, _old: &Objects, new: &Objects) -> Result<(), PolicyError> {
        write_json(&self.dir, "objects.json", new)?;
        crate::index::write(&self.dir, new)
    }

    fn compiled_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// The attachments of this host and `remote` in one map for [`crate::store::world`] (remote
/// ones under keys no local one has).
pub fn with_remote(
    local: &BTreeMap<String, PodAttachment>,
    remote: &[PodAttachment],
) -> BTreeMap<String, PodAttachment> {
    let mut all = local.clone();
    for (i, r) in remote.iter().enumerate() {
        all.insert(format!("\u{0}remote/{i}"), r.clone());
    }
    all
}
