//! The files of one network's resolver, under
//! `$CNIRS_RUN_DIR/netns-<inode of the host netns>/dnsname/<network>/` (default root
//! `/run/cni-rs`), directory 0700, files 0600:
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `lock` | plugin | flock around every read-modify-write of the files below |
//! | `entries.json` | plugin | one entry per attachment: name, aliases, addresses |
//! | `config.json` | plugin | what the resolver listens on and answers for |
//! | `daemon.lock` | resolver | flock held for the resolver's whole life: "is it up?" |
//! | `pid` | resolver | its pid, to signal it |
//! | `log` | resolver | its stderr |
//!
//! Liveness is the flock, not the pid: a pid can be reused, a lock dies with its holder.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use cni_core::{Attachment, CniError};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Default root of the run-time state (`$CNIRS_RUN_DIR` overrides it), shared with nftplan.
pub const DEFAULT_RUN_DIR: &str = "/run/cni-rs";

/// One attachment's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub container_id: String,
    pub ifname: String,
    /// Empty when the runtime gave no name.
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Every attachment of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    pub entries: Vec<Entry>,
}

impl Entries {
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.container_id == container_id && e.ifname == ifname)
    }

    /// Adds `entry`, replacing the one of the same attachment.
    pub fn upsert(&mut self, entry: Entry) {
        self.remove(&entry.container_id, &entry.ifname);
        self.entries.push(entry);
    }

    /// True if there was an entry to remove.
    pub fn remove(&mut self, container_id: &str, ifname: &str) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.container_id == container_id && e.ifname == ifname));
        self.entries.len() != before
    }

    /// GC: keeps the entries of `valid` attachments; returns how many went.
    pub fn retain_valid(&mut self, valid: &[Attachment]) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| {
            valid
                .iter()
                .any(|a| a.container_id == e.container_id && a.ifname == e.ifname)
        });
        before - self.entries.len()
    }

    /// What the resolver answers: every name, alias, and each of them under `domain`, to the
    /// addresses of every attachment carrying it (sorted, no duplicates).
    pub fn table(&self, domain: &str) -> BTreeMap<String, Vec<IpAddr>> {
        let mut t: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for e in &self.entries {
            for n in std::iter::once(&e.name)
                .chain(&e.aliases)
                .filter(|n| !n.is_empty())
            {
                let n = n.to_ascii_lowercase();
                let qualified = if domain.is_empty() || n.ends_with(&format!(".{domain}")) {
                    None
                } else {
                    Some(format!("{n}.{domain}"))
                };
                for key in std::iter::once(n).chain(qualified) {
                    t.entry(key).or_default().extend(e.ips.iter().copied());
                }
            }
        }
        for ips in t.values_mut() {
            ips.sort();
            ips.dedup();
        }
        t
    }

    /// The reverse table: each address of an attachment -> its names (name first, then
    /// aliases) under `domain`, fully qualified (`api.dns.podman.`), no duplicates.
    pub fn reverse(&self, domain: &str) -> BTreeMap<IpAddr, Vec<String>> {
        let mut t: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for e in &self.entries {
            let names: Vec<String> = std::iter::once(&e.name)
                .chain(&e.aliases)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    let n = n.to_ascii_lowercase();
                    if domain.is_empty() || n.ends_with(&format!(".{domain}")) {
                        format!("{n}.")
                    } else {
                        format!("{n}.{domain}.")
                    }
                })
                .collect();
            for ip in &e.ips {
                let v = t.entry(*ip).or_default();
                for n in &names {
                    if !v.contains(n) {
                        v.push(n.clone());
                    }
                }
            }
        }
        t.retain(|_, v| !v.is_empty());
        t
    }
}

/// What the resolver of one network is told at start (a change restarts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    pub network: String,
    /// `domainName`, lower case, no final dot.
    pub domain: String,
    /// The gateway addresses on the bridge.
    pub listen: Vec<IpAddr>,
    pub port: u16,
    /// SO_BINDTODEVICE: the network's bridge (only its pods reach the resolver).
    pub device: Option<String>,
    /// Where the upstream resolvers are read (re-read on SIGHUP).
    pub resolv_conf: PathBuf,
    /// Forward names outside the network to the upstreams.
    pub forward: bool,
}

/// `$CNIRS_RUN_DIR` (default `/run/cni-rs`) + `netns-<inode>`: the same per-netns root as the
/// firewall state.
pub fn netns_root() -> Result<PathBuf, CniError> {
    let root = std::env::var_os("CNIRS_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
    // thread-self: a thread that entered another netns sees its own.
    let ns = Path::new("/proc/thread-self/ns/net");
    let ino = fs::metadata(ns)
        .map_err(|e| CniError::io(format!("stat {}", ns.display()), &e))?
        .ino();
    Ok(root.join(format!("netns-{ino}")))
}

/// The directory of one network's resolver.
#[derive(Debug, Clone)]
pub struct NetDir {
    path: PathBuf,
}

/// The network's flock, released on drop.
pub struct Lock(#[allow(dead_code)] Flock<File>);

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> CniError {
    CniError::io(format!("{what} {}", path.display()), e)
}

impl NetDir {
    /// The directory of `network` in this netns (not created).
    pub fn for_network(network: &str) -> Result<Self, CniError> {
        Ok(Self::at(netns_root()?.join("dnsname").join(network)))
    }

    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Takes the network's lock, creating the directory when `create`; `None` when the
    /// directory does not exist and `create` is false (nothing to do for DEL/GC).
    pub fn lock(&self, create: bool) -> Result<Option<Lock>, CniError> {
        let path = self.file("lock");
        loop {
            if create {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.path)
                    .map_err(|e| io_err("creating", &self.path, &e))?;
            } else if !self.exists() {
                return Ok(None);
            }
            let f = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => f,
                // Removed by a concurrent last DEL between our check and the open.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening", &path, &e)),
            };
            let lock = Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| io_err("locking", &path, &std::io::Error::from(e)))?;
            // A last DEL may have removed the directory while we waited: our lock is then on
            // an unlinked file, and the next round sees the directory as it is now.
            let held = lock.metadata().map(|m| m.ino()).ok();
            if held.is_some() && held == fs::metadata(&path).map(|m| m.ino()).ok() {
                return Ok(Some(Lock(lock)));
            }
        }
    }

    pub fn entries(&self) -> Result<Entries, CniError> {
        read_json(&self.file("entries.json"))
    }

    pub fn write_entries(&self, entries: &Entries) -> Result<(), CniError> {
        write_json(&self.file("entries.json"), entries)
    }

    pub fn config(&self) -> Result<Option<DaemonConfig>, CniError> {
        let p = self.file("config.json");
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    pub fn write_config(&self, cfg: &DaemonConfig) -> Result<(), CniError> {
        write_json(&self.file("config.json"), cfg)
    }

    /// Removes the directory and everything in it (the caller stopped the resolver).
    pub fn remove(&self) -> Result<(), CniError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &self.path, &e)),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, CniError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            CniError::new(
                cni_core::ErrorCode::Io,
                format!("{} is not valid: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io_err("reading", path, &e)),
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            network: String::new(),
            domain: String::new(),
            listen: Vec::new(),
            port: 53,
            device: None,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            forward: true,
        }
    }
}

/// Write a temp file and rename it over `path`: a reader (the resolver) sees the old or the
/// new content, never half of one.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CniError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| CniError::new(cni_core::ErrorCode::Io, format!("encoding: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("writing", path, &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str, aliases: &[&str], ips: &[&str]) -> Entry {
        Entry {
            container_id: id.into(),
            ifname: "eth0".into(),
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn table_has_bare_and_qualified_names_and_aliases() {
        let mut e = Entries::default();
        e.upsert(entry(
            "c1",
            "api",
            &["db", "x.dns.podman"],
            &["10.0.0.2", "fd00::2"],
        ));
        e.upsert(entry("c2", "web", &["db"], &["10.0.0.3"]));
        let t = e.table("dns.podman");
        let ips = |k: &str| -> Vec<String> {
            t.get(k)
                .map(|v| v.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(ips("api"), ["10.0.0.2", "fd00::2"]);
        assert_eq!(ips("api.dns.podman"), ["10.0.0.2", "fd00::2"]);
        assert_eq!(ips("db.dns.podman"), ["10.0.0.2", "10.0.0.3", "fd00::2"]);
        assert_eq!(ips("x.dns.podman"), ["10.0.0.2", "fd00::2"]);
        assert!(!t.contains_key("x.dns.podman.dns.podman"));
        assert_eq!(ips("web"), ["10.0.0.3"]);
    }

    #[test]
    fn upsert_remove_and_gc() {
        let mut e = Entries::default();
        e.upsert(entry("c1", "a", &[], &["10.0.0.2"]));
        e.upsert(entry("c1", "b", &[], &["10.0.0.2"]));
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.find("c1", "eth0").unwrap().name, "b");
        e.upsert(entry("c2", "c", &[], &["10.0.0.3"]));
        let gone = e.retain_valid(&[Attachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }]);
        assert_eq!(gone, 1);
        assert!(e.find("c1", "eth0").is_none());
        assert!(e.remove("c2", "eth0"));
        assert!(!e.remove("c2", "eth0"));
    }

    #[test]
    fn files_round_trip_and_lock_is_optional_for_a_missing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let d = NetDir::at(tmp.path().join("n1"));
        assert!(d.lock(false).unwrap().is_none());
        assert!(!d.exists());
        let _l = d.lock(true).unwrap().unwrap();
        assert_eq!(d.entries().unwrap(), Entries::default());
        let mut e = Entries::default();
        e.upsert(entry("c1", "a", &["b"], &["10.0.0.2"]));
        d.write_entries(&e).unwrap();
        assert_eq!(d.entries().unwrap(), e);
        let mode = fs::metadata(d.file("entries.json")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        d.remove().unwrap();
        assert!(!d.exists());
    }
}
