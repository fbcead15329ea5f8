//! Network namespace handles: open and verify a netns path, run a closure
//! with the current thread inside it.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use nix::{
    sched::{setns, CloneFlags},
    sys::statfs::{fstatfs, NSFS_MAGIC},
};

use crate::NetopsError;

/// `ioctl(fd, NS_GET_NSTYPE)` = `_IO(0xb7, 0x3)`: returns the CLONE_NEW* type.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace file (e.g. `/var/run/netns/NAME`,
/// `/proc/PID/ns/net`). Keeping it open keeps the namespace alive.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open `path` and check that it is a network namespace.
    ///
    /// `ENOENT` gives [`NetopsError::NetnsNotFound`] (DEL treats it as
    /// "nothing to do"); a file that is not a netns (another namespace type
    /// or a plain file) gives [`NetopsError::NotANetns`].
    /// Equivalent: `stat -f -c %T PATH` says `nsfs`, `lsns -t net`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetopsError> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(NetopsError::NetnsNotFound { path })
            }
            Err(source) => return Err(NetopsError::NetnsOpen { path, source }),
        };
        let fs = fstatfs(&file).map_err(|e| NetopsError::NetnsOpen {
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetopsError::NotANetns { path });
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd,
        // which is valid for the duration of the call (owned by `file`).
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty < 0 {
            return Err(NetopsError::NetnsOpen {
                path,
                source: io::Error::last_os_error(),
            });
        }
        if ty != libc::CLONE_NEWNET {
            return Err(NetopsError::NotANetns { path });
        }
        Ok(Self { file, path })
    }

    /// The netns of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<Self, NetopsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle on the same namespace (`dup`).
    pub fn try_clone(&self) -> Result<Self, NetopsError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| NetopsError::NetnsOpen {
                path: self.path.clone(),
                source,
            })?;
        Ok(Self {
            file,
            path: self.path.clone(),
        })
    }

    /// Move the *calling thread* into this netns (`setns(fd, CLONE_NEWNET)`).
    /// Prefer [`NetNs::run`], which comes back.
    pub fn enter(&self) -> Result<(), NetopsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetopsError::Setns {
            path: self.path.clone(),
            source: e.into(),
        })
    }

    /// Run `f` with the calling thread inside this netns, then return the
    /// thread to the netns it was in. Nothing in `f` may `.await` or hand
    /// work to other threads: only this thread changes namespace.
    /// Equivalent: `ip netns exec NAME ...` for the duration of `f`.
    ///
    /// If the way back fails the thread is left in the wrong netns; that is
    /// reported as [`NetopsError::NetnsRestore`] and the caller must not keep
    /// using the thread for host work.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetopsError> {
        let orig = Self::current()?;
        self.enter()?;
        let out = f();
        setns(orig.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            log::error!("cannot return from netns {}: {e}", self.path.display());
            NetopsError::NetnsRestore {
                path: self.path.clone(),
                source: e.into(),
            }
        })?;
        Ok(out)
    }

    /// True when both handles name the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            }
            _ => false,
        }
    }

    #[cfg(feature = "netlink")]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A pod netns a kernel view is bound to: its own handle (`Kernel::pod`) or its session's.
#[cfg(feature = "netlink")]
pub(crate) enum NsRef<'k> {
    Owned(NetNs),
    Borrowed(&'k NetNs),
}

#[cfg(feature = "netlink")]
impl NsRef<'_> {
    pub(crate) fn get(&self) -> &NetNs {
        match self {
            NsRef::Owned(n) => n,
            NsRef::Borrowed(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_is_not_found() {
        let e = NetNs::open("/nonexistent/cnirs-netns").unwrap_err();
        assert!(matches!(e, NetopsError::NetnsNotFound { .. }), "{e}");
        assert!(e.is_not_found());
    }

    #[test]
    fn plain_file_is_not_a_netns() {
        let e = NetNs::open("/proc/self/status").unwrap_err();
        assert!(matches!(e, NetopsError::NotANetns { .. }), "{e}");
    }

    #[test]
    fn other_namespace_type_is_not_a_netns() {
        let e = NetNs::open("/proc/self/ns/uts").unwrap_err();
        assert!(matches!(e, NetopsError::NotANetns { .. }), "{e}");
    }

    #[test]
    fn current_netns_opens_and_equals_itself() {
        let a = NetNs::current().unwrap();
        let b = NetNs::open("/proc/self/ns/net").unwrap();
        assert!(a.same_as(&b));
        let inside = a.run(|| 7).unwrap();
        assert_eq!(inside, 7);
    }
}
