//! Which state directory belongs to this network namespace, and garbage collection of the
//! directories of namespaces that are gone.
//!
//! ```text
//! $CNIRS_RUN_DIR/netns-<inode>-<cookie>/    current layout
//! $CNIRS_RUN_DIR/netns-<inode>/             layout before the cookie (read for upgrades)
//! ```
//! The kernel reuses a deleted namespace's inode number for the next namespace it creates; the
//! netns cookie (`SO_NETNS_COOKIE`) is a 64-bit counter it never reuses. The inode stays in the
//! name so that the first call in a namespace finds, with one `readdir`, the directories a
//! previous namespace at the same inode left: two live namespaces never share an inode, so a
//! `netns-<our inode>-<other cookie>` directory belongs to a dead namespace. It is removed,
//! never read.
//!
//! Upgrade rule for the old `netns-<inode>` directory: it is adopted (renamed to the new name)
//! only if table `inet cnirs` exists in this namespace. A namespace that reused the inode
//! starts with an empty ruleset; our table exists in it only if a plugin created it there, and
//! a plugin of this version would have created the new directory first. Otherwise the old
//! directory is a dead namespace's, and is removed. (A namespace whose table was flushed just
//! before the upgrade loses its old state: its next ADDs add what they need again.)

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::NftError;

/// The identity of a network namespace: its nsfs inode (reused) and cookie (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    /// Inode number of `/proc/thread-self/ns/net`.
    pub inode: u64,
    /// `SO_NETNS_COOKIE` of a socket opened in it.
    pub cookie: u64,
}

impl NetnsId {
    /// The calling thread's network namespace.
    pub fn current() -> Result<Self, NftError> {
        // thread-self, not self: a thread that entered another netns with setns sees its own.
        let ns = Path::new("/proc/thread-self/ns/net");
        let inode = fs::metadata(ns).map_err(|e| NftError::io(ns, e))?.ino();
        // Any socket will do (an unbound AF_UNIX one needs no module and no privilege).
        let cookie = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| crate::nfnl::netns_cookie_of(std::os::fd::AsRawFd::as_raw_fd(&s)))
            .map_err(|source| NftError::Netlink {
                what: "SO_NETNS_COOKIE (Linux 5.14 or later)",
                source,
            })?;
        Ok(NetnsId { inode, cookie })
    }

    /// `netns-<inode>-<cookie>`
    pub fn dir_name(&self) -> String {
        format!("netns-{}-{}", self.inode, self.cookie)
    }
}

/// What a directory name under the run root says about its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirName {
    /// `netns-<inode>-<cookie>`
    Current(NetnsId),
    /// `netns-<inode>` (before the cookie)
    Old(u64),
}

pub(crate) fn parse_dir_name(name: &str) -> Option<DirName> {
    let rest = name.strip_prefix("netns-")?;
    match rest.split_once('-') {
        Some((i, c)) => Some(DirName::Current(NetnsId {
            inode: i.parse().ok()?,
            cookie: c.parse().ok()?,
        })),
        None => Some(DirName::Old(rest.parse().ok()?)),
    }
}

/// The state directory of namespace `id` under `root`. When it does not exist yet (first call
/// in this namespace), settle what earlier namespaces at the same inode left: adopt the old
/// layout's directory if `table_exists()` says our table lives here, remove everything else.
pub(crate) fn resolve(
    root: &Path,
    id: NetnsId,
    table_exists: impl FnOnce() -> bool,
) -> Result<PathBuf, NftError> {
    let dir = root.join(id.dir_name());
    if dir.exists() {
        return Ok(dir);
    }
    let entries = match fs::read_dir(root) {
        Ok(it) => it,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(dir),
        Err(e) => return Err(NftError::io(root, e)),
    };
    let mut table_exists = Some(table_exists);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match parse_dir_name(&name) {
            Some(DirName::Old(ino)) if ino == id.inode => {
                let adopt = table_exists.take().map(|f| f()).unwrap_or(false);
                if adopt {
                    match fs::rename(e.path(), &dir) {
                        Ok(()) => log::info!(
                            "state: adopted {} (layout before the netns cookie) as {}",
                            e.path().display(),
                            dir.display()
                        ),
                        // Another call adopted it first: fine.
                        Err(err) => log::debug!("adopt {}: {err}", e.path().display()),
                    }
                } else {
                    discard(
                        root,
                        &e.path(),
                        "a dead namespace's (old layout, no table here)",
                    );
                }
            }
            Some(DirName::Current(other)) if other.inode == id.inode && other != id => {
                discard(
                    root,
                    &e.path(),
                    "a dead namespace's (same inode, other cookie)",
                );
            }
            _ => {}
        }
    }
    Ok(dir)
}

/// Move `path` out of the way (atomically), then delete it. Never fatal: a directory left
/// behind is not read by anyone.
fn discard(root: &Path, path: &Path, why: &str) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let grave = root.join(format!(".dead-{name}-{}", std::process::id()));
    match fs::rename(path, &grave) {
        Ok(()) => {
            log::info!("state: removing {} ({why})", path.display());
            if let Err(e) = fs::remove_dir_all(&grave) {
                log::warn!("state: cannot remove {}: {e}", grave.display());
            }
        }
        Err(e) => log::debug!("state: {} already gone? {e}", path.display()),
    }
}

/// Inodes of every network namespace this host can see: processes' and threads' namespaces,
/// namespace file descriptors they hold, and nsfs bind mounts (`/run/netns/*`) in every
/// process's mount namespace.
pub fn live_netns_inodes() -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let net_ino = |target: &Path| -> Option<u64> {
        let t = fs::read_link(target).ok()?;
        let t = t.to_str()?;
        t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.path();
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(m) = fs::metadata(pid.join("ns/net")) {
            out.insert(m.ino());
        }
        if let Ok(tasks) = fs::read_dir(pid.join("task")) {
            for t in tasks.flatten() {
                if let Ok(m) = fs::metadata(t.path().join("ns/net")) {
                    out.insert(m.ino());
                }
            }
        }
        if let Ok(fds) = fs::read_dir(pid.join("fd")) {
            for fd in fds.flatten() {
                if let Some(i) = net_ino(&fd.path()) {
                    out.insert(i);
                }
            }
        }
        if let Ok(mi) = fs::read_to_string(pid.join("mountinfo")) {
            out.extend(nsfs_mounts(&mi));
        }
    }
    out
}

/// Inodes of `net:[N]` nsfs mounts in a mountinfo text.
pub(crate) fn nsfs_mounts(mountinfo: &str) -> Vec<u64> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "nsfs" {
                return None;
            }
            let root = left.split_whitespace().nth(3)?;
            root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Remove the state directories under `root` of namespaces that no longer exist: an inode no
/// live namespace has, or this namespace's inode with another cookie. Returns what it removed.
pub fn gc_dead(root: &Path, current: NetnsId) -> Result<Vec<PathBuf>, NftError> {
    let entries = match fs::read_dir(root) {
        Ok(it) => it,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NftError::io(root, e)),
    };
    let live = live_netns_inodes();
    let mut gone = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dead = match parse_dir_name(&name) {
            Some(DirName::Current(id)) => {
                !live.contains(&id.inode) || (id.inode == current.inode && id != current)
            }
            Some(DirName::Old(ino)) => !live.contains(&ino),
            None => false,
        };
        if dead {
            discard(root, &e.path(), "its namespace no longer exists");
            gone.push(e.path());
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ME: NetnsId = NetnsId {
        inode: 4026532000,
        cookie: 77,
    };

    #[test]
    fn names() {
        assert_eq!(ME.dir_name(), "netns-4026532000-77");
        assert_eq!(
            parse_dir_name("netns-4026532000-77"),
            Some(DirName::Current(ME))
        );
        assert_eq!(parse_dir_name("netns-12"), Some(DirName::Old(12)));
        assert_eq!(parse_dir_name("netns-x"), None);
        assert_eq!(parse_dir_name(".dead-netns-1-2-3"), None);
        assert_eq!(parse_dir_name("lock"), None);
    }

    #[test]
    fn a_dead_namespace_at_our_inode_is_removed_not_inherited() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join("netns-4026532000-5");
        fs::create_dir_all(dead.join("ports")).unwrap();
        let other = root.path().join("netns-99-5");
        fs::create_dir_all(&other).unwrap();
        let dir = resolve(root.path(), ME, || panic!("no old dir: not asked")).unwrap();
        assert_eq!(dir, root.path().join("netns-4026532000-77"));
        assert!(!dead.exists(), "the dead namespace's state must be gone");
        assert!(
            other.exists(),
            "another inode's state is not ours to judge here"
        );
        assert!(!dir.exists(), "created by the first lock, not by resolve");
    }

    #[test]
    fn old_layout_adopted_only_when_our_table_is_here() {
        let root = tempfile::tempdir().unwrap();
        let old = root.path().join("netns-4026532000");
        fs::create_dir_all(old.join("network")).unwrap();
        let dir = resolve(root.path(), ME, || true).unwrap();
        assert!(dir.join("network").exists(), "adopted");
        assert!(!old.exists());

        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(old_in(root.path()).join("network")).unwrap();
        let dir = resolve(root.path(), ME, || false).unwrap();
        assert!(!dir.exists(), "a ghost is not adopted");
        assert!(!old_in(root.path()).exists(), "and is removed");
    }

    fn old_in(root: &Path) -> PathBuf {
        root.join("netns-4026532000")
    }

    #[test]
    fn existing_dir_is_used_without_looking_further() {
        let root = tempfile::tempdir().unwrap();
        let mine = root.path().join(ME.dir_name());
        fs::create_dir_all(&mine).unwrap();
        fs::create_dir_all(old_in(root.path())).unwrap();
        assert_eq!(resolve(root.path(), ME, || panic!()).unwrap(), mine);
        assert!(old_in(root.path()).exists());
    }

    #[test]
    fn gc_removes_state_of_inodes_no_namespace_has() {
        let root = tempfile::tempdir().unwrap();
        let me = NetnsId::current_inode_only();
        let dead = root.path().join("netns-1-1");
        let old_dead = root.path().join("netns-2");
        let alive = root.path().join(me.dir_name());
        let reused = root
            .path()
            .join(format!("netns-{}-{}", me.inode, me.cookie + 1));
        for d in [&dead, &old_dead, &alive, &reused] {
            fs::create_dir_all(d).unwrap();
        }
        let gone = gc_dead(root.path(), me).unwrap();
        assert_eq!(gone.len(), 3, "{gone:?}");
        assert!(alive.exists() && !dead.exists() && !old_dead.exists() && !reused.exists());
    }

    impl NetnsId {
        /// The test process's inode with a made-up cookie (no netlink needed without root).
        fn current_inode_only() -> Self {
            let ino = fs::metadata("/proc/self/ns/net").unwrap().ino();
            NetnsId {
                inode: ino,
                cookie: 1,
            }
        }
    }

    #[test]
    fn nsfs_mounts_from_mountinfo() {
        let mi = "620 28 0:4 net:[4026532456] /run/netns/a rw shared:314 - nsfs nsfs rw\n\
                  30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert_eq!(nsfs_mounts(mi), vec![4026532456]);
    }
}
