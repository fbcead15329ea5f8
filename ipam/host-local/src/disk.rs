//! The reference plugin's disk layout, so leases survive a switch in either direction:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock(2) held for a whole call
//! <dataDir>/<network>/<ip>                  "<containerID>\r\n<ifname>" (legacy: "<containerID>")
//! <dataDir>/<network>/last_reserved_ip.<n>  the last address reserved in range set n
//! ```
//!
//! IPv6 file names are the RFC 5952 text (`fd00::2`), as Go's `net.IP.String` prints them.
//! A reservation is created with `O_EXCL` (EEXIST = taken), as the reference does, and written
//! under the lock, so no reader that honours the lock sees it half-written. Nothing is fsynced
//! (the reference does not either): a lease only matters while its pod's netns lives, and no
//! netns outlives a host crash. Empty or unreadable lease files found under the lock (a writer
//! killed mid-call, or a crash) are stale: logged, and reclaimed when their address is needed,
//! at the network's next DEL, or on GC. `last_reserved_ip.<n>` and the index are overwritten
//! in place, never truncated to zero or renamed over: on ext4 those two patterns force a
//! writeback of the old blocks (`auto_da_alloc`), paid by every ADD.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Read, Write},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    error::Error,
    index,
    store::{Owner, Store},
};

/// The reference's default `dataDir`.
pub use ipamconf::DEFAULT_DATA_DIR;
/// Prefix of the round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// The lock file's name.
pub const LOCK_FILE: &str = "lock";
/// Our temp files (never an IP, so the reference ignores them).
const TMP_PREFIX: &str = ".cnirs-tmp-";
/// Separator between container id and ifname in a lease file (the reference's `LineBreak`).
const LINE_BREAK: &str = "\r\n";

#[derive(Debug)]
enum Entry {
    Lease(Owner),
    /// Empty or unreadable file: why.
    Stale(String),
}

/// The leases of one network on disk, locked for the store's lifetime.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    entries: BTreeMap<IpAddr, Entry>,
    /// A complete [`index`] was found.
    indexed: bool,
    /// The entries differ from what the index on disk says (or it was not valid).
    dirty: bool,
    _lock: Flock<File>,
}

/// `<data_dir>/<network>`, refusing a network name that is not one path component.
pub fn network_dir(data_dir: &Path, network: &str) -> Result<PathBuf, Error> {
    if !cni_core::conf::is_safe_name(network) {
        return Err(Error::config(
            "name",
            format!("{network:?} is not a valid network name"),
        ));
    }
    Ok(data_dir.join(network))
}

/// A lease file's content: `id\r\nifname`, or a legacy bare `id`; `None` when empty.
pub fn parse_owner(bytes: &[u8]) -> Option<Owner> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    if s.is_empty() {
        return None;
    }
    Some(match s.split_once(LINE_BREAK) {
        Some((id, ifname)) => Owner {
            container_id: id.to_string(),
            ifname: Some(ifname.to_string()),
        },
        None => Owner {
            container_id: s.to_string(),
            ifname: None,
        },
    })
}

/// Read a lease file: one `read(2)` for the usual tiny file (`fs::read` adds a `statx` and a
/// second `read`; it matters with thousands of leases per call).
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = [0u8; 512];
    let n = f.read(&mut buf)?;
    let mut out = buf[..n].to_vec();
    if n == buf.len() {
        f.read_to_end(&mut out)?;
    }
    Ok(out)
}

impl DiskStore {
    /// Create `<data_dir>/<network>` if needed, take its lock (blocking) and read the leases.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, Error> {
        let dir = network_dir(data_dir, network)?;
        fs::DirBuilder::new()
            .recursive(true)
            .create(&dir)
            .map_err(|e| Error::io("creating", &dir, e))?;
        Self::lock_and_load(dir)
    }

    /// Like [`DiskStore::open`] but `None` (and nothing created) when the network has no
    /// directory yet: DEL, CHECK, GC and STATUS never create state.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Self>, Error> {
        let dir = network_dir(data_dir, network)?;
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Self::lock_and_load(dir).map(Some),
            Ok(_) => Err(Error::io(
                "opening",
                &dir,
                std::io::Error::from(ErrorKind::NotADirectory),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("opening", &dir, e)),
        }
    }

    fn lock_and_load(dir: PathBuf) -> Result<Self, Error> {
        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| Error::io("opening", &lock_path, e))?;
        // `flock -x <dir>/lock`: the same lock the reference takes (go-filemutex).
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("locking", &lock_path, errno.into()))?;
        let mut store = Self {
            dir,
            entries: BTreeMap::new(),
            indexed: false,
            dirty: true,
            _lock: lock,
        };
        store.load()?;
        Ok(store)
    }

    /// List the directory (the truth for which leases exist) and take each owner from the
    /// index when it knows the file, else from the file itself.
    fn load(&mut self) -> Result<(), Error> {
        let hint = index::load(&self.dir);
        self.indexed = hint.is_some();
        // Clean only if every listed lease was known and every known lease was listed.
        let mut clean = hint.is_some();
        let mut known = hint.map(|h| h.leases).unwrap_or_default();
        // Listed files the index knows (each address once: only canonical names count).
        let mut listed_known = Vec::with_capacity(known.len());
        let mut found = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::io("reading", &self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("reading", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                // A temp file of a writer that died: nobody else writes while we hold the lock.
                let path = entry.path();
                log::warn!("removing leftover temp file {}", path.display());
                let _ = fs::remove_file(&path);
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue; // lock, last_reserved_ip.*, anything else
            };
            if known.contains_key(&ip) && is_canonical(ip, name) {
                listed_known.push(ip);
                continue;
            }
            clean = false;
            let path = entry.path();
            let e = match read_small(&path) {
                Ok(bytes) => match parse_owner(&bytes) {
                    Some(owner) => Entry::Lease(owner),
                    None => Entry::Stale("empty file".into()),
                },
                Err(err) => Entry::Stale(format!("unreadable: {err}")),
            };
            if let Entry::Stale(why) = &e {
                log::warn!(
                    "stale reservation {} ({why}): treated as free",
                    path.display()
                );
            }
            found.push((ip, e));
        }
        if listed_known.len() != known.len() {
            let listed: std::collections::HashSet<IpAddr> = listed_known.into_iter().collect();
            let before = known.len();
            known.retain(|ip, _| listed.contains(ip));
            log::info!(
                "{}: {} indexed lease(s) removed by someone else",
                self.dir.display(),
                before - known.len()
            );
            clean = false;
        }
        // Already in address order: a bulk build, no search per lease.
        self.entries = known
            .into_iter()
            .map(|(ip, owner)| (ip, Entry::Lease(owner)))
            .collect();
        self.entries.extend(found);
        self.dirty = !clean;
        Ok(())
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        // Built only from a parsed address: never a raw string.
        self.dir.join(ip.to_string())
    }

    fn remove(&self, path: &Path) -> Result<(), Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", path, e)),
        }
    }

    /// The directory holding this network's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether every lease owner came from the index (no lease file was read).
    pub fn from_index(&self) -> bool {
        self.indexed && !self.dirty
    }
}

/// Whether `name` is how we (and Go's `net.IP.String`) write `ip`. IPv4 text that parses is
/// always canonical (no leading zeros, four decimal octets); IPv6 has other spellings
/// (`FD00::2`, `fd00:0::2`) whose files are read as unknown ones.
fn is_canonical(ip: IpAddr, name: &str) -> bool {
    ip.is_ipv4() || ip.to_string() == name
}

/// Create `path` with `content`, failing (`Ok(false)`) when it exists: the reference's
/// `O_CREATE|O_EXCL` reservation. A write error removes the file again.
fn create_excl(path: &Path, content: &[u8]) -> std::io::Result<bool> {
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Err(e) = f.write_all(content) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

/// Replace the content of `path` (created if missing) in place: write from offset 0, then cut
/// the file to the new length. Never truncates to zero first (see the module's note on ext4).
pub(crate) fn overwrite(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all_at(content, 0)?;
    f.set_len(content.len() as u64)
}

impl Drop for DiskStore {
    /// Record the leases in the index while the lock is still held (fields, the lock among
    /// them, drop after this body). Stale files are left out, so each call reads them again
    /// until they are reclaimed.
    fn drop(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(e) = index::store(&self.dir, self.lease_iter()) {
            log::warn!("writing the lease index of {}: {e}", self.dir.display());
        }
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Owner, ip: IpAddr, range_set: usize) -> Result<bool, Error> {
        // Any attempt touches the directory (temp file, link): the index is rewritten.
        self.dirty = true;
        let path = self.ip_path(ip);
        match self.entries.get(&ip) {
            Some(Entry::Lease(_)) => return Ok(false),
            Some(Entry::Stale(why)) => {
                log::warn!("reclaiming stale reservation {} ({why})", path.display());
                self.dirty = true;
                self.remove(&path)?;
                self.entries.remove(&ip);
            }
            None => {}
        }
        let content = match &owner.ifname {
            Some(ifname) => format!("{}{LINE_BREAK}{ifname}", owner.container_id.trim()),
            None => owner.container_id.trim().to_string(),
        };
        match create_excl(&path, content.as_bytes()) {
            Ok(true) => {}
            Ok(false) => {
                // Someone not honouring the lock: respect their file.
                let entry = fs::read(&path)
                    .ok()
                    .and_then(|b| parse_owner(&b))
                    .map(Entry::Lease)
                    .unwrap_or_else(|| Entry::Stale("appeared while locked".into()));
                self.entries.insert(ip, entry);
                return Ok(false);
            }
            Err(e) => return Err(Error::io("creating", &path, e)),
        }
        self.entries.insert(ip, Entry::Lease(owner.clone()));
        self.dirty = true;

        // The round-robin cursor: a hint (the reference reads it under the same lock).
        let last = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_set}"));
        overwrite(&last, ip.to_string().as_bytes()).map_err(|e| Error::io("writing", &last, e))?;
        Ok(true)
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), Error> {
        let path = self.ip_path(ip);
        self.dirty = true;
        self.remove(&path)?;
        self.entries.remove(&ip);
        Ok(())
    }

    fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_set}"));
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn lease_iter(&self) -> Box<dyn Iterator<Item = (IpAddr, &Owner)> + '_> {
        Box::new(self.entries.iter().filter_map(|(ip, e)| match e {
            Entry::Lease(owner) => Some((*ip, owner)),
            Entry::Stale(_) => None,
        }))
    }

    fn drop_stale(&mut self) -> Result<usize, Error> {
        let stale: Vec<IpAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Stale(_)))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &stale {
            log::warn!("removing stale reservation {}", self.ip_path(*ip).display());
            self.release(*ip)?;
        }
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests;
