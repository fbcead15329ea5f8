//! Owner and refcount state on disk, and its lock.
//!
//! ```text
//! <dir>/lock                                   flock held across read-modify-write + nft exec
//! <dir>/<feature>/<network>/network.json       network-level elements of that feature
//! <dir>/<feature>/<network>/a/<cid>@<ifname>   one file per attachment (portmap: its elements)
//! <dir>/ports/<v4|v6>-<proto>-<port>.json      owners of that host port: [{host_ip, owner}]
//! <dir>/table.json                             {handle}: the inet cnirs table last filled
//! <dir>/vtep.json                              {elems}: the overlay gate (node agent)
//! <dir>/netpol.json                            {elems}: NetworkPolicy's elements, all of them
//! <dir>/netpol.log                             changes since: one {"add"|"del": [elems]} a line
//! ```
//! Names are escaped for the file system (`%XX` for anything but `[A-Za-z0-9_.-]`). Files are
//! 0600, directories 0700, every write is a rename of a temporary file. No call reads all
//! attachment files (only GC of one network and reconcile do): whether a network still has
//! attachments is one `readdir` of its `a/` directory.

use std::{
    collections::BTreeSet,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{ErrorKind, Write},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    elem::Elem,
    types::{Attachment, Feature, IfName, PodIface, PortKey, PortMapping},
    NftError,
};

/// Network-level elements held by one (feature, network).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NetRecord {
    pub network: String,
    #[serde(deserialize_with = "known_elems")]
    pub elems: BTreeSet<Elem>,
    /// Elements recorded before their nft batch ran (intent). Under the lock, a non-empty
    /// `pending` means the writer died in between: the next call applies them again (adding an
    /// element that exists is a no-op), so nothing is ever in the kernel without a record.
    #[serde(
        default,
        deserialize_with = "known_elems",
        skip_serializing_if = "BTreeSet::is_empty"
    )]
    pub pending: BTreeSet<Elem>,
    /// The network's bridge, for state that is not set elements (the firewall plugin's rules
    /// in the host's FORWARD chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<IfName>,
}

/// Elements of a state file, skipping kinds this binary does not know (written by a newer
/// version during a rolling upgrade, or before a downgrade) instead of failing every call.
fn known_elems<'de, D, C>(d: D) -> Result<C, D::Error>
where
    D: serde::Deserializer<'de>,
    C: FromIterator<Elem>,
{
    let raw: Vec<serde_json::Value> = Deserialize::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|v| match serde_json::from_value::<Elem>(v.clone()) {
            Ok(e) => Some(e),
            Err(_) => {
                log::warn!("state: skipping an element this version does not know: {v}");
                None
            }
        })
        .collect())
}

/// One attachment; `elems` are elements owned by it alone (port mappings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AttRecord {
    pub attachment: Attachment,
    #[serde(default, deserialize_with = "known_elems")]
    pub elems: Vec<Elem>,
    /// Written before the nft batch that publishes `elems` ran (intent, see NetRecord).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Ports this attachment asked for that another attachment of the same container
    /// publishes (podman gives every network of a container the same mappings): it takes
    /// them over when that attachment goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<PortMapping>,
    /// The pod side of a bridge attachment, as ADD left it (read by `cnirs inspect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIface>,
}

/// One owner of a host port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PortOwner {
    pub host_ip: Option<IpAddr>,
    pub owner: Attachment,
    /// The mapping this owner asked for (to publish it when it takes the port over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<PortMapping>,
    /// Waiting behind the active owner (same container, another attachment).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// `vtep.json`: the overlay gate's elements (ports and member VTEPs), owned by the node agent
/// alone; `elems` may be a superset of the kernel's while a change is being applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct VtepRecord {
    #[serde(deserialize_with = "known_elems")]
    pub elems: BTreeSet<Elem>,
}

/// `netpol.json`: every NetworkPolicy element (isolated pods, allowed peers), as compiled
/// from the policy store; `elems` may be a superset of the kernel's while a change is applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NetpolRecord {
    #[serde(deserialize_with = "known_elems")]
    pub elems: BTreeSet<Elem>,
}

/// One line of `netpol.log`: elements added (written before the kernel batch: the record
/// stays a superset) or removed (after it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NetpolChange {
    Add(Vec<Elem>),
    Del(Vec<Elem>),
}

/// `table.json`: which table the elements were last restored into.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TableRecord {
    handle: u64,
}

/// Escape a name for use as one path component.
pub(crate) fn fs_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The state directory, locked for the lifetime of this value.
pub(crate) struct Locked {
    dir: PathBuf,
    _lock: Flock<File>,
}

pub(crate) fn mkdir(path: &Path) -> Result<(), NftError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| NftError::io(path, e))
}

/// `flock` on `path` (created 0600 when missing), exclusive or shared, held until the value
/// is dropped.
pub fn lock_file(path: &Path, exclusive: bool) -> std::io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    Flock::lock(file, arg).map_err(|(_, errno)| std::io::Error::from(errno))
}

impl Locked {
    /// Create `dir` if needed and take the exclusive lock (`flock(LOCK_EX)` on `dir/lock`).
    pub fn lock(dir: &Path) -> Result<Self, NftError> {
        mkdir(dir)?;
        let path = dir.join("lock");
        let lock = lock_file(&path, true).map_err(|e| NftError::io(&path, e))?;
        Ok(Locked {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn net_dir(&self, feature: Feature, network: &str) -> PathBuf {
        self.dir.join(feature.as_str()).join(fs_key(network))
    }

    fn att_path(&self, feature: Feature, a: &Attachment) -> PathBuf {
        self.net_dir(feature, &a.network).join("a").join(format!(
            "{}@{}",
            fs_key(&a.container_id),
            fs_key(&a.ifname)
        ))
    }

    fn port_path(&self, k: &PortKey) -> PathBuf {
        self.dir.join("ports").join(format!(
            "{}-{}-{}.json",
            if k.v6 { "v6" } else { "v4" },
            k.protocol.as_str(),
            k.host_port
        ))
    }

    pub fn net(&self, feature: Feature, network: &str) -> Result<NetRecord, NftError> {
        let path = self.net_dir(feature, network).join("network.json");
        Ok(read_json(&path)?.unwrap_or_else(|| NetRecord {
            pending: BTreeSet::new(),
            bridge: None,
            network: network.to_owned(),
            elems: BTreeSet::new(),
        }))
    }

    pub fn put_net(&self, feature: Feature, rec: &NetRecord) -> Result<(), NftError> {
        let dir = self.net_dir(feature, &rec.network);
        write_json(&dir, "network.json", rec)
    }

    /// Remove the network record. Its directories stay for the network's next first ADD
    /// (a mkdir and an rmdir per directory and cycle otherwise); GC and reconcile prune them.
    pub fn drop_net(&self, feature: Feature, network: &str) -> Result<(), NftError> {
        remove_file(&self.net_dir(feature, network).join("network.json"))
    }

    /// Remove the directories of (`feature`, `network`) when they hold nothing.
    pub fn prune_net_dirs(&self, feature: Feature, network: &str) {
        prune(&self.net_dir(feature, network));
    }

    /// Remove every network directory that holds nothing (reconcile).
    pub fn prune_all_dirs(&self) -> Result<(), NftError> {
        for f in Feature::ALL {
            for d in list_dir(&self.dir.join(f.as_str()))? {
                prune(&d);
            }
        }
        Ok(())
    }

    pub fn att(&self, feature: Feature, a: &Attachment) -> Result<Option<AttRecord>, NftError> {
        read_json(&self.att_path(feature, a))
    }

    pub fn put_att(&self, feature: Feature, rec: &AttRecord) -> Result<(), NftError> {
        let path = self.att_path(feature, &rec.attachment);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_json(&dir, &name, rec)
    }

    pub fn drop_att(&self, feature: Feature, a: &Attachment) -> Result<(), NftError> {
        remove_file(&self.att_path(feature, a))
    }

    /// True when the network still has at least one attachment. Asked at every detach, so it
    /// reads the directory a few entries at a time and stops at the first record: `read_dir`
    /// (glibc's 32 KB buffer) has the kernel list every attachment of the network first (the
    /// cost at 500 pods: docs/performance.md).
    pub fn has_atts(&self, feature: Feature, network: &str) -> Result<bool, NftError> {
        let dir = self.net_dir(feature, network).join("a");
        match any_record(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            r => r.map_err(|e| NftError::io(dir, e)),
        }
    }

    /// Every attachment of one network (GC only).
    pub fn atts(&self, feature: Feature, network: &str) -> Result<Vec<AttRecord>, NftError> {
        let dir = self.net_dir(feature, network).join("a");
        let mut out = Vec::new();
        for path in list_dir(&dir)? {
            if let Some(rec) = read_json::<AttRecord>(&path)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Every network record of every feature (last detach of a network, reconcile).
    pub fn all_nets(&self) -> Result<Vec<(Feature, NetRecord)>, NftError> {
        let mut out = Vec::new();
        for f in Feature::ALL {
            for d in list_dir(&self.dir.join(f.as_str()))? {
                if let Some(rec) = read_json::<NetRecord>(&d.join("network.json"))? {
                    out.push((f, rec));
                }
            }
        }
        Ok(out)
    }

    /// Every network name of a feature (reconcile of port attachments).
    pub fn all_atts(&self, feature: Feature) -> Result<Vec<AttRecord>, NftError> {
        let mut out = Vec::new();
        for d in list_dir(&self.dir.join(feature.as_str()))? {
            for path in list_dir(&d.join("a"))? {
                if let Some(rec) = read_json::<AttRecord>(&path)? {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// The handle of the `inet cnirs` table this state last filled (`table.json`).
    pub fn table_handle(&self) -> Result<Option<u64>, NftError> {
        Ok(read_json::<TableRecord>(&self.dir.join("table.json"))?.map(|t| t.handle))
    }

    pub fn put_table_handle(&self, handle: u64) -> Result<(), NftError> {
        write_json(&self.dir, "table.json", &TableRecord { handle })
    }

    /// True when no feature records a network and no gate is set (nothing to restore).
    pub fn is_empty(&self) -> Result<bool, NftError> {
        Ok(self.all_nets()?.is_empty()
            && self.all_atts(Feature::Portmap)?.is_empty()
            && self.vteps()?.elems.is_empty()
            && self.netpol()?.elems.is_empty())
    }

    /// NetworkPolicy's elements: `netpol.json` (empty when absent) and `netpol.log`'s changes
    /// since, in order; a last line cut short (a kill during its write) is ignored.
    pub fn netpol(&self) -> Result<NetpolRecord, NftError> {
        let mut rec: NetpolRecord = read_json(&self.dir.join("netpol.json"))?.unwrap_or_default();
        let log = self.dir.join("netpol.log");
        let text = match fs::read_to_string(&log) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(rec),
            Err(e) => return Err(NftError::io(&log, e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<NetpolChange>(line) {
                Ok(NetpolChange::Add(v)) => rec.elems.extend(v),
                Ok(NetpolChange::Del(v)) => {
                    for e in &v {
                        rec.elems.remove(e);
                    }
                }
                Err(e) if i + 1 == lines.len() => log::warn!("{}: last line: {e}", log.display()),
                Err(source) => return Err(NftError::State { path: log, source }),
            }
        }
        Ok(rec)
    }

    /// Replace the record by `rec`, the log folded in.
    pub fn put_netpol(&self, rec: &NetpolRecord) -> Result<(), NftError> {
        write_json(&self.dir, "netpol.json", rec)?;
        remove_file(&self.dir.join("netpol.log"))
    }

    /// Append one change to `netpol.log` (one `write` with `O_APPEND`): the record is not
    /// rewritten, so a change costs its own size, not the record's.
    pub fn log_netpol(&self, change: &NetpolChange) -> Result<(), NftError> {
        let path = self.dir.join("netpol.log");
        let mut line = serde_json::to_vec(change).map_err(|source| NftError::State {
            path: path.clone(),
            source,
        })?;
        line.push(b'\n');
        mkdir(&self.dir)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| NftError::io(&path, e))?;
        f.write_all(&line).map_err(|e| NftError::io(&path, e))
    }

    /// Size of `netpol.log` in bytes (0 when absent).
    pub fn netpol_log_len(&self) -> u64 {
        fs::metadata(self.dir.join("netpol.log")).map_or(0, |m| m.len())
    }

    /// The overlay gate (`vtep.json`; empty when absent).
    pub fn vteps(&self) -> Result<VtepRecord, NftError> {
        Ok(read_json(&self.dir.join("vtep.json"))?.unwrap_or_default())
    }

    pub fn put_vteps(&self, rec: &VtepRecord) -> Result<(), NftError> {
        write_json(&self.dir, "vtep.json", rec)
    }

    pub fn port_owners(&self, k: &PortKey) -> Result<Vec<PortOwner>, NftError> {
        Ok(read_json(&self.port_path(k))?.unwrap_or_default())
    }

    pub fn put_port_owners(&self, k: &PortKey, owners: &[PortOwner]) -> Result<(), NftError> {
        let path = self.port_path(k);
        if owners.is_empty() {
            return remove_file(&path);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_json(&self.dir.join("ports"), &name, &owners)
    }
}

/// True when `dir` holds an entry whose name does not start with a dot (`.`, `..`, a write's
/// temporary file), read with `getdents64` into a buffer of a few entries.
fn any_record(dir: &Path) -> std::io::Result<bool> {
    let fd = fs::File::open(dir)?;
    let mut buf = Vec::with_capacity(1024); // a few entries; one name is at most 280 bytes
    let mut it = rustix::fs::RawDir::new(&fd, buf.spare_capacity_mut());
    while let Some(e) = it.next() {
        if !e?.file_name().to_bytes().starts_with(b".") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, NftError> {
    let it = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NftError::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in it {
        let e = e.map_err(|e| NftError::io(dir, e))?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_file(path: &Path) -> Result<(), NftError> {
    // A write killed between its temporary file and the rename leaves `.NAME.tmp` behind.
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let _ = fs::remove_file(dir.join(format!(".{}.tmp", name.to_string_lossy())));
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NftError::io(path, e)),
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, NftError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| NftError::State {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NftError::io(path, e)),
    }
}

/// `rmdir` a network directory's `a/` and then the directory itself; either fails harmlessly
/// when it still holds something (a record, an attachment).
fn prune(net_dir: &Path) {
    for d in [net_dir.join("a"), net_dir.to_path_buf()] {
        if let Err(e) = fs::remove_dir(&d) {
            log::debug!("rmdir {}: {e}", d.display());
        }
    }
}

/// The largest record rewritten in place: one page, which one `pwrite` fills whole (a fatal
/// signal is only taken between pages of a write).
const IN_PLACE_MAX: u64 = 4096;

/// Write `dir/name` atomically, mode 0600: in place when the file exists, is at most one page
/// and the new JSON fits (padded with spaces to the old length: trailing whitespace is valid
/// JSON), else a temporary file `.name.tmp` renamed over it. Renaming over an existing file
/// makes ext4 write the new data back at once (`auto_da_alloc`), which an in-place write does
/// not (the two costs: docs/performance.md).
fn write_json<T: Serialize + ?Sized>(dir: &Path, name: &str, value: &T) -> Result<(), NftError> {
    let bytes = serde_json::to_vec(value).map_err(|source| NftError::State {
        path: dir.join(name),
        source,
    })?;
    let dst = dir.join(name);
    if overwrite_in_place(&dst, &bytes).map_err(|e| NftError::io(&dst, e))? {
        return Ok(());
    }
    mkdir(dir)?;
    replace_file(dir, name, &bytes, false).map_err(|(path, e)| NftError::io(&path, e))
}

/// Write `bytes` to `dir/name` (which must exist) through a temporary `.name.tmp`, mode 0600,
/// renamed over it; with `sync` the data is on disk before the rename. The error names the
/// file it concerns.
pub fn replace_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<(), (PathBuf, std::io::Error)> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| (tmp.clone(), e))?;
    f.write_all(bytes).map_err(|e| (tmp.clone(), e))?;
    if sync {
        f.sync_all().map_err(|e| (tmp.clone(), e))?;
    }
    drop(f);
    fs::rename(&tmp, &dst).map_err(|e| (dst, e))
}

/// Overwrite `path` with `bytes` padded to its length in one `pwrite`; `Ok(false)` (nothing
/// written) when it is missing, larger than a page or shorter than `bytes`.
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > IN_PLACE_MAX || (bytes.len() as u64) > len {
        return Ok(false);
    }
    let mut buf = bytes.to_vec();
    buf.resize(len as usize, b' ');
    // One page, one call: written whole or (on an error before the copy) not at all.
    let n = f.write_at(&buf, 0)?;
    if n != buf.len() {
        return Err(std::io::Error::new(
            ErrorKind::WriteZero,
            "short write of a state record",
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
