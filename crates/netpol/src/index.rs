//! The objects compiled once, when they change (one host): `cnirs policy apply` and `delete`
//! write them, validated and typed, next to `objects.json`, with the policies indexed by the
//! pods they can select or name as a peer. A pod's ADD or DEL then neither re-reads nor
//! re-validates every object: it reads the namespaces and pods (small, and independent of the
//! policies) and only the policies filed under its namespace and labels, so its cost does not
//! grow with the policies that cannot concern it.
//!
//! ```text
//! <policy dir>/objects.json          the objects as applied (the authority)
//! <policy dir>/compiled.json         [`Meta`]: the stamp of objects.json it was made from,
//!                                    namespaces, pods (validated), the bucket directory
//! <policy dir>/compiled-<n>/<i>.json a bucket: the policies filed under the keys of hash i
//! ```
//! Keys (a candidate filter only, a superset: the compiler decides exactly):
//! - `s/<ns>/<label>`: policies of `ns` whose `podSelector` can select a pod with `label`
//!   (`k=v` or `k`; `` when the selector requires no label);
//! - `p/<ns>/<label>`: policies with a rule whose peer selector can select a pod of `ns` with
//!   `label` (`ns` is [`OTHER`] for a namespace no object names: only its name label);
//! - [`ANY_ADDR`]: policies with an egress rule that resolves a named port on every pod of an
//!   address range (no peer, or an `ipBlock`).
//!
//! When `objects.json` no longer matches the stamp (edited by hand, a crash between the two
//! writes, an older version), the compiled form is made again from it (validated: an invalid
//! file is refused, as before) by the reader, which holds the policy lock.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nftplan::NpDir;
use serde::{Deserialize, Serialize};

use crate::{
    compile::World,
    model::Object,
    policy::{
        validate, Labels, Op, Peer, PodInfo, Policy, PortSpec, Selector, Valid, NS_NAME_LABEL,
    },
    store::{read_json, write_json, Objects, PodAttachment},
    PolicyError,
};

/// The compiled form's entry point in the policy dir.
pub(crate) const META: &str = "compiled.json";
const OBJECTS: &str = "objects.json";
const BUCKETS: &str = "compiled-";
/// Bumped when the compiled form changes shape (an older one is made again).
const VERSION: u32 = 1;
/// The namespace key of a namespace that no object names.
const OTHER: &str = "\u{0}other";
/// See the module doc.
const ANY_ADDR: &str = "b";

/// What identifies one version of `objects.json` (replaced by a rename: a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Result<Option<Stamp>, PolicyError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PolicyError::io(path, e)),
    }
}

/// `compiled.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    /// the `objects.json` it was made from (`None`: there was none)
    objects: Option<Stamp>,
    /// the bucket directory's name
    dir: String,
    /// how many bucket files it holds (each exists, maybe an empty list)
    slots: u64,
    /// namespace -> labels (those applied)
    namespaces: BTreeMap<String, Labels>,
    /// every namespace an object names
    known: BTreeSet<String>,
    /// the Pod objects, validated (no addresses)
    pods: Vec<PodInfo>,
}

/// A bucket file: the keys whose hash it has, each with its policies: whole (`s/` keys: they
/// may select the pod) or with only the rules that may name the pod (`p/` keys, [`ANY_ADDR`]).
type Bucket = Vec<(String, Vec<Filed>)>;

/// A policy as filed.
#[derive(Debug, Serialize, Deserialize)]
struct Filed {
    /// all its rules (else only those that may name the pods of the key)
    whole: bool,
    policy: Policy,
}

/// What is filed under one key: policy index -> `None` (whole) or the (ingress, egress)
/// indices of the rules that may name the key's pods.
type Filing = BTreeMap<usize, Option<(BTreeSet<usize>, BTreeSet<usize>)>>;

/// The stored objects validated and typed: what the compiler takes, less the addresses.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    /// namespace -> labels (those applied)
    pub namespaces: BTreeMap<String, Labels>,
    /// the Pod objects
    pub pods: Vec<PodInfo>,
    /// the policies
    pub policies: Vec<Policy>,
}

impl Compiled {
    /// Validate every stored object (a file edited by hand is refused, not half-used).
    pub fn of(o: &Objects) -> Result<Self, PolicyError> {
        let mut c = Compiled::default();
        for n in o.namespaces.values() {
            if let Valid::Namespace(name, labels) = validate(&Object::Namespace(n.clone()))? {
                c.namespaces.insert(name, labels);
            }
        }
        for p in o.pods.values() {
            if let Valid::Pod(info) = validate(&Object::Pod(p.clone()))? {
                c.pods.push(info);
            }
        }
        for p in o.policies.values() {
            if let Valid::Policy(p) = validate(&Object::NetworkPolicy(p.clone()))? {
                c.policies.push(p);
            }
        }
        Ok(c)
    }

    fn known(&self) -> BTreeSet<String> {
        self.namespaces
            .keys()
            .cloned()
            .chain(self.pods.iter().map(|p| p.namespace.clone()))
            .chain(self.policies.iter().map(|p| p.namespace.clone()))
            .collect()
    }

    /// Key -> what is filed under it.
    fn buckets(&self) -> BTreeMap<String, Filing> {
        let known = self.known();
        let w = World {
            namespaces: self.namespaces.clone(),
            ..World::default()
        };
        let mut out: BTreeMap<String, Filing> = BTreeMap::new();
        for (i, p) in self.policies.iter().enumerate() {
            for lk in sel_keys(Some(&p.pod_selector)) {
                out.entry(format!("s/{}/{lk}", p.namespace))
                    .or_default()
                    .insert(i, None);
            }
            let mut file = |key: String, dir: NpDir, r: usize| {
                if let Some((ing, eg)) = out
                    .entry(key)
                    .or_default()
                    .entry(i)
                    .or_insert_with(|| Some(Default::default()))
                {
                    match dir {
                        NpDir::Ingress => ing.insert(r),
                        NpDir::Egress => eg.insert(r),
                    };
                }
            };
            for (dir, rules) in [(NpDir::Ingress, &p.ingress), (NpDir::Egress, &p.egress)] {
                for (r, rule) in rules.iter().flatten().enumerate() {
                    let named = rule
                        .ports
                        .iter()
                        .any(|s| matches!(s.port, PortSpec::Named(_)));
                    let ranges = rule.peers.is_empty()
                        || rule.peers.iter().any(|x| matches!(x, Peer::Block { .. }));
                    if dir == NpDir::Egress && named && ranges {
                        file(ANY_ADDR.to_owned(), dir, r);
                    }
                    for peer in &rule.peers {
                        let Peer::Pods { namespaces, pods } = peer else {
                            continue;
                        };
                        let nss: Vec<&str> = match namespaces {
                            None => vec![p.namespace.as_str()],
                            Some(sel) => known
                                .iter()
                                .filter(|n| sel.matches(&w.ns_labels(n)))
                                .map(String::as_str)
                                .chain(unnamed_may_match(sel).then_some(OTHER))
                                .collect(),
                        };
                        let lks = sel_keys(pods.as_ref());
                        for n in nss {
                            for lk in &lks {
                                file(format!("p/{n}/{lk}"), dir, r);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// `p` with only the rules `keep` (ingress, egress) of each direction (a direction without
/// any: `None`, as if it had no such type: it only names peers, it isolates nothing here).
fn reduced(p: &Policy, keep: &(BTreeSet<usize>, BTreeSet<usize>)) -> Policy {
    let only = |rules: &Option<Vec<crate::policy::Rule>>, keep: &BTreeSet<usize>| {
        let kept: Vec<_> = rules
            .iter()
            .flatten()
            .enumerate()
            .filter(|(r, _)| keep.contains(r))
            .map(|(_, rule)| rule.clone())
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    Policy {
        ingress: only(&p.ingress, &keep.0),
        egress: only(&p.egress, &keep.1),
        ..p.clone()
    }
}

/// The keys a selector is filed under: one required label (`k=v`; each value of an `In`;
/// `k` of an `Exists`), or `` (it may select a pod without labels).
fn sel_keys(sel: Option<&Selector>) -> Vec<String> {
    let Some(sel) = sel else {
        return vec![String::new()];
    };
    if let Some((k, v)) = sel.labels.iter().next() {
        return vec![format!("{k}={v}")];
    }
    for (k, op, vals) in &sel.exprs {
        match op {
            Op::In => return vals.iter().map(|v| format!("{k}={v}")).collect(),
            Op::Exists => return vec![k.clone()],
            Op::NotIn | Op::DoesNotExist => {}
        }
    }
    vec![String::new()]
}

/// The keys a pod with `labels` is looked up under (see [`sel_keys`]).
fn pod_keys(labels: &Labels) -> Vec<String> {
    let mut keys = vec![String::new()];
    for (k, v) in labels {
        keys.push(format!("{k}={v}"));
        keys.push(k.clone());
    }
    keys
}

/// Can `sel` select a namespace that has only its name label (whatever the name)?
fn unnamed_may_match(sel: &Selector) -> bool {
    sel.labels.keys().all(|k| k == NS_NAME_LABEL)
        && sel
            .exprs
            .iter()
            .all(|(k, op, _)| k == NS_NAME_LABEL || matches!(op, Op::NotIn | Op::DoesNotExist))
}

/// The file of a key among `slots`: FNV-1a, 64 bits (keys are user strings; keys that
/// share a file are told apart inside it).
fn file_of(key: &str, slots: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}.json", h % slots.max(1))
}

/// The compiled form of `<dir>/objects.json` (validated, as it is now), written next to it.
/// Called with the policy lock held, after `objects.json` was written.
pub(crate) fn write(dir: &Path, o: &Objects) -> Result<(), PolicyError> {
    let c = Compiled::of(o)?;
    let objects = stamp(&dir.join(OBJECTS))?;
    let name = format!(
        "{BUCKETS}{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let root = dir.join(&name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| PolicyError::io(&root, e))?;
    let buckets = c.buckets();
    // About one key per file; every file exists, so a missing one is an error, not "no
    // policy" (they are not synced one by one: after a crash a missing or torn file makes the
    // reader compile them again, see `Lookup::policies_for`).
    let slots = (buckets.len() as u64).next_power_of_two().max(16);
    let mut files: BTreeMap<String, Bucket> = (0..slots)
        .map(|i| (format!("{i}.json"), Bucket::new()))
        .collect();
    for (key, filing) in buckets {
        let filed = filing
            .iter()
            .map(|(&i, keep)| match keep {
                None => Filed {
                    whole: true,
                    policy: c.policies[i].clone(),
                },
                Some(keep) => Filed {
                    whole: false,
                    policy: reduced(&c.policies[i], keep),
                },
            })
            .collect();
        files
            .entry(file_of(&key, slots))
            .or_default()
            .push((key, filed));
    }
    for (file, bucket) in &files {
        let path = root.join(file);
        let bytes = serde_json::to_vec(bucket).map_err(|source| PolicyError::State {
            path: path.clone(),
            source,
        })?;
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| PolicyError::io(&path, e))?;
    }
    let known = c.known();
    write_json(
        dir,
        META,
        &Meta {
            version: VERSION,
            objects,
            dir: name.clone(),
            slots,
            namespaces: c.namespaces,
            known,
            pods: c.pods,
        },
    )?;
    // The older bucket directories: nobody reads them any more (the lock is held).
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(BUCKETS) && n != name && e.path().is_dir() {
                if let Err(err) = fs::remove_dir_all(e.path()) {
                    log::warn!("netpol: removing {}: {err}", e.path().display());
                }
            }
        }
    }
    Ok(())
}

/// The compiled objects, read for one ADD or DEL.
pub(crate) struct Index {
    root: PathBuf,
    meta: Meta,
}

impl Index {
    /// The compiled form of `<dir>/objects.json`, made again first when it is missing or
    /// older than the file. The caller holds the policy lock.
    pub fn open(dir: &Path) -> Result<Index, PolicyError> {
        let now = stamp(&dir.join(OBJECTS))?;
        // A compiled form that does not parse is made again, not trusted.
        if let Ok(Some(meta)) = read_json::<Meta>(&dir.join(META)) {
            let root = dir.join(&meta.dir);
            if meta.version == VERSION && meta.objects == now && root.is_dir() {
                return Ok(Index { root, meta });
            }
        }
        let o: Objects = read_json(&dir.join(OBJECTS))?.unwrap_or_default();
        write(dir, &o)?;
        match read_json::<Meta>(&dir.join(META))? {
            Some(meta) => Ok(Index {
                root: dir.join(&meta.dir),
                meta,
            }),
            None => Err(PolicyError::io(
                &dir.join(META),
                std::io::Error::from(ErrorKind::NotFound),
            )),
        }
    }

    /// The namespaces applied, and the Pod objects.
    pub fn base(self, dir: &Path) -> (BTreeMap<String, Labels>, Vec<PodInfo>, Lookup) {
        (
            self.meta.namespaces,
            self.meta.pods,
            Lookup {
                dir: dir.to_path_buf(),
                root: self.root,
                known: self.meta.known,
                slots: self.meta.slots,
            },
        )
    }
}

/// Finds the policies filed for some pods.
pub(crate) struct Lookup {
    dir: PathBuf,
    root: PathBuf,
    known: BTreeSet<String>,
    slots: u64,
}

impl Lookup {
    /// The policies that may select, or name as a peer, a pod of namespace `ns` with `labels`
    /// for each of `who` (a superset of those that do; each once, in a stable order).
    /// A bucket file missing or torn (a crash after the compiled form was recorded, before
    /// its files reached the disk): it is all compiled again from `objects.json`, once.
    pub fn policies_for(&mut self, who: &[(&str, &Labels)]) -> Result<Vec<Policy>, PolicyError> {
        match self.filed_for(who) {
            Ok(found) => Ok(found),
            Err(e) => {
                log::warn!("netpol: {e}: compiling the objects again");
                let o: Objects = read_json(&self.dir.join(OBJECTS))?.unwrap_or_default();
                write(&self.dir, &o)?;
                let Index { root, meta } = Index::open(&self.dir)?;
                (self.root, self.known, self.slots) = (root, meta.known, meta.slots);
                self.filed_for(who)
            }
        }
    }

    fn filed_for(&self, who: &[(&str, &Labels)]) -> Result<Vec<Policy>, PolicyError> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for (ns, labels) in who {
            let peer_ns = if self.known.contains(*ns) { *ns } else { OTHER };
            for lk in pod_keys(labels) {
                keys.insert(format!("s/{ns}/{lk}"));
                keys.insert(format!("p/{peer_ns}/{lk}"));
            }
        }
        if !who.is_empty() {
            keys.insert(ANY_ADDR.to_owned());
        }
        let mut files: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for k in &keys {
            files.entry(file_of(k, self.slots)).or_default().insert(k);
        }
        // A policy whole wherever it is filed whole (it may select one of `who`); else the
        // rules of its parts together (a rule twice allows nothing more).
        let mut found: BTreeMap<(String, String), Filed> = BTreeMap::new();
        for (file, want) in files {
            let path = self.root.join(file);
            let Some(bucket) = read_json::<Bucket>(&path)? else {
                return Err(PolicyError::io(
                    &path,
                    std::io::Error::from(ErrorKind::NotFound),
                ));
            };
            for (key, filed) in bucket {
                if !want.contains(key.as_str()) {
                    continue;
                }
                for f in filed {
                    let id = (f.policy.namespace.clone(), f.policy.name.clone());
                    match found.get_mut(&id) {
                        None => {
                            found.insert(id, f);
                        }
                        Some(had) if had.whole => {}
                        Some(had) if f.whole => *had = f,
                        Some(had) => {
                            for (mine, more) in [
                                (&mut had.policy.ingress, f.policy.ingress),
                                (&mut had.policy.egress, f.policy.egress),
                            ] {
                                if let Some(more) = more {
                                    mine.get_or_insert_with(Vec::new).extend(more);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(found.into_values().map(|f| f.policy).collect())
    }
}

/// The compiler's input from stored objects (validated again: a file edited by hand is
/// refused, not half-used) and attachments.
pub fn world(o: &Objects, atts: &BTreeMap<String, PodAttachment>) -> Result<World, PolicyError> {
    let c = Compiled::of(o)?;
    let mut w = world_of(c.namespaces, c.pods, atts);
    w.policies = c.policies;
    Ok(w)
}

/// The world of `namespaces` and `pods` (no policies) with the attachments' addresses (a pod
/// attached without a Pod object has no labels).
pub(crate) fn world_of(
    namespaces: BTreeMap<String, Labels>,
    pods: Vec<PodInfo>,
    atts: &BTreeMap<String, PodAttachment>,
) -> World {
    let mut by: BTreeMap<(String, String), PodInfo> = pods
        .into_iter()
        .map(|p| ((p.namespace.clone(), p.name.clone()), p))
        .collect();
    for a in atts.values() {
        let info = by
            .entry((a.namespace.clone(), a.name.clone()))
            .or_insert_with(|| PodInfo {
                namespace: a.namespace.clone(),
                name: a.name.clone(),
                ..PodInfo::default()
            });
        for ip in &a.ips {
            if !info.ips.contains(ip) {
                info.ips.push(*ip);
            }
        }
    }
    World {
        namespaces,
        pods: by.into_values().collect(),
        policies: Vec::new(),
    }
}
