//! The one-host store: the applied objects (`$CNIRS_POLICY_DIR`, default
//! `/var/lib/cni-rs/policy`, kept across reboots so a pod re-created after one is isolated
//! again before its ADD returns) and the pods' attachments (addresses, in the firewall's
//! per-netns run state, gone with the namespace). One flock over both and the kernel batch.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, OpenOptions},
    io::ErrorKind,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nftplan::{Elem, Firewall};
use nix::fcntl::{Flock, FlockArg};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    compile::{compile, compile_touching, World},
    index::{world_of, Compiled, Index, Lookup},
    model::{Namespace, NetworkPolicy, Object, Pod},
    policy::{validate, Labels, PodInfo, Policy, Valid},
    source::{with_remote, FileSource, ObjectStore},
    PolicyError,
};

pub use crate::{index::world, listing::listing};

/// Default directory of the applied objects.
pub const DEFAULT_POLICY_DIR: &str = "/var/lib/cni-rs/policy";

/// `$CNIRS_POLICY_DIR`, else [`DEFAULT_POLICY_DIR`].
pub fn policy_dir() -> PathBuf {
    std::env::var_os("CNIRS_POLICY_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR), PathBuf::from)
}

/// The applied objects (`objects.json`), as they were given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Objects {
    /// by name
    #[serde(default)]
    pub namespaces: BTreeMap<String, Namespace>,
    /// by `namespace/name`
    #[serde(default)]
    pub pods: BTreeMap<String, Pod>,
    /// by `namespace/name`
    #[serde(default)]
    pub policies: BTreeMap<String, NetworkPolicy>,
}

/// One pod attachment (`netpol-pods.json` in the firewall's state dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodAttachment {
    /// CNI network name
    pub network: String,
    /// CNI_CONTAINERID
    pub container_id: String,
    /// CNI_IFNAME
    pub ifname: String,
    /// K8S_POD_NAMESPACE
    pub namespace: String,
    /// K8S_POD_NAME
    pub name: String,
    /// the pod's addresses on that network
    pub ips: Vec<IpAddr>,
}

impl PodAttachment {
    fn key(&self) -> String {
        att_key(&self.network, &self.container_id, &self.ifname)
    }
}

fn att_key(network: &str, cid: &str, ifname: &str) -> String {
    format!("{network}/{cid}/{ifname}")
}

/// `namespace/name` of a namespaced object.
fn ns_key(m: &crate::model::ObjectMeta) -> String {
    format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name)
}

/// The store of one host (one network namespace's table), its objects in a file (one host)
/// or in etcd (shared: [`crate::cluster::EtcdSource`]).
pub struct Store {
    dir: PathBuf,
    fw: Firewall,
    src: Box<dyn ObjectStore>,
}

struct Held {
    _lock: Flock<fs::File>,
}

impl Store {
    /// The store at [`policy_dir`] over the firewall of this network namespace.
    pub fn open() -> Result<Self, PolicyError> {
        Ok(Store::with(policy_dir(), Firewall::open()?))
    }

    /// A store at `dir` over `fw` (tests).
    pub fn with(dir: impl Into<PathBuf>, fw: Firewall) -> Self {
        let dir = dir.into();
        let src = Box::new(FileSource::new(dir.clone()));
        Store::with_source(dir, fw, src)
    }

    /// A store whose objects live in `src` (`dir`: the lock of a one-host store).
    pub fn with_source(dir: impl Into<PathBuf>, fw: Firewall, src: Box<dyn ObjectStore>) -> Self {
        Store {
            dir: dir.into(),
            fw,
            src,
        }
    }

    /// The store at [`policy_dir`] with its objects in `src`, over this netns's firewall.
    pub fn open_with(src: Box<dyn ObjectStore>) -> Result<Self, PolicyError> {
        Ok(Store::with_source(policy_dir(), Firewall::open()?, src))
    }

    /// Whether the objects are shared with other hosts (etcd).
    pub fn shared(&self) -> bool {
        self.src.shared()
    }

    /// One host: the policy dir's lock (objects and kernel of this netns). Shared: the lock
    /// of this netns's state (its attachments and kernel; the objects are etcd's).
    fn lock(&self) -> Result<Held, PolicyError> {
        let dir = if self.src.shared() {
            self.fw.state_dir().to_path_buf()
        } else {
            self.dir.clone()
        };
        mkdir(&dir)?;
        let path = dir.join(if self.src.shared() {
            "netpol.lock"
        } else {
            "lock"
        });
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| PolicyError::io(&path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| PolicyError::io(&path, std::io::Error::from(errno)))?;
        Ok(Held { _lock: lock })
    }

    fn atts_path(&self) -> PathBuf {
        self.fw.state_dir().join("netpol-pods.json")
    }

    /// The applied objects.
    pub fn objects(&self) -> Result<Objects, PolicyError> {
        Ok(self.src.load()?.objects)
    }

    /// The pod attachments, by `network/container/ifname`.
    pub fn attachments(&self) -> Result<BTreeMap<String, PodAttachment>, PolicyError> {
        Ok(read_json(&self.atts_path())?.unwrap_or_default())
    }

    /// The compiler's input.
    pub fn world(&self) -> Result<World, PolicyError> {
        let snap = self.src.load()?;
        world(
            &snap.objects,
            &with_remote(&self.attachments()?, &snap.remote),
        )
    }

    /// Create or replace `objs` (validated first, all or nothing) and enforce at once.
    /// Returns the (added, removed) element counts of the kernel transaction.
    pub fn apply(&self, objs: &[Object]) -> Result<(usize, usize), PolicyError> {
        validate_all(objs)?;
        if self.src.shared() {
            let old = self.objects()?;
            let mut o = old.clone();
            insert_all(&mut o, objs);
            self.src.save(&old, &o)?;
            return Ok((0, 0));
        }
        let _l = self.lock()?;
        let mut o = self.objects()?;
        insert_all(&mut o, objs);
        self.commit(Some(o), None)
    }

    /// Delete `objs` (all must exist: else nothing changes) and enforce at once (shared: only
    /// written, each host's agent enforces).
    pub fn delete(&self, objs: &[Object]) -> Result<(usize, usize), PolicyError> {
        if self.src.shared() {
            let old = self.objects()?;
            let mut o = old.clone();
            remove_all(&mut o, objs)?;
            self.src.save(&old, &o)?;
            return Ok((0, 0));
        }
        let _l = self.lock()?;
        let mut o = self.objects()?;
        remove_all(&mut o, objs)?;
        self.commit(Some(o), None)
    }

    /// A pod's attachment (the plugin's ADD): recorded and enforced before it returns (and
    /// published to the other hosts first when shared; withdrawn if enforcing fails). Only
    /// the elements that concern its addresses (and those of the attachment it replaces) are
    /// compiled and changed ([`compile_touching`]): the cost does not grow with the policies
    /// that do not name it.
    pub fn attach(&self, att: PodAttachment) -> Result<(usize, usize), PolicyError> {
        let _l = self.lock()?;
        self.src.publish(&att)?;
        let (network, cid, ifname) = (
            att.network.clone(),
            att.container_id.clone(),
            att.ifname.clone(),
        );
        let old = self.attachments()?;
        let mut atts = old.clone();
        let mut ips = att.ips.clone();
        if let Some(prev) = atts.insert(att.key(), att) {
            ips.extend(prev.ips);
        }
        self.change(&old, atts, &ips).inspect_err(|_| {
            if let Err(e) = self.src.withdraw(&network, &cid, &ifname) {
                log::warn!("netpol: withdrawing {network}/{cid}/{ifname}: {e}");
            }
        })
    }

    /// Forget an attachment (DEL; idempotent; goes on past a failure, returns the first).
    pub fn detach(&self, network: &str, cid: &str, ifname: &str) -> Result<(), PolicyError> {
        let _l = self.lock()?;
        let local = self.detach_locked(network, cid, ifname);
        let shared = self.src.withdraw(network, cid, ifname);
        local.and(shared)
    }

    fn detach_locked(&self, network: &str, cid: &str, ifname: &str) -> Result<(), PolicyError> {
        let old = self.attachments()?;
        let mut atts = old.clone();
        match atts.remove(&att_key(network, cid, ifname)) {
            Some(prev) => self.change(&old, atts, &prev.ips).map(drop),
            // Nothing recorded: still converge the kernel (a DEL after a failed ADD).
            None => self.commit(None, None).map(drop),
        }
    }

    /// The stored objects with the attachments `atts` as the compiler's world, its policies
    /// still to be taken from the second value for the pods concerned. One host: the compiled
    /// objects, and only the policies filed under those pods. Shared: every object, validated
    /// (etcd holds them as given), and the other hosts' attachments.
    fn base_world(
        &self,
        atts: &BTreeMap<String, PodAttachment>,
    ) -> Result<(World, Policies), PolicyError> {
        if let Some(dir) = self.src.compiled_dir() {
            let (ns, pods, lookup) = Index::open(dir)?.base(dir);
            return Ok((world_of(ns, pods, atts), Policies::Filed(lookup)));
        }
        let snap = self.src.load()?;
        let c = Compiled::of(&snap.objects)?;
        let w = world_of(c.namespaces, c.pods, &with_remote(atts, &snap.remote));
        Ok((w, Policies::All(c.policies)))
    }

    /// Replace the attachments `old` by `atts`, a change that concerns only the addresses
    /// `ips`: the elements touching them are compiled in both worlds and the difference goes
    /// to the kernel in one transaction (the record's log appended). The attachments are
    /// written first, and back when the kernel refuses.
    fn change(
        &self,
        old: &BTreeMap<String, PodAttachment>,
        atts: BTreeMap<String, PodAttachment>,
        ips: &[IpAddr],
    ) -> Result<(usize, usize), PolicyError> {
        let (mut w, mut policies) = self.base_world(old)?;
        // The world after: only the pods whose attachments changed get their addresses again.
        let changed: BTreeSet<(&str, &str)> = old
            .iter()
            .filter(|(k, a)| atts.get(*k) != Some(*a))
            .chain(atts.iter().filter(|(k, a)| old.get(*k) != Some(*a)))
            .map(|(_, a)| (a.namespace.as_str(), a.name.as_str()))
            .collect();
        let mut now_ips: Vec<(&str, &str, Vec<IpAddr>)> = Vec::new();
        for (ns, name) in changed {
            let mut now: Vec<IpAddr> = Vec::new();
            for a in atts
                .values()
                .filter(|a| a.namespace == ns && a.name == name)
            {
                now.extend(
                    a.ips
                        .iter()
                        .filter(|ip| !now.contains(ip))
                        .collect::<Vec<_>>(),
                );
            }
            now_ips.push((ns, name, now));
        }
        // The pods owning one of `ips`, before and after: only their policies can matter.
        let owns = |p: &[IpAddr]| p.iter().any(|ip| ips.contains(ip));
        let before_owned = w.pods.iter().any(|p| owns(&p.ips));
        let no_labels = Labels::new();
        let who: Vec<(&str, &Labels)> = owners(&w, ips)
            .chain(
                now_ips
                    .iter()
                    .filter(|(_, _, now)| owns(now))
                    .map(|(ns, name, _)| {
                        let labels = w
                            .pods
                            .iter()
                            .find(|p| p.namespace == *ns && p.name == *name)
                            .map_or(&no_labels, |p| &p.labels);
                        (*ns, labels)
                    }),
            )
            .collect();
        w.policies = policies.for_pods(&who)?;
        // No pod owned `ips` before (a new pod): nothing touched them.
        let mut before = if before_owned {
            compile_touching(&w, ips)
        } else {
            BTreeSet::new()
        };
        for (ns, name, now) in now_ips {
            match w
                .pods
                .iter_mut()
                .find(|p| p.namespace == ns && p.name == name)
            {
                Some(p) => p.ips = now,
                None => w.pods.push(PodInfo {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    ips: now,
                    ..PodInfo::default()
                }),
            }
        }
        let mut after = compile_touching(&w, ips);
        if self.src.shared() {
            // Each host holds its own pods' elements only (the others' hosts hold theirs).
            keep_local(&mut before, old);
            keep_local(&mut after, &atts);
        }
        self.apply_change(old, &atts, &before, &after)
    }

    /// Write `atts`, then move the kernel from `before` to `after` in one transaction (the
    /// record's log appended); the attachments `old` are written back when it refuses.
    fn apply_change(
        &self,
        old: &BTreeMap<String, PodAttachment>,
        atts: &BTreeMap<String, PodAttachment>,
        before: &BTreeSet<Elem>,
        after: &BTreeSet<Elem>,
    ) -> Result<(usize, usize), PolicyError> {
        let add: Vec<Elem> = after.difference(before).cloned().collect();
        let gone: Vec<Elem> = before.difference(after).cloned().collect();
        write_json(self.fw.state_dir(), "netpol-pods.json", atts)?;
        if let Err(e) = self.fw.change_netpol(&add, &gone) {
            write_json(self.fw.state_dir(), "netpol-pods.json", old)?;
            return Err(e.into());
        }
        Ok((add.len(), gone.len()))
    }

    /// Forget every attachment of `network` not in `valid` ((container, ifname) pairs).
    pub fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<(), PolicyError> {
        let _l = self.lock()?;
        let mut atts = self.attachments()?;
        atts.retain(|_, a| {
            a.network != network
                || valid
                    .iter()
                    .any(|(c, i)| *c == a.container_id && *i == a.ifname)
        });
        let local = self.commit(None, Some(atts)).map(drop);
        local.and(self.src.retain(network, valid))
    }

    /// The elements the kernel must hold for the pod addresses `ips` (CHECK), compiled from
    /// the store now, and those of them it lacks.
    pub fn missing_for(&self, ips: &[IpAddr]) -> Result<(Vec<Elem>, Vec<Elem>), PolicyError> {
        let _l = self.lock()?;
        let atts = self.attachments()?;
        // As an ADD reads them: the policies filed for the pods owning `ips` (one host).
        let (mut w, mut policies) = self.base_world(&atts)?;
        let who: Vec<(&str, &Labels)> = owners(&w, ips).collect();
        w.policies = policies.for_pods(&who)?;
        let mut want = compile_touching(&w, ips);
        if self.src.shared() {
            // What this host's kernel holds: its own pods' elements (as `change` applies).
            keep_local(&mut want, &atts);
        }
        let want: Vec<Elem> = want.into_iter().collect();
        let missing = self.fw.check_netpol(&want)?;
        Ok((want, missing))
    }

    /// Enforce the store as it is (level-triggered repair).
    pub fn sync(&self) -> Result<(usize, usize), PolicyError> {
        let _l = self.lock()?;
        self.commit(None, None)
    }

    /// Write the new state, compile it and make the kernel hold exactly its elements; when
    /// the kernel refuses, the old state is written back and the error returned.
    fn commit(
        &self,
        objects: Option<Objects>,
        atts: Option<BTreeMap<String, PodAttachment>>,
    ) -> Result<(usize, usize), PolicyError> {
        let snap = self.src.load()?;
        let (old_o, old_a) = (snap.objects, self.attachments()?);
        let o = objects.clone().unwrap_or_else(|| old_o.clone());
        let a = atts.clone().unwrap_or_else(|| old_a.clone());
        let mut elems = compile(&world(&o, &with_remote(&a, &snap.remote))?);
        if self.src.shared() {
            keep_local(&mut elems, &a);
        }
        if objects.is_some() {
            self.src.save(&old_o, &o)?;
        }
        if atts.is_some() {
            write_json(self.fw.state_dir(), "netpol-pods.json", &a)?;
        }
        match self.fw.set_netpol(&elems) {
            Ok(n) => Ok(n),
            Err(e) => {
                if objects.is_some() {
                    self.src.save(&o, &old_o)?;
                }
                if atts.is_some() {
                    write_json(self.fw.state_dir(), "netpol-pods.json", &old_a)?;
                }
                Err(e.into())
            }
        }
    }
}

/// Where an ADD, DEL or CHECK takes its policies from.
enum Policies {
    /// one host: those filed under the pods concerned
    Filed(Lookup),
    /// shared: all of them
    All(Vec<Policy>),
}

impl Policies {
    /// The policies that may concern the pods `who` (namespace, labels): all when shared.
    fn for_pods(&mut self, who: &[(&str, &Labels)]) -> Result<Vec<Policy>, PolicyError> {
        match self {
            Policies::Filed(l) => l.policies_for(who),
            Policies::All(all) => Ok(std::mem::take(all)),
        }
    }
}

/// The pods of `w` owning one of `ips`, as (namespace, labels).
fn owners<'a>(w: &'a World, ips: &'a [IpAddr]) -> impl Iterator<Item = (&'a str, &'a Labels)> {
    w.pods
        .iter()
        .filter(|p| p.ips.iter().any(|ip| ips.contains(ip)))
        .map(|p| (p.namespace.as_str(), &p.labels))
}

fn insert_all(o: &mut Objects, objs: &[Object]) {
    for obj in objs {
        match obj {
            Object::Namespace(n) => {
                o.namespaces.insert(n.metadata.name.clone(), n.clone());
            }
            Object::Pod(p) => {
                o.pods.insert(ns_key(&p.metadata), p.clone());
            }
            Object::NetworkPolicy(p) => {
                o.policies.insert(ns_key(&p.metadata), p.clone());
            }
        }
    }
}

/// Remove `objs` from `o`; all must be there (else `NotFound` naming the missing ones).
fn remove_all(o: &mut Objects, objs: &[Object]) -> Result<(), PolicyError> {
    let mut missing = Vec::new();
    for obj in objs {
        let gone = match obj {
            Object::Namespace(n) => o.namespaces.remove(&n.metadata.name).is_some(),
            Object::Pod(p) => o.pods.remove(&ns_key(&p.metadata)).is_some(),
            Object::NetworkPolicy(p) => o.policies.remove(&ns_key(&p.metadata)).is_some(),
        };
        if !gone {
            missing.push(obj.key());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::NotFound(missing.join(", ")))
    }
}

/// Shared objects: this host's kernel holds the elements of its own pods only (a remote
/// pod's isolation is its own host's business; remote pods stay in as peers).
fn keep_local(elems: &mut BTreeSet<Elem>, local: &BTreeMap<String, PodAttachment>) {
    let ips: BTreeSet<IpAddr> = local.values().flat_map(|a| a.ips.iter().copied()).collect();
    elems.retain(|e| match e {
        Elem::NpIsolated { pod, .. } | Elem::NpAllow { pod, .. } | Elem::NpPair { pod, .. } => {
            ips.contains(pod)
        }
        _ => true,
    });
}

fn validate_all(objs: &[Object]) -> Result<Vec<Valid>, PolicyError> {
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for o in objs {
        match validate(o) {
            Ok(v) => out.push(v),
            Err(e) => errs.push(e.to_string()),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(PolicyError::Rejected(errs.join("\n")))
    }
}

fn mkdir(dir: &Path) -> Result<(), PolicyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PolicyError::io(dir, e))
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, PolicyError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| PolicyError::State {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PolicyError::io(path, e)),
    }
}

/// Write `name` in `dir` through a temporary file and a rename (0600).
pub(crate) fn write_json<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), PolicyError> {
    mkdir(dir)?;
    let dst = dir.join(name);
    let bytes = serde_json::to_vec(value).map_err(|source| PolicyError::State {
        path: dst.clone(),
        source,
    })?;
    nftplan::replace_file(dir, name, &bytes, true).map_err(|(path, e)| PolicyError::io(&path, e))
}
